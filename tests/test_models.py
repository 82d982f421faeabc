"""Model families, the restricted unpickler and anchor-free decode (small inputs, no upstream code)."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from yolobuild.errors import UserError  # noqa: E402
from yolobuild.runtime.decode import fields, to_decoded  # noqa: E402

from .family_parity import assert_same_detections, cosine, run_op  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

H = W = 64
HEADS = ("raw", "split", "decoded")


def params(**kw):
    p = dict(family="yolov8", scale="n", layout="v8", nc=3, names=None, anchors=None, random=True, seed=0,
             trust_checkpoint=False)
    p.update(kw)
    return p


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def _perturbed_v8(nc=3):
    from yolobuild.models.yolov8.model import build

    torch.manual_seed(2)
    m = build("n", "v8", nc)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.2)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
        for seq in m.detect.cv3:          # some confident classes, so NMS keeps boxes
            seq[-1].bias.normal_(0, 2, generator=g)
    return m


@pytest.fixture(scope="module")
def v8(work):
    sd = _perturbed_v8().state_dict()
    torch.save(sd, work / "v8.pt")
    outs, res = run_op("load_model", work / "v8", params(random=False), {"weights": work / "v8.pt"},
                       ["model.pt", "model.json"])
    return outs, res


# --------------------------------------------------------------------------- YOLOv8: load, patch, export

def test_v8_state_dict_loads_with_meta(v8):
    outs, res = v8
    meta = json.loads(outs["model.json"].read_text())
    assert res["source"] == "state_dict" and meta["family"] == "yolov8"
    assert meta["head_kind"] == "anchor_free" and meta["decode"] == "dfl" and meta["anchors_px"] is None
    assert meta["strides"] == [8, 16, 32]


@pytest.mark.parametrize("head", HEADS)
def test_v8_patch_export_parity(work, v8, head):
    from yolobuild.ops.building import load_checkpoint

    outs, _ = v8
    meta = json.loads(outs["model.json"].read_text())
    root = work / f"v8_{head}"
    p, pres = run_op("patch", root, dict(head=head, patches=["silu_as_sigmoid_mul", "no_inplace_slice",
                                                             "anchors_as_constants"], fuse=True, height=H, width=W),
                     {"model": outs["model.pt"]}, ["patched.pt", "patch_check.json"])
    assert set(pres["patch_check"]) == {"boxes", "class_scores"}            # no objectness field
    e, _ = run_op("export_onnx", root, dict(opset=13, head=head, batch=1, height=H, width=W),
                  {"model": p["patched.pt"]}, ["model.onnx"])
    sess = ort.InferenceSession(str(e["model.onnx"]), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(4).random((1, 3, H, W), dtype=np.float32)
    got = to_decoded(sess.run(None, {"images": x}), head, meta)
    _, model = load_checkpoint(outs["model.pt"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape == (1, 8 * 8 + 4 * 4 + 2 * 2, 4 + 3)
    for name, f in fields(got, meta).items():
        assert cosine(f, fields(ref, meta)[name]) >= 0.99999, name
    assert_same_detections(got, ref, meta)


def test_v8_host_decode_of_raw_equals_pytorch(v8):
    from yolobuild.ops.building import load_checkpoint

    outs, _ = v8
    meta = json.loads(outs["model.json"].read_text())
    _, model = load_checkpoint(outs["model.pt"])
    x = torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
        model.detect.layout = "raw"
        raw = [t.numpy() for t in model(x)]
    assert raw[0].shape == (2, 64 + 3, 12, 8)
    np.testing.assert_allclose(to_decoded(raw, "raw", meta), ref, rtol=1e-5, atol=1e-4)


def test_check_parity_anchor_free(work, v8):
    from yolobuild.ops.inputs import save_npz
    from yolobuild.ops.building import load_checkpoint

    outs, _ = v8
    _, model = load_checkpoint(outs["model.pt"])
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
        model.detect.layout = "raw"
        raw = [t.numpy() for t in model(x)]
    save_npz(work / "ref.npz", decoded=ref)
    save_npz(work / "sim.npz", __names__=np.array(["out8", "out16", "out32"]), out8=raw[0], out16=raw[1], out32=raw[2])
    par, res = run_op("check_parity", work / "par", dict(head="raw", thresholds={"cosine": 0.99999}, count=2),
                      {"outputs": work / "sim.npz", "reference": work / "ref.npz", "meta": outs["model.json"]},
                      ["parity.json"])
    assert set(res["parity"]) == {"boxes", "class_scores"}
    assert all(v["cosine"] >= 0.99999 for v in res["parity"].values())


def test_v8_class_count_and_family_mismatch(work):
    torch.save(_perturbed_v8(nc=5).state_dict(), work / "v8nc5.pt")
    with pytest.raises(UserError, match=r"class count mismatch: the checkpoint's head has nc=5, the recipe says nc=3"):
        run_op("load_model", work / "nc", params(random=False), {"weights": work / "v8nc5.pt"},
               ["model.pt", "model.json"])
    with pytest.raises(UserError, match=r"does not fit yolov5n .*the file looks like yolov8n \(anchor-free\)"):
        run_op("load_model", work / "fam", params(random=False, family="yolov5", layout="v6"),
               {"weights": work / "v8nc5.pt"}, ["model.pt", "model.json"])


def test_v5_p6_random_builds_four_levels(work):
    outs, _ = run_op("load_model", work / "p6", params(family="yolov5", scale="n", layout="p6"), {},
                     ["model.pt", "model.json"])
    meta = json.loads(outs["model.json"].read_text())
    assert meta["strides"] == [8, 16, 32, 64] and len(meta["anchors_px"]) == 4
    assert meta["anchors_px"][3][2] == [925.0, 792.0]


# --------------------------------------------------------------------------- the restricted unpickler

class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(work):
    marker = work / "PWNED"
    torch.save({"epoch": 1, "model": _RunsCode(marker)}, work / "evil.pt")
    with pytest.raises(UserError) as err:
        run_op("load_model", work / "evil", params(random=False), {"weights": work / "evil.pt"},
               ["model.pt", "model.json"])
    msg = str(err.value)
    assert "\n" not in msg and "system" in msg and "refused" in msg
    assert "model.trust_checkpoint=true" in msg and "model.source.repo" in msg
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1q\x00\x85q\x01Rq\x02.",           # builtins.eval('1+1')
    b"\x80\x02csubprocess\ncheck_output\n]q\x00X\x04\x00\x00\x00trueq\x01a\x85Rq\x02.",
])
def test_restricted_unpickler_refuses_callables(payload):
    from yolobuild.models.safe_pickle import RefusedGlobal, make_pickle_module

    with pytest.raises(RefusedGlobal):
        make_pickle_module().loads(payload)


def test_restricted_unpickler_maps_upstream_classes_to_inert_stand_ins():
    from yolobuild.models.safe_pickle import Stub, make_pickle_module

    mod = make_pickle_module()
    conv = mod.Unpickler.find_class(mod.Unpickler(__import__("io").BytesIO(b"")), "models.common", "Conv")
    assert issubclass(conv, Stub) and conv.__upstream__ == "models.common.Conv"
    with pytest.raises(RuntimeError, match="inert stand-in"):
        conv()(torch.zeros(1))
    sync = mod.Unpickler.find_class(mod.Unpickler(__import__("io").BytesIO(b"")), "torch.nn.modules.batchnorm",
                                    "SyncBatchNorm")
    assert sync is torch.nn.BatchNorm2d
    with pytest.raises(pickle.UnpicklingError):          # functions of upstream modules stay refused
        mod.Unpickler.find_class(mod.Unpickler(__import__("io").BytesIO(b"")), "models.common", "autopad")


def test_source_repo_missing_or_without_module(work):
    from yolobuild.models.yolov5.model import build

    torch.save(build("n", "v6", 3), work / "own_full.pt")      # references yolobuild.models.yolov5.* classes
    with pytest.raises(UserError, match=r"model.source.repo: .*nope: no such folder"):
        run_op("load_model", work / "repo1", params(random=False, source_repo=str(work / "nope")),
               {"weights": work / "own_full.pt"}, ["model.pt", "model.json"])
    empty = work / "fork"
    empty.mkdir(exist_ok=True)
    with pytest.raises(UserError, match=r"model.source.repo: .*fork has no module yolobuild.models.yolov5"):
        run_op("load_model", work / "repo2", params(random=False, source_repo=str(empty)),
               {"weights": work / "own_full.pt"}, ["model.pt", "model.json"])


def test_truncated_full_pickle(work):
    from yolobuild.models.yolov5.model import build

    torch.save({"model": build("n", "v6", 3)}, work / "full.pt")
    data = (work / "full.pt").read_bytes()
    (work / "trunc.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="truncated or corrupt"):
        run_op("load_model", work / "trunc", params(random=False, family="yolov5", layout="v6"),
               {"weights": work / "trunc.pt"}, ["model.pt", "model.json"])


@pytest.mark.parametrize("head", HEADS)
def test_v8_export_parity_on_demo_images(work, v8, head):
    """The family bar on the demo images (the test above uses noise): per-field cosine and the same
    post-NMS detections, with at least one detection compared."""
    from .family_parity import assert_export_parity

    outs, _ = v8
    figures = assert_export_parity(work / "v8demo", outs["model.pt"], head, H, W, fuse=head != "split")
    assert figures["detections"] >= 1
