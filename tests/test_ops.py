"""Op implementations, checked numerically against independent references (small yolov5n, 128x128)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from yolobuild.errors import CheckFailed, ToolchainError, UserError  # noqa: E402
from yolobuild.runtime.decode import fields, to_decoded  # noqa: E402

from .family_parity import cosine, run_op  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("one_thread")

H = W = 128
TC = "yolobuild.toolchains.onnxruntime.steps:"
NAMES = ["circle", "square", "triangle"]
CKPT_ANCHORS = [[9.5, 12.3, 17.1, 29.9, 33.3, 23.4], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
PRE = dict(height=H, width=W, resize="letterbox", color="rgb", scale=1 / 255, pad_value=114)


def load_params(**kw) -> dict:
    p = dict(family="yolov5", scale="n", layout="v6", nc=3, names=None, anchors=None, random=True, seed=0,
             trust_checkpoint=False)
    p.update(kw)
    return p


def assert_fields_close(got, ref, min_cos=0.99999):
    for name, g in fields(got).items():
        c = cosine(g, fields(ref)[name])
        assert c >= min_cos, f"{name}: cosine {c}"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ops")


def make_checkpoint(path: Path, nc: int = 3, fp16: bool = True):
    """A yolobuild checkpoint with non-trivial BatchNorm statistics (so fusing changes numbers)."""
    from yolobuild.models.yolov5.model import build_yolov5

    torch.manual_seed(1)
    m = build_yolov5("n", nc=nc, anchors=CKPT_ANCHORS)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
    sd = {k: (v.half() if fp16 and v.is_floating_point() else v) for k, v in m.state_dict().items()}
    torch.save({"format": "yolobuild-checkpoint/1", "family": "yolov5", "scale": "n", "layout": "v6", "nc": nc,
                "names": NAMES[:nc], "anchors": CKPT_ANCHORS, "strides": [8, 16, 32], "input_size": [320, 320],
                "state_dict": sd}, path)
    return sd


@pytest.fixture(scope="module")
def ckpt_model(work):
    """load_model on an fp16 yolobuild checkpoint, with a recipe that disagrees on nc and names."""
    sd = make_checkpoint(work / "ckpt16.pt")
    outs, res = run_op("load_model", work / "ck", load_params(random=False, nc=5, names=list("abcde")),
                       {"weights": work / "ckpt16.pt"}, ["model.pt", "model.json"])
    return outs, res, sd


@pytest.fixture(scope="module")
def dataset(work):
    outs, _ = run_op("generate_dataset", work / "data",
                     dict(kind="shapes", seed=0, size=H, calib_count=4, eval_count=5), {}, ["calib", "eval"])
    return outs


@pytest.fixture(scope="module")
def exports(work, ckpt_model):
    """patch (fused) + export_onnx for every head layout."""
    out = {}
    for head in ("raw", "split", "decoded"):
        root = work / f"exp_{head}"
        p, pres = run_op("patch", root, dict(head=head, patches=[], fuse=True, height=H, width=W),
                         {"model": ckpt_model[0]["model.pt"]}, ["patched.pt", "patch_check.json"])
        e, eres = run_op("export_onnx", root, dict(opset=13, head=head, batch=1, height=H, width=W),
                         {"model": p["patched.pt"]}, ["model.onnx"])
        out[head] = {"patched": p["patched.pt"], "onnx": e["model.onnx"], "results": eres, "patch": pres}
    return out


def pytorch_decoded(model_pt: Path, x: np.ndarray) -> np.ndarray:
    from yolobuild.ops.building import load_checkpoint

    _, model = load_checkpoint(model_pt)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# --------------------------------------------------------------------------- load_model

def test_load_model_random_is_deterministic(work):
    a, res = run_op("load_model", work / "r1", load_params(), {}, ["model.pt", "model.json"])
    b, _ = run_op("load_model", work / "r2", load_params(), {}, ["model.pt", "model.json"])
    assert a["model.pt"].read_bytes() == b["model.pt"].read_bytes()
    assert a["model.json"].read_bytes() == b["model.json"].read_bytes()
    meta = json.loads(a["model.json"].read_text())
    assert meta["random"] is True and meta["source"] == "random" and res["source"] == "random"
    assert meta["names"] == ["0", "1", "2"] and meta["strides"] == [8, 16, 32]
    assert meta["anchors_px"][0] == [[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]]
    assert meta["parameters"] > 1_000_000
    ck = torch.load(a["model.pt"], weights_only=True)
    assert ck["format"] == "yolobuild-checkpoint/1"
    assert all(v.dtype != torch.float16 for v in ck["state_dict"].values())


def test_load_model_checkpoint_metadata_wins(ckpt_model):
    outs, res, sd16 = ckpt_model
    meta = json.loads(outs["model.json"].read_text())
    assert meta["nc"] == 3 and meta["names"] == NAMES and meta["source"] == "yolobuild-checkpoint"
    assert meta["anchors_px"][0] == [[9.5, 12.3], [17.1, 29.9], [33.3, 23.4]]
    assert res["nc"] == 3 and "nc" in res["checkpoint_overrides"]
    ck = torch.load(outs["model.pt"], weights_only=True)
    w = ck["state_dict"]["model.0.conv.weight"]
    assert w.dtype == torch.float32 and torch.equal(w, sd16["model.0.conv.weight"].float())
    # the anchors buffer follows the metadata (not the fp16-rounded buffer)
    a = ck["state_dict"]["model.24.anchors"] * torch.tensor([8.0, 16.0, 32.0]).view(-1, 1, 1)
    assert torch.allclose(a[0, 2], torch.tensor([33.3, 23.4]), atol=1e-5)


def test_load_model_plain_and_wrapped_state_dict(work):
    from yolobuild.models.yolov5.model import build_yolov5

    torch.manual_seed(3)
    sd = build_yolov5("n", nc=3).state_dict()
    torch.save(sd, work / "plain.pt")
    torch.save({"model": sd, "epoch": 7}, work / "wrapped.pt")
    for name in ("plain", "wrapped"):
        outs, res = run_op("load_model", work / f"sd_{name}", load_params(random=False),
                           {"weights": work / f"{name}.pt"}, ["model.pt", "model.json"])
        assert res["source"] == "state_dict"
        loaded = torch.load(outs["model.pt"], weights_only=True)["state_dict"]
        assert all(torch.equal(loaded[k], v.float() if v.is_floating_point() else v) for k, v in sd.items())


@pytest.fixture(scope="module")
def bad_files(work):
    from PIL import Image

    from yolobuild.models.yolov5.model import build_yolov5

    d = work / "bad"
    d.mkdir()
    torch.save(build_yolov5("n", nc=3).state_dict(), d / "ok.pt")
    data = (d / "ok.pt").read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    (d / "notes.pt").write_text("these are not weights\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "photo.pt", format="JPEG")
    torch.save(build_yolov5("n", nc=80).state_dict(), d / "nc80.pt")
    torch.save(build_yolov5("s", nc=3).state_dict(), d / "scale_s.pt")
    torch.save(build_yolov5("n", nc=3), d / "full.pt")   # a full pickle, as ultralytics train.py writes
    return d


@pytest.mark.parametrize("name, expected", [
    ("truncated", ["truncated or corrupt"]),
    ("notes", ["not a checkpoint", "text file"]),
    ("photo", ["not a checkpoint", "JPEG"]),
    ("nc80", ["does not fit", "model.24.m.0.weight file [255,64,1,1] vs model [24,64,1,1]", "nc=80"]),
    ("scale_s", ["does not fit", "model.0.conv.weight file [32,3,6,6] vs model [16,3,6,6]", "yolov5s"]),
    ("full", ["full pickle referencing yolobuild.models.yolov5.model.DetectionModel", "state_dict()"]),
    ("missing", ["no such file"]),
])
def test_load_model_bad_weights(work, bad_files, name, expected):
    path = bad_files / f"{name}.pt"
    with pytest.raises(UserError) as err:
        run_op("load_model", work / f"bad_{name}", load_params(random=False), {"weights": path},
               ["model.pt", "model.json"])
    msg = str(err.value)
    assert msg.startswith(f"model.weights: {path}") and "\n" not in msg
    for part in expected:
        assert part in msg, msg


# --------------------------------------------------------------------------- patch

def test_patch_fuse_silu_and_verifications(work, ckpt_model):
    from yolobuild.models.yolov5.model import Conv
    from yolobuild.ops.patches import SigmoidMul
    from yolobuild.ops.building import load_checkpoint, load_patched

    patches = ["silu_as_sigmoid_mul", "no_inplace_slice", "anchors_as_constants"]
    outs, res = run_op("patch", work / "patch_all", dict(head="split", patches=patches, fuse=True, height=H, width=W),
                       {"model": ckpt_model[0]["model.pt"]}, ["patched.pt", "patch_check.json"])
    check = json.loads(outs["patch_check.json"].read_text())
    assert check["applied"]["fused"] == 57 and check["applied"]["silu_as_sigmoid_mul"]["replaced"] == 57
    assert check["applied"]["anchors_as_constants"]["anchor_grid_constants"] == 3
    for f in ("boxes", "objectness", "class_scores"):
        assert res["patch_check"][f]["cosine"] >= 0.99999
    model = load_patched(outs["patched.pt"])
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.SiLU)) for m in model.modules())
    assert sum(isinstance(m, SigmoidMul) for m in model.modules()) == 57
    assert all(not hasattr(m, "bn") for m in model.modules() if isinstance(m, Conv))
    # independent check: fused + patched split outputs vs the untouched model's decoded output
    _, ref_model = load_checkpoint(ckpt_model[0]["model.pt"])
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = ref_model(x).numpy()
        got = np.concatenate([t.numpy() for t in model(x)], -1)
    assert np.abs(got - ref).max() < 1e-3 and not np.array_equal(got, ref)   # BN folded: close, not identical
    assert_fields_close(got, ref)


def test_patch_unknown_name(work, ckpt_model):
    with pytest.raises(UserError, match="silu_as_sigmoid_mul"):
        run_op("patch", work / "patch_bad", dict(head="raw", patches=["silu_as_sigmoid"], fuse=False, height=H,
                                                 width=W), {"model": ckpt_model[0]["model.pt"]},
               ["patched.pt", "patch_check.json"])


def test_no_inplace_slice_refuses_slice_writes():
    from yolobuild.ops.patches import patch_function

    class SliceWrite(torch.nn.Module):
        def forward(self, x):
            y = x.sigmoid()
            y[..., 0:2] = y[..., 0:2] * 2   # upstream's pre-v6 Detect decode
            return y

    with pytest.raises(CheckFailed, match="no_inplace_slice"):
        patch_function("no_inplace_slice")(SliceWrite(), torch.rand(1, 3, 8, 8))
    patch_function("no_inplace_slice")(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.SiLU()), torch.rand(1, 3, 8, 8))


def test_anchors_as_constants_refuses_runtime_anchor_reads(ckpt_model):
    from yolobuild.ops.building import load_checkpoint
    from yolobuild.ops.patches import patch_function

    _, model = load_checkpoint(ckpt_model[0]["model.pt"])
    x = torch.rand(1, 3, 64, 64)
    patch_function("anchors_as_constants")(model, x)           # ours: anchor grids are constants
    det = model.detect

    def runtime_anchor_forward(feats):                  # anchors picked by a run-time index: Gather on the buffer
        outs = []
        for i in range(det.nl):
            t = det.m[i](feats[i])
            bs, _, ny, nx = t.shape
            y = det._to_5d(t).sigmoid()
            k = (t.flatten()[:1] * 0).long() + i
            a = det.anchors.index_select(0, k).view(1, det.na, 1, 1, 2) * det.stride[i]
            outs.append(torch.cat((y[..., 0:2], (y[..., 2:4] * 2) ** 2 * a, y[..., 4:]), -1).view(bs, -1, det.no))
        return torch.cat(outs, 1)

    det.forward = runtime_anchor_forward
    with pytest.raises(CheckFailed, match="anchors_as_constants"):
        patch_function("anchors_as_constants")(model, x)


# --------------------------------------------------------------------------- export

@pytest.mark.parametrize("head, names", [("raw", ["out8", "out16", "out32"]), ("split", ["xy", "wh", "conf"]),
                                         ("decoded", ["output"])])
def test_export_onnx_matches_pytorch(exports, ckpt_model, head, names):
    model_pt = ckpt_model[0]["model.pt"]
    meta = json.loads(ckpt_model[0]["model.json"].read_text())
    sess = ort.InferenceSession(str(exports[head]["onnx"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"] and sess.get_inputs()[0].shape == [1, 3, H, W]
    assert [o.name for o in sess.get_outputs()] == names
    x = np.random.default_rng(1).random((1, 3, H, W), dtype=np.float32)
    got = to_decoded(sess.run(None, {"images": x}), head, meta)
    ref = pytorch_decoded(model_pt, x)
    assert got.shape == ref.shape == (1, 3 * (16 * 16 + 8 * 8 + 4 * 4), 8)
    assert_fields_close(got, ref)
    assert np.abs(got[..., :4] - ref[..., :4]).max() < 1e-2


def test_host_decode_of_raw_equals_pytorch_decode(ckpt_model):
    from yolobuild.ops.building import load_checkpoint

    _, model = load_checkpoint(ckpt_model[0]["model.pt"])
    meta = json.loads(ckpt_model[0]["model.json"].read_text())
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x).numpy()
        model.detect.layout = "raw"
        raw = [t.numpy() for t in model(x)]
    np.testing.assert_allclose(to_decoded(raw, "raw", meta), ref, rtol=1e-5, atol=1e-4)


def test_export_is_deterministic_and_simplify_keeps_io(work, exports):
    e, _ = run_op("export_onnx", work / "exp_again", dict(opset=13, head="raw", batch=1, height=H, width=W),
                  {"model": exports["raw"]["patched"]}, ["model.onnx"])
    assert e["model.onnx"].read_bytes() == exports["raw"]["onnx"].read_bytes()
    s, res = run_op("simplify", work / "slim", {}, {"model": exports["decoded"]["onnx"]}, ["model.onnx"])
    assert res["nodes_after"] < res["nodes_before"]
    a = ort.InferenceSession(str(exports["decoded"]["onnx"]), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(s["model.onnx"]), providers=["CPUExecutionProvider"])
    assert [o.name for o in b.get_outputs()] == ["output"] and b.get_inputs()[0].name == "images"
    x = np.random.default_rng(3).random((1, 3, H, W), dtype=np.float32)
    np.testing.assert_allclose(b.run(None, {"images": x})[0], a.run(None, {"images": x})[0], rtol=1e-4, atol=1e-4)
    _, check = run_op("check_simplify", work / "slim_check", {},
                      {"exported": exports["decoded"]["onnx"], "simplified": s["model.onnx"]}, ["simplify_check.json"])
    assert 0 <= check["max_abs_diff"]["output"] < 1e-4


def test_check_simplify_refuses_a_model_that_computes_something_else(work, exports):
    """The exported graph with its output doubled stands in for a simplifier that broke the graph."""
    other = onnx.load(str(exports["decoded"]["onnx"]))
    scale = onnx.helper.make_tensor("two", onnx.TensorProto.FLOAT, [], [2.0])
    other.graph.initializer.append(scale)
    last = other.graph.output[0].name
    other.graph.node.append(onnx.helper.make_node("Mul", [last + "_pre", "two"], [last]))
    for node in other.graph.node[:-1]:
        node.output[:] = [o + "_pre" if o == last else o for o in node.output]
    broken = work / "broken.onnx"
    onnx.save(other, str(broken))
    with pytest.raises(ToolchainError, match="differs from the exported one"):
        run_op("check_simplify", work / "slim_bad", {},
               {"exported": exports["decoded"]["onnx"], "simplified": broken}, ["simplify_check.json"])


# --------------------------------------------------------------------------- inputs

def test_generate_dataset_zero_count(work):
    outs, res = run_op("generate_dataset", work / "data0", dict(kind="shapes", seed=0, size=64, calib_count=0,
                                                                eval_count=2), {}, ["calib", "eval"])
    assert (outs["calib"] / "images").is_dir() and not list((outs["calib"] / "images").iterdir())
    assert json.loads((outs["calib"] / "annotations.json").read_text())["images"] == []
    assert res["eval"]["images"] == 2


def test_prepare_inputs_and_calibrate(work, dataset):
    from yolobuild.runtime.preprocess import letterbox, list_images, load_rgb

    outs, res = run_op("prepare_inputs", work / "prep", dict(PRE, parity_count=2, eval_count=None),
                       {"images": dataset["eval"]}, ["probe.npz"])
    z = np.load(outs["probe.npz"])
    coco = json.loads((dataset["eval"] / "annotations.json").read_text())
    files = list_images(dataset["eval"] / "images")
    assert z["images"].shape == (5, H, W, 3) and z["images"].dtype == np.uint8
    assert list(z["file_names"]) == [f.name for f in files]
    ids = {im["file_name"]: im["id"] for im in coco["images"]}
    assert z["image_ids"].tolist() == [ids[f.name] for f in files]
    canvas, box = letterbox(load_rgb(files[1]), H, W, 114)
    assert np.array_equal(z["images"][1], canvas)
    np.testing.assert_allclose(z["letterbox"][1], [box.scale, box.pad_x, box.pad_y])
    assert int(z["parity_count"]) == 2 and res["images"] == 5

    c, cres = run_op("calibrate", work / "calib", dict(PRE, count=3), {"images": dataset["calib"]}, ["calib.npz"])
    assert np.load(c["calib.npz"])["images"].shape == (3, H, W, 3) and cres["images"] == 3

    again, _ = run_op("prepare_inputs", work / "prep2", dict(PRE, parity_count=2, eval_count=None),
                      {"images": dataset["eval"]}, ["probe.npz"])
    assert again["probe.npz"].read_bytes() == outs["probe.npz"].read_bytes()


def test_calibrate_refuses_non_images(work, dataset):
    bad = work / "badcalib"
    bad.mkdir()
    (bad / "a.jpg").write_bytes((dataset["calib"] / "images" / "calib_00000.jpg").read_bytes())
    (bad / "b.jpg").write_text("not a picture")
    with pytest.raises(UserError, match=r"b\.jpg: not a readable image"):
        run_op("calibrate", work / "calib_bad", dict(PRE, count=8), {"images": bad}, ["calib.npz"])
    empty = work / "emptycalib"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no images"):
        run_op("calibrate", work / "calib_empty", dict(PRE, count=8), {"images": empty}, ["calib.npz"])


# --------------------------------------------------------------------------- toolchain, checks, package

def test_int8_pipeline_parity_evaluate_package(work, dataset, exports, ckpt_model):
    model_pt, meta_json = ckpt_model[0]["model.pt"], ckpt_model[0]["model.json"]
    root = work / "int8"
    from yolobuild.toolchains.registry import get

    common = dict(platform="cpu", precision="int8", input_layout="nchw_float32", head="raw",
                  options=get("onnxruntime").option_defaults(), **PRE)
    probe, _ = run_op("prepare_inputs", root, dict(PRE, parity_count=3, eval_count=None), {"images": dataset["eval"]},
                      ["probe.npz"])
    ref, _ = run_op("reference", root, dict(conf_thres=0.001, iou_thres=0.6),
                    {"model": model_pt, "probe": probe["probe.npz"]}, ["reference.npz"])
    calib, _ = run_op("calibrate", root, dict(PRE, count=4), {"images": dataset["calib"]}, ["calib.npz"])
    q, qres = run_op("quantize", root, common, {"model": exports["raw"]["onnx"], "calib": calib["calib.npz"]},
                     ["model.onnx"], impl=TC + "quantize")
    ops = {n.op_type for n in onnx.load(str(q["model.onnx"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and qres["QuantizeLinear"] > 50
    comp, cres = run_op("compile", root, common, {"model": q["model.onnx"]}, ["model.ort.onnx"], impl=TC + "compile")
    assert cres["providers"] == ["CPUExecutionProvider"] and cres["qdq_nodes"] > 0
    sim, _ = run_op("simulate", root, common, {"model": comp["model.ort.onnx"], "probe": probe["probe.npz"]},
                    ["outputs.npz"], impl=TC + "simulate")
    z = np.load(sim["outputs.npz"])
    assert list(z["__names__"]) == ["out8", "out16", "out32"] and z["out8"].shape == (5, 24, 16, 16)

    # reference.npz is the PyTorch fp32 decoded output of the probe canvases
    pz = np.load(probe["probe.npz"])
    decoded = np.load(ref["reference.npz"])["decoded"]
    np.testing.assert_allclose(decoded[:1], pytorch_decoded(model_pt, pz["images"][:1].transpose(0, 3, 1, 2)
                                                            .astype(np.float32) / 255), rtol=1e-4, atol=1e-3)
    # int8 stays close to fp32, field by field
    meta = json.loads(meta_json.read_text())
    got = to_decoded([z[n] for n in z["__names__"]], "raw", meta)
    assert_fields_close(got, decoded, min_cos=0.9)

    par, pres = run_op("check_parity", root, dict(head="raw", thresholds={"cosine": 0.9}, count=3),
                       {"outputs": sim["outputs.npz"], "reference": ref["reference.npz"], "meta": meta_json},
                       ["parity.json"])
    stats = json.loads(par["parity.json"].read_text())
    assert set(stats) == {"boxes", "objectness", "class_scores"}
    assert all(0.9 < v["cosine"] < 1.0 for v in stats.values()) and pres["parity"] == stats
    with pytest.raises(CheckFailed, match=r"parity: .*cosine .* < 0\.9999999 \(target threshold\)"):
        run_op("check_parity", root / "strict", dict(head="raw", thresholds={"cosine": 0.9999999}, count=3),
               {"outputs": sim["outputs.npz"], "reference": ref["reference.npz"], "meta": meta_json}, ["parity.json"])

    ev, eres = run_op("evaluate", root, dict(head="raw", conf_thres=0.001, iou_thres=0.6),
                      {"outputs": sim["outputs.npz"], "reference": ref["reference.npz"], "meta": meta_json,
                       "probe": probe["probe.npz"], "annotations": dataset["eval"]}, ["metrics.json"])
    m = json.loads(ev["metrics.json"].read_text())
    assert m["images"] == 5 and set(m["built"]) == {"mAP50_95", "mAP50"} and eres["category_mapping"] == "names"
    assert m["delta_mAP50_95"] == pytest.approx((m["built"]["mAP50_95"] - m["pytorch_fp32"]["mAP50_95"]) * 100,
                                                abs=1e-3)

    pk, _ = run_op("package", root, dict(common, toolchain="onnxruntime", compiled=["model.ort.onnx"]),
                   {"model": comp["model.ort.onnx"], "meta": meta_json}, ["deploy"])
    deploy = json.loads((pk["deploy"] / "deploy.json").read_text())
    assert (pk["deploy"] / "model.ort.onnx").is_file()
    assert (pk["deploy"] / "labels.txt").read_text().split() == NAMES
    assert deploy["input"]["name"] == "images" and deploy["input"]["shape"] == [1, 3, H, W]
    assert [o["name"] for o in deploy["head"]["outputs"]] == ["out8", "out16", "out32"]
    assert deploy["head"]["anchors_px"] == meta["anchors_px"] and deploy["names"] == NAMES
    assert deploy["preprocessing"]["pad_value"] == 114


def test_quantize_options(work, dataset, exports):
    from onnx import numpy_helper

    root = work / "qopts"
    calib, _ = run_op("calibrate", root, dict(PRE, count=4), {"images": dataset["calib"]}, ["calib.npz"])
    common = dict(platform="cpu", precision="int8", input_layout="nchw_float32", head="raw", **PRE)

    def scales(method):
        from yolobuild.toolchains.registry import get

        opts = {**get("onnxruntime").option_defaults(), "calibrate_method": method,
                **({"num_bins": 256} if method == "entropy" else {})}
        q, res = run_op("quantize", root / method, dict(common, options=opts),
                        {"model": exports["raw"]["onnx"], "calib": calib["calib.npz"]}, ["model.onnx"],
                        impl=TC + "quantize")
        assert res["calibrate_method"] == method
        g = onnx.load(str(q["model.onnx"])).graph
        return {i.name: numpy_helper.to_array(i) for i in g.initializer if i.name.endswith("_scale")}

    minmax, entropy = scales("minmax"), scales("entropy")
    assert minmax.keys() == entropy.keys()
    assert any(not np.allclose(minmax[k], entropy[k]) for k in minmax)   # entropy is not minmax in disguise
    # a step gets its options complete and checked: validate rejects bad ones against the schema
    from yolobuild.backend_options import merged, problems
    from yolobuild.toolchains.registry import get

    decl = get("onnxruntime")
    assert [k for k, _ in problems(decl, merged(decl, {"calibrate_method": "kl"}))] == ["backend.options.calibrate_method"]
    assert [k for k, _ in problems(decl, merged(decl, {"bogus": 1}))] == ["backend.options.bogus"]


def _qdq_params(graph) -> dict[str, tuple[float, int]]:
    """tensor -> (scale, zero point) of the QuantizeLinear that quantizes it in a QDQ graph."""
    from onnx import numpy_helper

    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {n.input[0]: (float(init[n.input[1]]), int(init[n.input[2]]))
            for n in graph.node if n.op_type == "QuantizeLinear" and n.input[1] in init}


def test_quantize_float_stem_and_shared_concat_scales(work, dataset, exports):
    """fp32_stem leaves the convolution that reads the image in float; shared_scales gives every tensor a
    Concat, Split, Resize or MaxPool joins the union of their ranges, recomputed here with ONNX Runtime from
    the float model's own tensors on the calibration images."""
    from yolobuild.runtime.arrays import canvas_to_input, load_npz
    from yolobuild.toolchains.registry import get

    root = work / "qshared"
    calib, _ = run_op("calibrate", root, dict(PRE, count=4), {"images": dataset["calib"]}, ["calib.npz"])
    common = dict(platform="cpu", precision="int8", input_layout="nchw_float32", head="raw", **PRE)
    defaults = get("onnxruntime").option_defaults()
    assert defaults["fp32_stem"] is True and defaults["shared_scales"] is True
    graphs, results = {}, {}
    for name, extra in (("on", {}), ("off", {"fp32_stem": False, "shared_scales": False})):
        q, results[name] = run_op("quantize", root / name, dict(common, options={**defaults, **extra}),
                                  {"model": exports["raw"]["onnx"], "calib": calib["calib.npz"]}, ["model.onnx"],
                                  impl=TC + "quantize")
        graphs[name] = onnx.load(str(q["model.onnx"])).graph

    readers = {k: {n.op_type for n in g.node if "images" in n.input} for k, g in graphs.items()}
    assert readers == {"on": {"Conv"}, "off": {"QuantizeLinear"}}   # the stem reads the float image

    float_graph = onnx.load(str(exports["raw"]["onnx"])).graph
    concats = [n for n in float_graph.node if n.op_type == "Concat"]
    assert concats and results["on"]["shared_groups"] >= 1 and "shared_groups" in results["off"]
    on, off = _qdq_params(graphs["on"]), _qdq_params(graphs["off"])
    same = lambda params, n: len({params[t] for t in (*n.input, n.output[0]) if t in params}) == 1  # noqa: E731
    assert all(same(on, n) for n in concats if n.output[0] in on)
    assert not all(same(off, n) for n in concats if n.output[0] in off)

    # the shared range is the union of the joined tensors' own min/max (ONNX Runtime, float model)
    concat = next(n for n in concats if n.output[0] in on)
    probe = onnx.load(str(exports["raw"]["onnx"]))
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in (*concat.input, concat.output[0]))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    x = canvas_to_input(load_npz(calib["calib.npz"])["images"], 1 / 255)
    values = [sess.run(None, {"images": x[i:i + 1]}) for i in range(len(x))]
    low = min(0.0, min(float(v.min()) for run in values for v in run))
    high = max(0.0, max(float(v.max()) for run in values for v in run))
    scale, _ = on[concat.output[0]]
    assert scale == pytest.approx((high - low) / 255, rel=1e-5)
