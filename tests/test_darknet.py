"""YOLOv3 / YOLOv3-tiny from Darknet .cfg + .weights: cfg parse, the .weights byte layout (written here
from the public format, read back), the family parity bar for every head layout with fuse on and off,
bad input (one line, exit 2), the CLI verbs and the Cambricon MLU hand-off bundle."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from yolobuild.errors import UserError  # noqa: E402
from yolobuild.models.darknet import darknet_cfg as dc  # noqa: E402

from .conftest import build_dir, run_cli  # noqa: E402
from .conftest import cli_in_process as _cli  # noqa: E402
from .family_parity import HEADS, assert_export_parity, demo_images, lively, run_op  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
H = W = 128
NC = 3


def params(layout="yolov3-tiny", **kw):
    p = dict(family="yolov3", scale=None, layout=layout, nc=NC, names=None, anchors=None, random=False, seed=0,
             trust_checkpoint=False)
    p.update(kw)
    return p


def load(root: Path, weights: Path, **kw):
    return run_op("load_model", root, params(**kw), {"weights": weights}, ["model.pt", "model.json"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A lively yolov3-tiny (nc=3) written as a Darknet .weights file and loaded by load_model."""
    from yolobuild.models.darknet.model import build, write_weights

    work = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = lively(build(None, "yolov3-tiny", NC), demo_images(work, 4, H, W))
    size = write_weights(model.state_dict(), "yolov3-tiny", work / "tiny.weights", seen=123456)
    outs, res = load(work / "load", work / "tiny.weights")
    return work, model, outs["model.pt"], res, size


# --------------------------------------------------------------------------- cfg and .weights layout

def test_cfg_parse_builds_yolov3_and_tiny_with_the_table_strides():
    from yolobuild.models.registry import families
    from yolobuild.models.darknet.model import build

    for layout, n_layers, strides in (("yolov3", 107, [8, 16, 32]), ("yolov3-tiny", 24, [16, 32])):
        layers = dc.walk(dc.read_cfg(layout))
        assert len(layers) == n_layers
        spec = families()["yolov3"].layouts[layout]
        assert [y["stride_px"] for y in dc.levels(layers)] == spec["strides"] == strides
        assert [y["anchors"] for y in dc.levels(layers)] == spec["anchors"]    # table = shipped cfg
    # the shipped cfgs imply exactly the sizes of the released yolov3.weights / yolov3-tiny.weights
    assert dc.weights_bytes(dc.walk(dc.read_cfg("yolov3"))) == 248_007_048
    assert dc.weights_bytes(dc.walk(dc.read_cfg("yolov3-tiny"))) == 35_434_956
    tiny = build(None, "yolov3-tiny", NC).eval()
    big = build(None, "yolov3", NC).eval()
    # upstream's 61,949,149 parameters at nc=80, less the head convs' 255 -> 24 output channels (1795 inputs each)
    assert sum(p.numel() for p in big.parameters()) == 61_949_149 - (255 - 24) * 1795 == 61_534_504
    for model, size, grids in ((tiny, 160, [10, 5]), (big, 64, [8, 4, 2])):
        x = torch.rand(1, 3, size, size)
        with torch.no_grad():
            y = model(x)
            model.detect.layout = "raw"
            raw = model(x)
        assert [t.shape[-1] for t in raw] == grids and all(t.shape[1] == 3 * (NC + 5) for t in raw)
        assert y.shape == (1, 3 * sum(g * g for g in grids), NC + 5)
    assert tiny.detect.stride.tolist() == [16, 32] and big.detect.stride.tolist() == [8, 16, 32]
    # nc other than 80: [yolo] classes and the filters before them are recomputed
    sec = dc.with_classes(dc.read_cfg("yolov3"), 3)
    before_yolo = [s for i, s in enumerate(sec) if i + 1 < len(sec) and sec[i + 1]["type"] == "yolo"]
    assert [int(s["filters"]) for s in before_yolo] == [24] * 3


def test_tiny_maxpool_stride_1_keeps_the_map_size_like_darknet():
    from yolobuild.models.darknet.model import MaxPool

    x = torch.randn(1, 2, 5, 5) - 3          # all negative: a zero pad (the common port) would win at the edge
    y = MaxPool(2, 1, 1)(x)
    assert y.shape == x.shape
    want = torch.maximum(torch.maximum(x, torch.nn.functional.pad(x[..., :, 1:], (0, 1), value=-1e9)),
                         torch.maximum(torch.nn.functional.pad(x[..., 1:, :], (0, 0, 0, 1), value=-1e9),
                                       torch.nn.functional.pad(x[..., 1:, 1:], (0, 1, 0, 1), value=-1e9)))
    assert torch.equal(y, want)


def test_weights_round_trip_is_exact(tiny):
    from yolobuild.models.darknet.model import read_darknet, write_weights
    from yolobuild.ops.building import load_checkpoint

    work, model, model_pt, res, size = tiny
    path = work / "tiny.weights"
    floats = dc.weights_floats(dc.walk(dc.with_classes(dc.read_cfg("yolov3-tiny"), NC)))
    assert size == path.stat().st_size == 20 + 4 * floats
    assert struct.unpack("<3iq", path.read_bytes()[:20]) == (0, 2, 0, 123456)
    header, sd, nc = read_darknet(path, "yolov3-tiny", "test")
    assert nc == NC and header["seen"] == 123456
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert sd.keys() == own.keys()
    assert all(torch.equal(sd[k], own[k]) for k in own)
    # written again from what was read: the same bytes
    write_weights(sd, "yolov3-tiny", work / "again.weights", seen=123456)
    assert (work / "again.weights").read_bytes() == path.read_bytes()
    # load_model's checkpoint computes what the model computes
    assert res["source"] == "darknet-weights" and res["nc"] == NC and res["layout"] == "yolov3-tiny"
    meta = json.loads((model_pt.parent / "model.json").read_text())
    assert meta["anchors_px"][0] == [[23.0, 27.0], [37.0, 58.0], [81.0, 82.0]] and meta["strides"] == [16, 32]
    assert meta["decode"] == "darknet" and meta["input_size"] == [416, 416]
    _, loaded = load_checkpoint(model_pt)
    x = torch.from_numpy(demo_images(work, 2, H, W))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_plain_state_dicts_load_ours_and_darknet_numbered_ports(tiny, tmp_path):
    from yolobuild.ops.building import load_checkpoint

    work, model, model_pt, _, _ = tiny
    _, ref = load_checkpoint(model_pt)
    torch.save(model.state_dict(), tmp_path / "ours.pt")
    # PyTorch ports that number layers like the cfg: module_list.{i}.conv_{i} / batch_norm_{i}, head convs in place
    heads = {15: 1, 22: 0}
    port = {}
    for k, v in model.state_dict().items():
        if k.startswith("detect.m."):
            level, field = int(k.split(".")[2]), k.split(".")[3]
            i = next(i for i, lv in heads.items() if lv == level)
            port[f"module_list.{i}.conv_{i}.{field}"] = v
        else:
            _, i, part, field = k.split(".")
            port[f"module_list.{i}.{'conv_' if part == 'conv' else 'batch_norm_'}{i}.{field}"] = v
    torch.save({"epoch": 3, "model": port}, tmp_path / "port.pt")
    x = torch.from_numpy(demo_images(work, 1, H, W))
    for name in ("ours.pt", "port.pt"):
        outs, res = load(tmp_path / f"load_{name}", tmp_path / name)
        assert res["source"] == "state_dict"
        _, got = load_checkpoint(outs["model.pt"])
        with torch.no_grad():
            assert torch.equal(got(x), ref(x)), name


# --------------------------------------------------------------------------- the parity bar

@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("head", HEADS)
def test_tiny_export_parity_every_head(tiny, head, fuse):
    work, _, model_pt, _, _ = tiny
    figures = assert_export_parity(work, model_pt, head, H, W, fuse=fuse,
                                   patches=["no_inplace_slice", "anchors_as_constants"])
    print(f"yolov3-tiny {head} fuse={fuse}: " + json.dumps({k: v for k, v in figures.items() if k != "patch_check"}))
    assert all(v["cosine"] >= 0.99999 for v in figures["patch_check"].values())


def test_yolov3_export_parity_raw_fused(tmp_path):
    """Full Darknet-53 YOLOv3 (nc=3), one head layout at a small input: kept light (62M parameters)."""
    from yolobuild.models.darknet.model import build, write_weights
    from yolobuild.ops.building import example_input

    torch.manual_seed(0)
    size = 64
    # BN statistics over the demo images and the patch check's noise probe: 75 random conv layers calibrated
    # on photos alone blow up on uniform noise (exp(t) of the wh logits overflows float32)
    probe = example_input({"height": size, "width": size}).numpy()
    model = lively(build(None, "yolov3", NC), np.concatenate([demo_images(tmp_path, 2, size, size), probe]))
    write_weights(model.state_dict(), "yolov3", tmp_path / "v3.weights")
    outs, res = load(tmp_path / "load", tmp_path / "v3.weights", layout="yolov3")
    assert res["parameters"] == 61_534_504
    figures = assert_export_parity(tmp_path, outs["model.pt"], "raw", size, size, fuse=True)
    print("yolov3 raw fused: " + json.dumps({k: v for k, v in figures.items() if k != "patch_check"}))
    assert all(v["cosine"] >= 0.99999 for v in figures["patch_check"].values())


# --------------------------------------------------------------------------- bad input

def test_truncated_weights_names_the_sizes(tiny, tmp_path):
    work = tiny[0]
    data = (work / "tiny.weights").read_bytes()
    (tmp_path / "cut.weights").write_bytes(data[:-4096])
    with pytest.raises(UserError) as err:
        load(tmp_path / "cut", tmp_path / "cut.weights")
    msg = str(err.value)
    assert "\n" not in msg and "yolov3-tiny.cfg" in msg and "cut.weights" in msg
    assert f"actual {len(data) - 4096} bytes" in msg and "expected 35434956 bytes for nc=80" in msg
    (tmp_path / "head.weights").write_bytes(data[:10])
    with pytest.raises(UserError, match="too short for the header"):
        load(tmp_path / "head", tmp_path / "head.weights")


def test_weights_of_the_other_layout_or_class_count(tiny, tmp_path):
    work = tiny[0]
    with pytest.raises(UserError, match=r"do not match yolov3\.cfg: .*its size fits recipe=yolov3-tiny model\.nc=3$"):
        load(tmp_path / "a", work / "tiny.weights", layout="yolov3")
    with pytest.raises(UserError) as err:
        load(tmp_path / "b", work / "tiny.weights", nc=80)
    msg = str(err.value)
    assert "\n" not in msg
    assert "class count mismatch: the checkpoint's head has nc=3, the recipe says nc=80 (set model.nc=3" in msg


def test_other_family_checkpoints_name_both_families(tiny, tmp_path):
    from yolobuild.models.yolov5.model import build as build_v5

    work = tiny[0]
    torch.save(build_v5("n", "v6", NC).state_dict(), tmp_path / "v5.pt")
    with pytest.raises(UserError) as err:
        load(tmp_path / "a", tmp_path / "v5.pt")
    msg = str(err.value)
    assert "\n" not in msg and "does not fit yolov3 (layout yolov3-tiny" in msg and "looks like yolov5n" in msg
    torch.save(tiny[1].state_dict(), tmp_path / "v3.pt")
    with pytest.raises(UserError, match=r"does not fit yolov5n \(layout v6, nc=3\): .*the file looks like yolov3 "
                                        r"\(layout yolov3-tiny\), nc=3$"):
        load(tmp_path / "c", tmp_path / "v3.pt", family="yolov5", scale="n", layout="v6")
    with pytest.raises(UserError, match=r"a Darknet \.weights file is a yolov3 model but the recipe says yolov5 "
                                        r"\(layout v6\); pick recipe=yolov3"):
        load(tmp_path / "b", work / "tiny.weights", family="yolov5", scale="n", layout="v6")


# --------------------------------------------------------------------------- CLI

def test_cli_validate_plan_inspect(tiny, tmp_path):
    work = tiny[0]
    r = run_cli("validate", "recipe=yolov3", "model.weights=random")
    assert r.returncode == 0 and "recipe yolov3" in r.stdout, r.stdout + r.stderr
    r = run_cli("plan", "recipe=yolov3-tiny", f"model.weights={work / 'tiny.weights'}", "model.nc=3",
                "input.width=160", "input.height=160", f"workspace.path={tmp_path / 'ws'}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "load_model" in r.stdout and "export_onnx" in r.stdout
    r = run_cli("validate", "recipe=yolov3", "model.weights=random", "model.scale=s")
    assert r.returncode == 2 and "model.scale" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("validate", "recipe=yolov3", "model.weights=random", "model.max_stride=64")
    assert r.returncode == 2 and "model.max_stride" in r.stderr
    r = run_cli("inspect", f"model.weights={work / 'tiny.weights'}")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "family:      yolov3" in out and "layout:      yolov3-tiny" in out and "nc:          3" in out
    assert "darknet_version: 0.2.0" in out and "seen:        123456" in out and "strides:     [16, 32]" in out
    (tmp_path / "cut.weights").write_bytes((work / "tiny.weights").read_bytes()[:-8])
    r = run_cli("build", "recipe=yolov3-tiny", f"model.weights={tmp_path / 'cut.weights'}", "model.nc=3",
                f"workspace.path={tmp_path / 'ws2'}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert "do not match yolov3-tiny.cfg" in r.stderr


def test_validate_does_not_import_torch():
    r = run_cli("validate", "recipe=yolov3", "model.weights=random", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert r.returncode == 0, r.stderr
    assert not [line for line in r.stderr.splitlines() if line.rstrip().endswith(" torch")]


# --------------------------------------------------------------------------- Cambricon hand-off


def test_mlu270_int8_bundle_loads_and_runs_against_fake_torch_mlu(tiny, tmp_path):
    from yolobuild.ops.building import load_patched

    from .test_handoff import _import_path, manifest, run_bundle

    work = tiny[0]
    code, out, err = _cli("recipe=yolov3-tiny", f"model.weights={work / 'tiny.weights'}", "model.nc=3",
                          "target=mlu270", "precision=int8", "input.width=160", "input.height=160",
                          "dataset.generator.calib_count=4", "dataset.calib.count=4",
                          "dataset.generator.eval_count=4", "check.parity_images=2",
                          f"workspace.path={tmp_path / 'ws'}", f"cache.dir={tmp_path / 'cache'}")
    assert code == 0, out + err
    d = build_dir(tmp_path / "ws", "yolov3-tiny_mlu270_int8_160x160")
    b = d / "handoff"
    assert (b / "yolov3_mlu.py").is_file() and not (b / "yolov5_mlu.py").exists()
    assert "from yolov3_mlu import build_model" in (b / "genoff.py").read_text()
    sd = torch.load(b / "model.pth", weights_only=True)
    assert "module_list.0.bn.running_mean" in sd and "detect.m.1.weight" in sd    # unfused, our key layout
    mlu = _import_path(b / "yolov3_mlu.py", "yolov3_mlu_test").build_model(str(b / "model.pth"))
    patched = tmp_path / "cache" / {o["id"]: o for o in manifest(d)["ops"]}["patch"]["outputs"]["patched.pt"]["path"]
    ref = load_patched(patched)
    x = torch.from_numpy(demo_images(tmp_path, 1, 160, 160))
    with torch.no_grad():
        got, want = mlu(x), ref(x)
    assert len(got) == len(want) == 2                    # raw head: one output per level
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-4), float((g - w).abs().max())
    r, calls = run_bundle(b, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    q = next(c for c in calls if c["call"] == "quantize_dynamic_mlu" and c["kwargs"]["gen_quant"])
    assert q["kwargs"]["dtype"] == "int8" and q["kwargs"]["qconfig_spec"]["iteration"] == 4
    trace = next(c for c in calls if c["call"] == "jit.trace")
    assert trace["args"] == [[1, 3, 160, 160], "torch.float16"]
    assert {"call": "set_core_version", "args": ["MLU270"], "kwargs": {}} in calls
    assert (tmp_path / "docker" / "yolov3-tiny_mlu270_int8_mlu270.cambricon").is_file()
    readme = (b / "README.md").read_text()
    assert "`yolov3_mlu.py`" in readme and "2 raw conv outputs" in readme


# --------------------------------------------------------------------------- the user's own cfg (model.cfg)

def _user_tiny_cfg(nc: int) -> str:
    """AlexeyAB-style yolov3-tiny.cfg: the stride-16 [yolo] uses mask 0,1,2 (the shipped one 1,2,3)."""
    text = dc.cfg_path("yolov3-tiny").read_text()
    assert text.count("mask = 1,2,3") == 1
    text = text.replace("mask = 1,2,3", "mask = 0,1,2").replace("classes=80", f"classes={nc}")
    return text.replace("filters=255", f"filters={3 * (nc + 5)}")


def _hand_decode(raw: list[np.ndarray], anchors_px: list[list[float]], strides: list[int], nc: int) -> np.ndarray:
    """Darknet's [yolo] decode written out from the cfg: xy=(sigmoid(t)+cell)*stride, wh=exp(t)*anchor."""
    rows = []
    for t, anchors, s in zip(raw, anchors_px, strides):
        bs, _, ny, nx = t.shape
        y = t.reshape(bs, 3, nc + 5, ny, nx).transpose(0, 1, 3, 4, 2).astype(np.float64)
        sig = 1 / (1 + np.exp(-y))
        gy, gx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        a = np.asarray(anchors, np.float64).reshape(1, 3, 1, 1, 2)
        xy = (sig[..., :2] + np.stack((gx, gy), -1)[None, None]) * s
        wh = np.exp(y[..., 2:4]) * a
        rows.append(np.concatenate((xy, wh, sig[..., 4:]), -1).reshape(bs, -1, nc + 5))
    return np.concatenate(rows, 1)


def test_user_cfg_gives_architecture_and_anchors(tmp_path):
    """A .weights with its own cfg (second [yolo] mask 0,1,2): anchors come from that cfg, read beside the
    weights (with a note) or via model.cfg; the decode matches a hand decode with the cfg's anchors."""
    from yolobuild.models.darknet.model import build, write_weights
    from yolobuild.ops.building import load_checkpoint

    text = _user_tiny_cfg(NC)
    (tmp_path / "coco.cfg").write_text(text)
    sections = dc.parse_cfg(text)
    torch.manual_seed(1)
    model = lively(build(None, "yolov3-tiny", NC, cfg=text), demo_images(tmp_path, 4, H, W))
    write_weights(model.state_dict(), sections, tmp_path / "coco.weights")
    outs, res = run_op("load_model", tmp_path / "a", params(nc=80),
                       {"weights": tmp_path / "coco.weights", "cfg": tmp_path / "coco.cfg"}, ["model.pt", "model.json"])
    info = json.loads(outs["model.json"].read_text())
    # by hand from the cfg: anchors 10,14 23,27 37,58 81,82 135,169 344,319; stride 16 mask 0,1,2, stride 32 3,4,5
    assert info["anchors_px"] == [[[10, 14], [23, 27], [37, 58]], [[81, 82], [135, 169], [344, 319]]]
    assert info["nc"] == NC and info["strides"] == [16, 32]
    _, loaded = load_checkpoint(outs["model.pt"])
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    loaded.detect.layout = "raw"
    with torch.no_grad():
        raw = [t.numpy() for t in loaded(x)]
        loaded.detect.layout = "decoded"
        got = loaded(x).numpy()
    ref = _hand_decode(raw, [[10, 14, 23, 27, 37, 58], [81, 82, 135, 169, 344, 319]], [16, 32], NC)
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()
    # the shipped cfg (mask 1,2,3) would put other anchors on the 16-stride level: the case that was wrong
    assert dc.levels(dc.walk(dc.read_cfg("yolov3-tiny")))[0]["anchors"] != [10, 14, 23, 27, 37, 58]

    r = run_cli("plan", "recipe=yolov3-tiny", f"model.weights={tmp_path / 'coco.weights'}", f"model.nc={NC}",
                f"workspace.path={tmp_path / 'ws'}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the .cfg beside the weights" in r.stdout + r.stderr
    (tmp_path / "other.cfg").write_text(_user_tiny_cfg(5))
    r = run_cli("validate", "recipe=yolov3-tiny", f"model.weights={tmp_path / 'coco.weights'}",
                f"model.cfg={tmp_path / 'other.cfg'}", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert r.returncode == 2 and "model.cfg" in r.stderr and "needs" in r.stderr and "Traceback" not in r.stderr
    assert not [line for line in r.stderr.splitlines() if line.rstrip().endswith(" torch")]
    (tmp_path / "bad.cfg").write_text("[net]\n[conv]\n")
    r = run_cli("validate", "recipe=yolov3-tiny", "model.weights=random", f"model.cfg={tmp_path / 'bad.cfg'}")
    assert r.returncode == 2 and "[conv] is not supported" in r.stderr, r.stderr
