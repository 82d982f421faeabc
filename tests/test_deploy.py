"""deploy/: the standalone infer.py against yolobuild's own pipeline, deploy.json against its schema,
golden samples (--check, and a moved box caught), benchmark figures, report.html in a headless browser.

infer.py's reference is always yolobuild's runtime (decode, NMS, letterbox) or the build's checked
outputs, never infer.py itself. Runs of infer.py as a user runs it use an interpreter that sees only
the standard library, numpy, Pillow and onnxruntime (`python -I -S` plus a folder of links to those
three packages): no yolobuild, no torch, no network; quicker than creating a venv and as strict.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from yolobuild.validate import SCHEMAS_DIR

from tests.conftest import cli_in_process

TEMPLATE = Path(__file__).resolve().parents[1] / "yolobuild" / "deploy" / "templates" / "infer.py"
SCHEMA = SCHEMAS_DIR / "deploy.schema.json"


def load_infer(path: Path = TEMPLATE):
    spec = importlib.util.spec_from_file_location("deploy_infer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def schema_errors(doc: dict) -> list[str]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory):
    """argv prefix running a script with only stdlib + numpy + Pillow + onnxruntime importable."""
    import numpy
    import onnxruntime
    import PIL

    farm = tmp_path_factory.mktemp("bare-site")
    for pkg in (numpy, PIL, onnxruntime):
        root = Path(pkg.__file__).parent
        (farm / root.name).symlink_to(root)
        libs = root.parent / f"{'pillow' if root.name == 'PIL' else root.name}.libs"
        if libs.is_dir():
            (farm / libs.name).symlink_to(libs)
    boot = ("import runpy, sys; sys.path.append(sys.argv[1]); script = sys.argv[2]; sys.argv = sys.argv[2:]; "
            "runpy.run_path(script, run_name='__main__')")
    return [sys.executable, "-I", "-S", "-c", boot, str(farm)]


def run_bare(bare_python, script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*bare_python, str(script), *args], capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- decode / NMS / letterbox

FAMILY_METAS = {
    "yolov5": {"head_kind": "anchor_based", "decode": "yolov5", "family": "yolov5"},
    "darknet": {"head_kind": "anchor_based", "decode": "darknet", "family": "yolov3"},
    "dfl": {"head_kind": "anchor_free", "decode": "dfl", "family": "yolov8"},
}


def _levels(kind: str, nc: int, strides, h: int, w: int, rng) -> list[np.ndarray]:
    c = 4 * 16 + nc if kind == "dfl" else 3 * (5 + nc)
    return [rng.normal(0, 2, (1, c, h // s, w // s)).astype(np.float32) for s in strides]


@pytest.mark.parametrize("kind", sorted(FAMILY_METAS))
def test_raw_decode_and_nms_match_yolobuild(kind):
    from yolobuild.runtime.decode import nms_input, to_decoded
    from yolobuild.runtime.nms import non_max_suppression

    infer = load_infer()
    rng = np.random.default_rng(0)
    nc, strides, (h, w) = 3, [8, 16, 32], (96, 160)
    anchors = [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]], [[116, 90], [156, 198], [373, 326]]]
    meta = {**FAMILY_METAS[kind], "nc": nc, "strides": strides, "anchors_px": None if kind == "dfl" else anchors}
    maps = _levels(kind, nc, strides, h, w, rng)
    spec = {"nc": nc, "input": {"height": h, "width": w},
            "head": {"layout": "raw", "kind": meta["head_kind"], "decode": kind, "strides": strides,
                     "anchors_px": meta["anchors_px"], "scale_x_y": 1.0}}
    ref = nms_input(to_decoded(maps, "raw", meta), meta)[0]
    got = infer.decode(maps[::-1], spec)        # a runtime may list the levels in any order
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    nhwc = [m.transpose(0, 2, 3, 1) for m in maps]   # and give NHWC maps
    np.testing.assert_allclose(infer.decode(nhwc, spec), ref, rtol=1e-5, atol=1e-4)
    for conf in (0.05, 0.3):
        want = non_max_suppression(ref, conf_thres=conf, iou_thres=0.45, max_det=100)
        have = infer.nms(got, conf, 0.45, 100)
        assert len(want) > 0 and have.shape == want.shape
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("anchor_free", [False, True])
def test_split_and_decoded_heads_match_yolobuild(anchor_free):
    from yolobuild.runtime.decode import nms_input, to_decoded

    infer = load_infer()
    rng = np.random.default_rng(1)
    nc, n = 3, 50
    meta = {"head_kind": "anchor_free" if anchor_free else "anchor_based", "nc": nc}
    xy, wh = rng.uniform(0, 300, (1, n, 2)), rng.uniform(5, 80, (1, n, 2))
    conf = rng.uniform(0, 1, (1, n, nc + (0 if anchor_free else 1)))
    split = [a.astype(np.float32) for a in (xy, wh, conf)]
    head = {"kind": meta["head_kind"], "decode": "dfl" if anchor_free else "yolov5", "strides": [8, 16, 32]}
    for layout, outs in (("split", split), ("decoded", [np.concatenate(split, -1)])):
        ref = nms_input(to_decoded(outs, layout, meta), meta)[0]
        got = infer.decode(outs, {"nc": nc, "input": {"height": 320, "width": 320}, "head": {**head, "layout": layout}})
        np.testing.assert_allclose(got, ref, rtol=1e-6)
    if anchor_free:   # upstream YOLOv8's own (1, 4+nc, N) output is read too
        got = infer.decode([np.concatenate(split, -1).transpose(0, 2, 1)],
                           {"nc": nc, "input": {"height": 320, "width": 320}, "head": {**head, "layout": "decoded"}})
        np.testing.assert_allclose(got, nms_input(np.concatenate(split, -1), meta)[0], rtol=1e-6)


def test_letterbox_and_feed_match_yolobuild():
    from yolobuild.runtime.arrays import canvas_to_input
    from yolobuild.runtime.preprocess import letterbox

    infer = load_infer()
    rgb = np.random.default_rng(2).integers(0, 256, (181, 307, 3), dtype=np.uint8)
    want, box = letterbox(rgb, 320, 256, 114)
    got, (scale, px, py) = infer.letterbox(rgb, 320, 256, 114)
    assert np.array_equal(got, want) and (scale, px, py) == (box.scale, box.pad_x, box.pad_y)
    float_feed = {"scale": 1 / 255, "feed": {"layout": "nchw", "dtype": "float32", "scale_applied_by": "application"}}
    assert np.array_equal(infer.network_input(got, float_feed), canvas_to_input(want, 1 / 255))
    uint8_feed = {"scale": 1 / 255, "feed": {"layout": "nhwc", "dtype": "uint8", "scale_applied_by": "model"}}
    x = infer.network_input(got, uint8_feed)
    assert x.dtype == np.uint8 and np.array_equal(x[0], want)


def test_check_compares_with_tolerance():
    infer = load_infer()
    tol = {"box_px": 2.0, "box_rel": 0.01, "score": 0.02, "threshold_margin": 0.02}
    det = {"class": 1, "name": "square", "score": 0.9, "box": [10.0, 10.0, 110.0, 60.0]}
    near = {**det, "box": [11.5, 10.0, 110.0, 61.0], "score": 0.89}
    assert infer.first_mismatch([det], [near], tol, 0.25) is None
    moved = {**det, "box": [v + 20 for v in det["box"]]}
    assert "off by 20.00 px" in infer.first_mismatch([det], [moved], tol, 0.25)
    assert "no square found" in infer.first_mismatch([det], [], tol, 0.25)
    weak = {**det, "score": 0.26}
    assert infer.first_mismatch([weak], [], tol, 0.25) is None        # fell below the threshold: allowed
    shifted = {**weak, "box": [weak["box"][0] + 20, weak["box"][1], weak["box"][2] + 20, weak["box"][3]]}
    assert "off by" in infer.first_mismatch([weak], [shifted], tol, 0.25)   # moved, not gone: never allowed
    assert "unexpected" in infer.first_mismatch([], [det], tol, 0.25)


# --------------------------------------------------------------------------- deploy.json

@pytest.mark.parametrize("input_layout", ["nchw_float32", "nhwc_uint8"])
def test_deploy_json_for_every_family_and_head_matches_schema(input_layout):
    from yolobuild.deploy.describe import deploy_document
    from yolobuild.models.registry import families

    for family, row in families().items():
        layout = next(iter(row.layouts.values()))
        anchors = layout["anchors"]
        meta = {"family": family, "nc": 2, "names": ["a", "b"], "strides": layout["strides"],
                "anchors_px": [[anchors[i][j:j + 2] for j in range(0, len(anchors[i]), 2)] for i in range(len(anchors))]
                if anchors else None, "head_kind": row.head, "decode": row.decode}
        for head in ("raw", "split", "decoded"):
            p = {"height": 320, "width": 320, "input_layout": input_layout, "head": head, "toolchain": "rknn-toolkit2",
                 "scale": 1 / 255, "pad_value": 114, "precision": "int8", "platform": "rk3588"}
            doc = deploy_document(p, meta, "model.rknn", {"model.rknn": "0" * 64},
                                  [{"name": "images", "shape": [1, 320, 320, 3], "dtype": "uint8"}],
                                  [{"name": "o", "shape": None, "dtype": None}],
                                  {"conf_threshold": 0.25, "iou_threshold": 0.45, "max_det": 100, "class_aware": True},
                                  None)
            assert schema_errors(doc) == [], (family, head)
            assert doc["head"]["decode"] == row.decode
            if row.head == "anchor_free":
                assert "objectness" not in doc["head"]["columns"] and "no objectness" in doc["head"]["formula"]
            if head == "raw" and row.decode == "darknet":
                assert "exp(t2)" in doc["head"]["formula"]
            feed = doc["preprocessing"]["feed"]
            assert feed["scale_applied_by"] == ("model" if input_layout == "nhwc_uint8" else "application")


# --------------------------------------------------------------------------- real builds

def _build(*overrides: str) -> Path:
    code, out, err = cli_in_process(*overrides)
    assert code == 0, out + err
    build = next(p for p in Path("yolobuild-out").iterdir() if not p.name.startswith("."))
    return build


def _moved(build: Path, dest: Path) -> Path:
    """A copy of the deploy folder whose first non-empty sample has its best detection moved 20 px."""
    shutil.copytree(build / "deploy", dest)
    path = dest / "samples" / "expected.json"
    expected = json.loads(path.read_text())
    item = next(i for i in expected["images"] if i["detections"])
    best = max(item["detections"], key=lambda d: d["score"])
    best["box"] = [v + 20 for v in best["box"]]
    path.write_text(json.dumps(expected))
    return dest / "infer.py"


def _reference_detections(build: Path, image: Path) -> list[tuple[int, float, list[float]]]:
    """yolobuild's pipeline on one image: its letterbox, onnxruntime, its decode and NMS, unletterboxed."""
    import onnxruntime as ort

    from yolobuild.runtime.decode import nms_input, to_decoded
    from yolobuild.runtime.nms import non_max_suppression
    from yolobuild.runtime.preprocess import preprocess

    meta = json.loads((build / "model.json").read_text())
    deploy = json.loads((build / "deploy" / "deploy.json").read_text())
    x, box = preprocess(image, deploy["input"]["height"], deploy["input"]["width"])
    sess = ort.InferenceSession(str(build / "deploy" / deploy["model"]["file"]), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    rows = non_max_suppression(nms_input(to_decoded(outs, deploy["head"]["layout"], meta), meta)[0],
                               deploy["postprocess"]["conf_threshold"], deploy["postprocess"]["iou_threshold"], 100)
    boxes = box.to_image(rows[:, :4])
    return [(int(c), float(s), b.tolist()) for b, s, c in zip(boxes, rows[:, 4], rows[:, 5])]


def test_demo_build_ships_a_runner_that_checks_itself(bare_python, tmp_path):
    build = _build("workspace.path=yolobuild-out")
    deploy = build / "deploy"
    spec = json.loads((deploy / "deploy.json").read_text())
    assert schema_errors(spec) == []
    expected = json.loads((deploy / "samples" / "expected.json").read_text())
    assert 3 <= len(expected["images"]) <= 5 and sum(len(i["detections"]) for i in expected["images"]) > 0

    ok = run_bare(bare_python, deploy / "infer.py", "--check")
    assert ok.returncode == 0 and ok.stdout.startswith("ok: "), ok.stdout + ok.stderr
    bad = run_bare(bare_python, _moved(build, tmp_path / "moved"), "--check")
    assert bad.returncode == 1 and bad.stdout.startswith("MISMATCH ") and len(bad.stdout.splitlines()) == 1, bad.stdout

    # a non-square image (letterbox padding, scale back): infer.py agrees with yolobuild's pipeline
    from PIL import Image

    wide = tmp_path / "wide.png"
    with Image.open(deploy / "samples" / expected["images"][0]["file"]) as im:
        im.resize((480, 300)).save(wide)
    out = tmp_path / "dets.json"
    run = run_bare(bare_python, deploy / "infer.py", str(wide), "--json", str(out), "--draw", str(tmp_path / "d.png"))
    assert run.returncode == 0, run.stderr
    got = json.loads(out.read_text())["images"][0]["detections"]
    want = _reference_detections(build, wide)
    assert len(got) == len(want) > 0
    for g, (c, s, b) in zip(got, want):
        assert g["class"] == c and abs(g["score"] - s) < 1e-4
        assert np.allclose(g["box"], np.clip(b, 0, [480, 300, 480, 300]), atol=0.01)
    assert (tmp_path / "d.png").stat().st_size > 0

    bad_input = run_bare(bare_python, deploy / "infer.py", str(tmp_path / "missing.jpg"))
    assert bad_input.returncode == 2 and "Traceback" not in bad_input.stderr and len(bad_input.stderr.splitlines()) == 1

    manifest = json.loads((build / "manifest.json").read_text())
    p50 = manifest["benchmark"]["runtimes"]["onnxruntime"]["p50_ms"]
    assert p50 > 0 and manifest["benchmark"]["runtimes"]["onnxruntime"]["batch"] == 1
    assert not (deploy / "benchmark.sh").exists()       # timed here; benchmark.sh is for board-only targets
    check_report_html(build / "report.html", tmp_path)

    code, out_text, _ = cli_in_process("benchmark", str(build), "--runs", "3", "--warmup", "1")
    assert code == 0 and "p50" in out_text
    assert json.loads((build / "manifest.json").read_text())["benchmark"]["runtimes"]["onnxruntime"]["runs"] == 3
    code, _, err = cli_in_process("benchmark", str(tmp_path))
    assert code == 2 and "not a build folder" in err


@pytest.mark.parametrize("recipe", ["yolov8n", "yolov3-tiny", "yolo26n"])
def test_random_weight_builds_check_anchor_free_and_darknet_decodes(recipe, bare_python, tmp_path):
    build = _build(f"recipe={recipe}", "model.weights=random", "input.width=320", "input.height=320")
    spec = json.loads((build / "deploy" / "deploy.json").read_text())
    assert schema_errors(spec) == []
    assert spec["head"]["decode"] == {"yolov8n": "dfl", "yolov3-tiny": "darknet", "yolo26n": "dfl"}[recipe]
    if recipe == "yolo26n":   # no DFL: one bin per box side
        assert spec["head"]["reg_max"] == 1
    expected = json.loads((build / "deploy" / "samples" / "expected.json").read_text())
    assert all(i["detections"] for i in expected["images"]), "random weights: the samples must hold detections"
    ok = run_bare(bare_python, build / "deploy" / "infer.py", "--check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = run_bare(bare_python, _moved(build, tmp_path / "moved"), "--check")
    assert bad.returncode == 1 and bad.stdout.startswith("MISMATCH "), bad.stdout


# --------------------------------------------------------------------------- report.html

def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def check_report_html(report: Path, tmp_path: Path) -> None:
    import re

    html = report.read_text()
    assert "<svg" in html and 'src="data:image/' in html
    assert not re.search(r"https?://", html), "report.html must load nothing from the network"
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium): report.html was checked as text only")
    shot = Path(os.environ.get("YOLOBUILD_REPORT_SHOT") or tmp_path / "report.png")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1100,1600", report.resolve().as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is blank"


def test_board_only_artifacts_get_a_benchmark_script(tmp_path):
    from yolobuild.deploy.bundle import write_scripts

    for toolchain, board in (("rknn-toolkit2", True), ("tpu-mlir", True), ("onnxruntime", False)):
        folder = tmp_path / toolchain
        folder.mkdir()
        write_scripts(folder, toolchain)
        assert (folder / "infer.py").read_bytes() == TEMPLATE.read_bytes()   # the same tested file, not generated
        assert (folder / "benchmark.sh").is_file() == board
    script = (tmp_path / "tpu-mlir" / "benchmark.sh").read_text()
    assert "bmrt_test --bmodel model.bmodel" in script and "infer.py --benchmark" in script


def test_each_block_starts_after_the_other_models_threads_settle(monkeypatch):
    """A block's counted calls start only after SETTLE_S of uncounted ones (the other model's worker threads
    spin for some 30 ms after its last call): with 20 ms calls and a 0.1 s settle, at least 5 lead each block."""
    import time as _time

    from yolobuild.deploy import timing

    monkeypatch.setattr(timing, "SETTLE_S", 0.1)
    calls = []

    def run(x):
        calls.append(_time.perf_counter())
        _time.sleep(0.02)

    times = timing._block(run, np.zeros(1), 3)
    assert len(times) == 3 and all(t >= 19 for t in times)
    assert len(calls) >= 5 + 3 and calls[-3] - calls[0] >= 0.1


def test_a_quantized_artifact_is_timed_call_for_call_beside_its_float_model(monkeypatch):
    """In turn, so a machine that gets busier mid-run slows both alike: blocks of calls, each block led by
    uncounted calls (the other model's threads still spinning; one here, the calls take no time). The order of
    calls is the check."""
    from yolobuild.deploy import timing
    from yolobuild.deploy.timing import BLOCK, measure_against

    monkeypatch.setattr(timing, "SETTLE_S", 0.0)
    calls = []
    runs = BLOCK + 3
    built, floats = measure_against(lambda x: calls.append("b"), lambda x: calls.append("f"),
                                    np.zeros(1), runs=runs, warmup=2)
    assert "".join(calls) == "bbbfff" + ("b" * (BLOCK + 1) + "f" * (BLOCK + 1)) + ("b" * 4 + "f" * 4)
    assert built["runs"] == floats["runs"] == runs and built["p50_ms"] >= 0 and floats["p50_ms"] >= 0
