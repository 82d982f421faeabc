"""Model families as packages: the registry, a family from a third-party distribution seen by validate,
inspect and a build without touching yolobuild, and YOLO26's end-to-end top-k head (graph.head=topk)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import build_dir, run_cli

SMALL = ("input.width=160", "input.height=160", "check.parity_images=2")

TOY_FAMILY = '''\
"""A toy family for the registry test: YOLOv5's network under a name and layout table of its own."""
from yolobuild.models.family import ANCHOR_BASED, Family, patch_row

FAMILIES = (
    Family(name="toyv5", module="toyfamily.model", head=ANCHOR_BASED, decode="yolov5", scales=("n",),
           recipe_prefix="toyv5",
           layouts={"v6": {"strides": [8, 16, 32], "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119],
                                                                [116, 90, 156, 198, 373, 326]],
                           "what": "a toy: YOLOv5 v6.0 layers"}}),
)
PATCHES = {"toy_check": patch_row("toyfamily.model:toy_check", "verify: the toy family's own patch ran",
                                  verify_only=True)}
'''

TOY_MODEL = '''\
"""The toy family's torch side: YOLOv5's build, a weight format of its own (.toy) for inspect, one patch."""
import json

from yolobuild.models.yolov5.model import build  # noqa: F401  (the family's build)


def inspect_foreign(path):
    if path.suffix != ".toy":
        return None
    return {"file": str(path), "source": "toy file", **json.loads(path.read_text()), "head_kind": "anchor_based"}


def toy_check(model, example=None):
    return {"toy": True}
'''


def toy_family_site(root: Path) -> Path:
    site = root / "site"
    pkg = site / "toyfamily"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(TOY_FAMILY)
    (pkg / "model.py").write_text(TOY_MODEL)
    info = site / "toyfamily-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyfamily\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[yolobuild.families]\ntoy = toyfamily\n")
    return site


def _env(site: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join([str(site)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}


def test_registry_lists_the_shipped_families_without_torch():
    code = ("import sys, json; from yolobuild.models import registry; "
            "print(json.dumps({n: [f.package, sorted(f.layouts), list(f.heads)] for n, f in registry.families().items()}"
            "), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    table, torch_loaded = r.stdout.rsplit(" ", 1)
    got = json.loads(table)
    assert torch_loaded.strip() == "False"
    assert list(got) == ["yolov5", "yolov8", "yolov3", "yolor", "mmyolo-yolov5", "yolo11", "yolo26", "yolov7"]
    assert got["yolo26"][0] == got["yolo11"][0] == "yolobuild.models.yolo11"
    assert got["yolov3"] == ["yolobuild.models.darknet", ["yolov3", "yolov3-tiny"], ["raw", "split", "decoded"]]
    assert "topk" in got["yolo26"][2] and all("topk" not in v[2] for k, v in got.items() if k != "yolo26")


def test_a_family_from_a_third_party_distribution_is_seen_by_validate_inspect_and_build(tmp_path):
    """The toy family lives only in its own package with an entry point: validate checks its layouts and patches,
    inspect runs its weight-format hook, and a build loads, patches (its own patch too), exports and checks it."""
    site = toy_family_site(tmp_path)
    env = _env(site)
    base = ("recipe=yolov5n", "model.family=toyv5", "target=onnxruntime", *SMALL, f"workspace.path={tmp_path / 'ws'}",
            f"cache.dir={tmp_path / 'cache'}")
    r = run_cli("validate", *base, "model.layout=v5", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "model.layout: 'v5' is not a toyv5 layout; allowed: v6" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("validate", *base, "graph.patches=[toy_check]", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("validate", *base, cwd=tmp_path)             # without the distribution: an unknown family
    assert r.returncode == 2 and "model.family: 'toyv5' is not a model family" in r.stderr, r.stderr

    toy = tmp_path / "w.toy"
    toy.write_text(json.dumps({"family": "toyv5", "layout": "v6", "nc": 3}))
    r = run_cli("inspect", f"model.weights={toy}", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "toy file" in r.stdout and "toyv5" in r.stdout, \
        r.stdout + r.stderr

    r = run_cli(*base, "model.weights=random", "graph.patches=[toy_check]", "evaluate.enabled=false",
                cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    b = build_dir(tmp_path / "ws", "yolov5n_onnxruntime_fp32_160x160")
    m = json.loads((b / "manifest.json").read_text())
    assert m["status"] == "compiled" and min(v["cosine"] for v in m["parity"].values()) > 0.9999
    op = next(o for o in m["ops"] if o["kind"] == "check_patch")
    check = json.loads((tmp_path / "cache" / op["outputs"]["patch_check.json"]["path"]).read_text())
    assert check["applied"]["toy_check"] == {"toy": True}
    assert json.loads((b / "model.json").read_text())["family"] == "toyv5"


# --------------------------------------------------------------------------- YOLO26 top-k head

def _yolo26_with_distinct_scores():
    """yolo26n whose class scores differ from point to point (a fresh model scores nearly every point alike):
    random batch-norm statistics and a sharper one-to-one class conv."""
    import torch
    from torch import nn

    from yolobuild.ops.building import build_from_meta

    torch.manual_seed(0)
    model = build_from_meta({"family": "yolo26", "scale": "n", "layout": "26", "nc": 5}).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for seq in model.detect.one2one_cv3:
            seq[-1].weight.mul_(30)
    return model


def test_host_topk_rows_equal_the_model_topk_head():
    """runtime.decode.topk_rows (numpy, on the decoded rows) gives the scores the torch head's topk layout gives,
    and each of the head's rows is a (point, class) pair of the decoded output (match_topk), best first."""
    import torch

    from yolobuild.runtime.decode import match_topk, topk_rows

    model = _yolo26_with_distinct_scores()
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.detect.layout = "decoded"
        decoded = model(x).numpy()
        model.detect.layout, model.detect.max_det = "topk", 50
        rows = model(x).numpy()
    assert rows.shape == (2, 50, 6)
    assert len(np.unique(rows[0, :, 4])) > 40                       # mostly distinct scores: a meaningful order
    want = topk_rows(decoded, 50)
    np.testing.assert_array_equal(rows[..., 4], want[..., 4])       # the same scores, best first
    assert (np.diff(rows[..., 4], axis=1) <= 0).all()
    matched = match_topk(rows, decoded)
    np.testing.assert_array_equal(matched[..., 5], rows[..., 5])
    np.testing.assert_allclose(matched[..., :4], rows[..., :4], atol=1e-3)
    distinct = np.concatenate(([True], np.diff(want[0, :, 4]) != 0)) & np.concatenate((np.diff(want[0, :, 4]) != 0, [True]))
    np.testing.assert_allclose(rows[0, distinct, :4], want[0, distinct, :4], atol=1e-3)   # untied rows: same place
    wrong = rows.copy()
    wrong[0, 3, :4] += 20.0                                         # a box a port decoded wrong
    assert np.abs(match_topk(wrong, decoded)[0, 3, :4] - wrong[0, 3, :4]).max() >= 19.0


def test_topk_head_is_refused_where_it_cannot_work():
    """Families without the end-to-end head, and vendor targets, refuse graph.head=topk with one line each."""
    r = run_cli("validate", "recipe=yolov5n", "target=onnxruntime", "graph.head=topk")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "graph.head: 'topk' is not a yolov5 head layout (only yolo26 give it); allowed: raw, split, decoded" \
        in r.stderr, r.stderr
    r = run_cli("validate", "recipe=yolo26n", "target=rk3588", "precision=int8", "graph.head=topk")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = next(x for x in r.stderr.splitlines() if "graph.head" in x)
    assert "'topk' does not suit target rk3588: rknn-toolkit2" in line and "256 values" in line, r.stderr
    for target in ("onnxruntime", "openvino"):
        r = run_cli("validate", "recipe=yolo26n", f"target={target}", "graph.head=topk")
        assert r.returncode == 0, r.stdout + r.stderr


def test_yolo26_topk_head_builds_for_onnxruntime_with_parity(tmp_path):
    """`recipe=yolo26n model.weights=random target=onnxruntime graph.head=topk`: TopK / GatherElements in the ONNX,
    parity with PyTorch, a deploy.json that says the rows are final, and infer.py --check agreeing."""
    import onnx

    ws = tmp_path / "ws"
    r = run_cli("recipe=yolo26n", "model.weights=random", "target=onnxruntime", "graph.head=topk",
                "input.width=320", "input.height=320", "check.parity_images=2", f"workspace.path={ws}",
                f"cache.dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    b = build_dir(ws, "yolo26n_onnxruntime_fp32_320x320")
    m = json.loads((b / "manifest.json").read_text())
    assert m["status"] == "compiled"
    assert set(m["parity"]) == {"boxes", "scores"} and min(v["cosine"] for v in m["parity"].values()) > 0.9999
    types = {n.op_type for n in onnx.load(str(b / "model.onnx")).graph.node}
    assert {"TopK", "GatherElements"} <= types
    from .test_deploy import schema_errors

    doc = json.loads((b / "deploy" / "deploy.json").read_text())
    assert schema_errors(doc) == []
    head = doc["head"]
    assert head["layout"] == "topk" and head["columns"] == ["x1", "y1", "x2", "y2", "score", "class"]
    assert head["outputs"][0]["shape"] == [1, 300, 6] and "no NMS" in head["formula"]
    r = subprocess.run([sys.executable, "deploy/infer.py", "--check"], cwd=b, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok:"), r.stdout + r.stderr
