"""mmyolo YOLOv5 (family mmyolo-yolov5): mmyolo's state_dict layout, mmengine checkpoints (written the way
mmengine's Runner.save_checkpoint and mmyolo's publish_model.py write them, with fake upstream classes that
are gone from sys.modules before loading), the vacc flow's head truncation, and the family parity bar
(patch -> export each head layout -> onnxruntime vs the unpatched PyTorch model, per field and after NMS)."""
from __future__ import annotations

import contextlib
import json
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from yolobuild.errors import UserError  # noqa: E402

from .family_parity import HEADS, assert_export_parity, demo_images, lively, run_op  # noqa: E402
from .conftest import cli_in_process as cli  # noqa: E402
from .conftest import build_dir  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
H = W = 128
SCALE = "s"      # the recipe: mmyolo-yolov5s
CLASSES = ("circle", "square", "triangle")
# custom anchors (not the defaults): the loaded model must take them from the checkpoint's config
ANCHORS = [[(12, 16), (19, 36), (40, 28)], [(36, 75), (76, 55), (72, 146)], [(142, 110), (192, 243), (459, 401)]]


# --------------------------------------------------------------------------- mmengine-format checkpoints

def _cfg_text(scale_factors=(0.33, 0.5), nc=3, head="YOLOv5Head", anchors=ANCHORS) -> str:
    """An mmengine Config.pretty_text dump, as Runner.save_checkpoint stores it in meta['cfg']."""
    d, w = scale_factors
    return f"""default_scope = 'mmyolo'
img_scale = (160, 128)
num_classes = {nc}
deepen_factor = {d}
widen_factor = {w}
anchors = {anchors!r}
strides = [8, 16, 32]
model = dict(
    type='YOLODetector',
    data_preprocessor=dict(
        type='mmdet.DetDataPreprocessor', mean=[0.0, 0.0, 0.0], std=[255.0, 255.0, 255.0], bgr_to_rgb=True),
    backbone=dict(
        type='YOLOv5CSPDarknet', deepen_factor={d}, widen_factor={w},
        norm_cfg=dict(type='BN', momentum=0.03, eps=0.001), act_cfg=dict(type='SiLU', inplace=True)),
    neck=dict(
        type='YOLOv5PAFPN', deepen_factor={d}, widen_factor={w}, in_channels=[256, 512, 1024],
        out_channels=[256, 512, 1024], num_csp_blocks=3),
    bbox_head=dict(
        type='{head}',
        head_module=dict(
            type='YOLOv5HeadModule', num_classes={nc}, in_channels=[256, 512, 1024], widen_factor={w},
            featmap_strides=[8, 16, 32], num_base_priors=3),
        prior_generator=dict(type='mmdet.YOLOAnchorGenerator', base_sizes={anchors!r}, strides=[8, 16, 32]),
        loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=True, reduction='mean', loss_weight=0.01875)),
    test_cfg=dict(multi_label=True, nms_pre=30000, score_thr=0.001, nms=dict(type='nms', iou_threshold=0.65),
                  max_per_img=300))
"""


@contextlib.contextmanager
def fake_mmengine():
    """mmengine's HistoryBuffer / MessageHub as fake classes under their upstream module names, removed
    from sys.modules afterwards (so loading can never import them)."""
    names = ["mmengine", "mmengine.logging", "mmengine.logging.history_buffer", "mmengine.logging.message_hub"]
    mods = {n: types.ModuleType(n) for n in names}

    class HistoryBuffer:
        def __init__(self, log_history=(), count_history=(), max_length=1000000):
            self.max_length = max_length
            self._log_history = np.asarray(log_history, dtype=np.float64)
            self._count_history = np.asarray(count_history, dtype=np.float64)
            self._statistics_methods = {}

    HistoryBuffer.__module__ = "mmengine.logging.history_buffer"
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    mods["mmengine.logging.history_buffer"].HistoryBuffer = HistoryBuffer
    sys.modules.update(mods)
    try:
        yield HistoryBuffer
    finally:
        for n in names:
            sys.modules.pop(n, None)


def save_mmengine(model, path: Path, classes=CLASSES, cfg: str | None = None, published: bool = False,
                  extra_sd: dict | None = None) -> Path:
    """{'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers', 'ema_state_dict'} like
    mmengine's Runner.save_checkpoint (+ EMAHook); `published`: what mmyolo's publish_model.py leaves
    (no message_hub / optimizer / ema_state_dict, legacy non-zip serialization)."""
    sd = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    sd.update(extra_sd or {})
    meta = {"epoch": 300, "iter": 2100, "cfg": cfg if cfg is not None else _cfg_text(), "seed": 0,
            "experiment_name": "yolov5_s-v61_syncbn_fast_8xb16-300e_shapes_20240101_000000",
            "time": "20240101_000000", "mmengine_version": "0.10.3",
            "dataset_meta": {"classes": tuple(classes), "palette": [(220, 20, 60), (119, 11, 32), (0, 0, 142)]}}
    if published:
        torch.save({"meta": meta, "state_dict": sd}, path, _use_new_zipfile_serialization=False)
        return path
    with fake_mmengine() as HistoryBuffer:
        ckpt = {
            "meta": meta,
            "state_dict": sd,
            "message_hub": {
                "log_scalars": OrderedDict([("train/loss", HistoryBuffer([1.5, 1.2], [1, 1])),
                                            ("train/lr", HistoryBuffer([0.01], [1]))]),
                "runtime_info": OrderedDict([("epoch", 300), ("iter", 2100), ("max_epochs", 300),
                                             ("dataset_meta", meta["dataset_meta"]),
                                             ("best_score", np.float64(0.512))]),
                "resumed_keys": OrderedDict([("epoch", False), ("iter", False)]),
            },
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(4)}},
                          "param_groups": [{"lr": 0.0001, "momentum": 0.937, "nesterov": True,
                                            "weight_decay": 0.0005, "params": [0]}]},
            "param_schedulers": [],
            "ema_state_dict": OrderedDict([("steps", torch.tensor(2100))] +
                                          [(f"module.{k}", v) for k, v in list(sd.items())[:3]]),
        }
        torch.save(ckpt, path)
    return path


def load(work: Path, weights: Path, scale=SCALE, nc=80, names=None) -> tuple[dict, dict]:
    return run_op("load_model", work, dict(family="mmyolo-yolov5", scale=scale, layout="v61", nc=nc, names=names,
                                           anchors=None, random=False, seed=0, trust_checkpoint=False),
                  {"weights": weights}, ["model.pt", "model.json"])



@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("mmyolo")


@pytest.fixture(scope="module")
def lively_n(work):
    """mmyolo YOLOv5s, nc=3, random weights made input-sensitive with confident detections."""
    from yolobuild.models.mmyolo.model import build

    torch.manual_seed(0)
    return lively(build(SCALE, "v61", 3, anchors=[[v for p in lv for v in p] for lv in ANCHORS]),
                  demo_images(work, 4, H, W))


@pytest.fixture(scope="module")
def model_pt(work, lively_n):
    ckpt = save_mmengine(lively_n, work / "yolov5_s-v61_syncbn_fast_8xb16-300e_shapes.pth")
    outs, res = load(work, ckpt)
    return outs["model.pt"], res


# --------------------------------------------------------------------------- architecture

def test_state_dict_matches_mmyolo_yolov5s_layout():
    """Key names / shapes derived from mmyolo's YOLOv5CSPDarknet, YOLOv5PAFPN, YOLOv5HeadModule (widen 0.5,
    deepen 0.33, 80 classes); the count equals ultralytics' yolov5s (7,235,389), the same network."""
    from yolobuild.models.mmyolo.model import build

    sd = build("s", "v61", 80).state_dict()
    expected = {
        "backbone.stem.conv.weight": (32, 3, 6, 6),
        "backbone.stem.bn.running_var": (32,),
        "backbone.stage1.0.conv.weight": (64, 32, 3, 3),
        "backbone.stage1.1.main_conv.conv.weight": (32, 64, 1, 1),
        "backbone.stage1.1.short_conv.conv.weight": (32, 64, 1, 1),
        "backbone.stage1.1.final_conv.conv.weight": (64, 64, 1, 1),
        "backbone.stage1.1.blocks.0.conv1.conv.weight": (32, 32, 1, 1),
        "backbone.stage1.1.blocks.0.conv2.conv.weight": (32, 32, 3, 3),
        "backbone.stage2.1.blocks.1.conv2.conv.weight": (64, 64, 3, 3),
        "backbone.stage3.1.blocks.2.conv1.bn.weight": (128,),
        "backbone.stage4.2.conv1.conv.weight": (256, 512, 1, 1),
        "backbone.stage4.2.conv2.conv.weight": (512, 1024, 1, 1),
        "neck.reduce_layers.2.conv.weight": (256, 512, 1, 1),
        "neck.top_down_layers.0.0.main_conv.conv.weight": (128, 512, 1, 1),
        "neck.top_down_layers.0.1.conv.weight": (128, 256, 1, 1),
        "neck.top_down_layers.1.final_conv.conv.weight": (128, 128, 1, 1),
        "neck.downsample_layers.0.conv.weight": (128, 128, 3, 3),
        "neck.downsample_layers.1.conv.weight": (256, 256, 3, 3),
        "neck.bottom_up_layers.0.blocks.0.conv2.conv.weight": (128, 128, 3, 3),
        "neck.bottom_up_layers.1.final_conv.bn.bias": (512,),
        "bbox_head.head_module.convs_pred.0.weight": (255, 128, 1, 1),
        "bbox_head.head_module.convs_pred.1.weight": (255, 256, 1, 1),
        "bbox_head.head_module.convs_pred.2.weight": (255, 512, 1, 1),
        "bbox_head.head_module.convs_pred.2.bias": (255,),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert len(sd) == 348
    assert {k.split(".")[0] for k in sd} == {"backbone", "neck", "bbox_head"}
    assert not any(k.endswith(("anchors", "priors_base_sizes", "grid_offset", "prior_inds")) for k in sd)
    assert "backbone.stage2.1.blocks.2.conv1.conv.weight" not in sd          # make_round(6, 0.33) = 2 blocks
    assert sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var",
                                                                    "num_batches_tracked"))) == 7235389


def test_same_network_as_ultralytics_yolov5_v6(tmp_path):
    """mmyolo's YOLOv5 v6.1 is ultralytics' v6 network under other names: with the weights mapped across,
    yolobuild's two implementations give the same decoded output (an independent check of the wiring:
    concat orders, CSP branches, SPPF, neck)."""
    from yolobuild.models.mmyolo.model import build
    from yolobuild.models.yolov5.model import build as build_v5

    torch.manual_seed(0)
    v5 = lively(build_v5("n", "v6", 3), demo_images(tmp_path, 2, H, W))
    names = {0: "backbone.stem", 1: "backbone.stage1.0", 2: "backbone.stage1.1", 3: "backbone.stage2.0",
             4: "backbone.stage2.1", 5: "backbone.stage3.0", 6: "backbone.stage3.1", 7: "backbone.stage4.0",
             8: "backbone.stage4.1", 9: "backbone.stage4.2", 10: "neck.reduce_layers.2",
             13: "neck.top_down_layers.0.0", 14: "neck.top_down_layers.0.1", 17: "neck.top_down_layers.1",
             18: "neck.downsample_layers.0", 20: "neck.bottom_up_layers.0", 21: "neck.downsample_layers.1",
             23: "neck.bottom_up_layers.1", 24: "bbox_head.head_module.convs_pred"}
    parts = {"cv1.": "main_conv.", "cv2.": "short_conv.", "cv3.": "final_conv."}
    sd = {}
    for k, v in v5.state_dict().items():
        _, i, rest = k.split(".", 2)
        if rest == "anchors":
            continue
        if int(i) == 9:
            rest = rest.replace("cv1.", "conv1.").replace("cv2.", "conv2.")
        elif rest.startswith("m."):
            rest = "blocks." + rest[2:] if int(i) != 24 else rest[2:]
            rest = rest.replace(".cv1.", ".conv1.").replace(".cv2.", ".conv2.")
        else:
            rest = next((rest.replace(a, b, 1) for a, b in parts.items() if rest.startswith(a)), rest)
        sd[f"{names[int(i)]}.{rest}"] = v
    mm = build("n", "v61", 3)
    assert set(sd) == set(mm.state_dict())
    mm.load_state_dict(sd)
    mm.eval()
    x = torch.from_numpy(demo_images(tmp_path, 2, H, W))
    with torch.no_grad():
        torch.testing.assert_close(mm(x), v5(x), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- checkpoints

def test_mmengine_checkpoint_loads_with_its_classes_anchors_and_size(model_pt, lively_n):
    path, res = model_pt
    info = json.loads((path.parent / "model.json").read_text())
    assert info["family"] == "mmyolo-yolov5" and info["scale"] == SCALE and info["layout"] == "v61"
    assert info["nc"] == 3 and info["names"] == list(CLASSES)          # the recipe said nc=80: the file wins
    assert info["anchors_px"] == [[list(map(float, p)) for p in lv] for lv in ANCHORS]
    assert info["strides"] == [8, 16, 32] and info["input_size"] == [128, 160]
    assert info["decode"] == "yolov5" and info["head_kind"] == "anchor_based"
    assert res["source"] == "state_dict" and res["checkpoint_overrides"] == ["nc"]
    ckpt = torch.load(path, weights_only=True)
    for k, v in lively_n.state_dict().items():
        assert torch.equal(ckpt["state_dict"][k].float(), v.float()), k
    assert "mmengine" not in sys.modules                               # the fake classes were never needed


def test_published_checkpoint_loads(work, lively_n, tmp_path):
    """publish_model.py's output: meta + state_dict only, legacy serialization, data_preprocessor and
    prior buffers dropped (stray ones are dropped here too)."""
    extra = {"data_preprocessor.mean": torch.zeros(3, 1, 1), "bbox_head.priors_base_sizes": torch.ones(3, 3, 2)}
    ckpt = save_mmengine(lively_n, tmp_path / "published.pth", published=True, extra_sd=extra)
    assert ckpt.read_bytes()[:2] == b"\x80\x02"                          # not a zip: torch's legacy format
    outs, res = load(tmp_path, ckpt, nc=3)
    info = json.loads(outs["model.json"].read_text())
    assert info["names"] == list(CLASSES) and "checkpoint_overrides" not in res


def test_another_family_is_named_with_the_recipes(tmp_path):
    from yolobuild.models.mmyolo.model import build
    from yolobuild.models.yolov5.model import build as build_v5

    v5 = tmp_path / "yolov5s.pt"
    torch.save(build_v5("s", "v6", 3).state_dict(), v5)
    with pytest.raises(UserError) as e:
        load(tmp_path / "a", v5, scale="s", nc=3)
    msg = str(e.value)
    assert "\n" not in msg and "yolov5s (layout v6)" in msg and "mmyolo-yolov5s (layout v61)" in msg

    mm = save_mmengine(build("s", "v61", 3), tmp_path / "mm.pth", cfg=_cfg_text((0.33, 0.5)))
    with pytest.raises(UserError) as e:                                # the other way round: a yolov5 recipe
        run_op("load_model", tmp_path / "b", dict(family="yolov5", scale="s", layout="v6", nc=3, names=None,
                                                  anchors=None, random=False, seed=0, trust_checkpoint=False),
               {"weights": mm}, ["model.pt", "model.json"])
    msg = str(e.value)
    assert "\n" not in msg and "yolov5s (layout v6" in msg and "mmyolo-yolov5s (layout v61), nc=3" in msg

    with pytest.raises(UserError, match=r"mmyolo-yolov5s \(layout v61\).*set model.scale=s"):
        load(tmp_path / "c", mm, scale="n")                            # same family, another scale
    v8 = save_mmengine(build(SCALE, "v61", 3), tmp_path / "v8.pth", cfg=_cfg_text(head="YOLOv8Head"))
    with pytest.raises(UserError, match="builds a YOLOv8Head head, not mmyolo's YOLOv5Head"):
        load(tmp_path / "d", v8)


def test_class_count_mismatch(tmp_path):
    from yolobuild.models.mmyolo.model import build

    model = build(SCALE, "v61", 3)
    bad = save_mmengine(model, tmp_path / "names.pth", classes=("a", "b", "c", "d", "e"))
    with pytest.raises(UserError) as e:
        load(tmp_path / "a", bad)
    assert "\n" not in str(e.value) and "class count mismatch" in str(e.value) and "nc=3" in str(e.value)
    bare = tmp_path / "bare.pth"                                       # no classes in the file: the recipe's nc
    torch.save({"state_dict": model.state_dict()}, bare)
    with pytest.raises(UserError, match=r"class count mismatch: the checkpoint's head has nc=3, the recipe says "
                                        r"nc=80"):
        load(tmp_path / "b", bare)


@pytest.mark.parametrize("fmt", ["runner", "published"])
def test_truncated_file_is_a_user_error(lively_n, tmp_path, fmt):
    full = save_mmengine(lively_n, tmp_path / "full.pth", published=fmt == "published")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt checkpoint") as e:
        load(tmp_path / "a", cut)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", ["truncated", "other_family", "class_count"])
def test_bad_input_exits_2_in_one_line(model_pt, lively_n, work, tmp_path, bad):
    from yolobuild.models.yolov5.model import build as build_v5

    full = work / "yolov5_s-v61_syncbn_fast_8xb16-300e_shapes.pth"
    weights = tmp_path / f"{bad}.pth"
    if bad == "truncated":
        weights.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        expect = "truncated or corrupt"
    elif bad == "other_family":
        torch.save(build_v5("n", "v6", 3).state_dict(), weights)
        expect = "the checkpoint is a yolov5n (layout v6) model but the recipe says mmyolo-yolov5s (layout v61)"
    else:
        torch.save({"state_dict": lively_n.state_dict()}, weights)
        expect = "class count mismatch: the checkpoint's head has nc=3, the recipe says nc=80"
    code, out, err = cli("build", f"recipe=mmyolo-yolov5{SCALE}", f"model.weights={weights}", "input.width=128",
                         "input.height=128", f"workspace.path={tmp_path / 'ws'}", f"cache.dir={tmp_path / 'cache'}")
    assert code == 2, out + err
    assert len(err.strip().splitlines()) == 1 and expect in err and "Traceback" not in err


# --------------------------------------------------------------------------- parity

@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("head", HEADS)
def test_export_parity_every_head(model_pt, work, head, fuse):
    figures = assert_export_parity(work, model_pt[0], head, H, W, fuse=fuse)
    print(f"mmyolo {head} fuse={fuse}: {figures}")


@pytest.mark.parametrize("head", ["raw", "decoded"])
def test_truncate_head_is_exact_and_cuts_the_graph_at_the_convs(model_pt, work, head):
    import onnx

    root = work / "truncated"
    figures = assert_export_parity(root, model_pt[0], head, H, W, patches=["mmyolo_truncate_head"])
    print(f"mmyolo truncated {head}: {figures}")
    assert figures["patch_check"]["boxes"]["cosine"] >= 0.99999
    if head == "raw":            # outputs are produced by the convs_pred Conv nodes themselves (the vacc flow)
        onnx_path = root / "parity_raw_fused" / "export_onnx" / "model.onnx"
        g = onnx.load(str(onnx_path)).graph
        producer = {o: n.op_type for n in g.node for o in n.output}
        assert [producer[o.name] for o in g.output] == ["Conv", "Conv", "Conv"]
        assert not any(n.op_type in ("Slice", "Concat") and "head_module" in n.name for n in g.node)


def test_unpatched_raw_graph_carries_the_split(model_pt, tmp_path):
    import onnx

    p, _ = run_op("patch", tmp_path, dict(head="raw", patches=[], fuse=True, height=H, width=W),
                  {"model": model_pt[0]}, ["patched.pt", "patch_check.json"])
    e, _ = run_op("export_onnx", tmp_path, dict(opset=13, head="raw", batch=1, height=H, width=W),
                  {"model": p["patched.pt"]}, ["model.onnx"])
    g = onnx.load(str(e["model.onnx"])).graph
    producer = {o: n.op_type for n in g.node for o in n.output}
    assert all(producer[o.name] != "Conv" for o in g.output)


def test_truncate_head_fails_loudly_without_an_mmyolo_head():
    from yolobuild.models.yolov5.model import build as build_v5
    from yolobuild.ops.patches import patch_function

    with pytest.raises(UserError, match="mmyolo_truncate_head found no mmyolo YOLOv5HeadModule"):
        patch_function("mmyolo_truncate_head")(build_v5("n", "v6", 3).eval(), torch.zeros(1, 3, 64, 64))


# --------------------------------------------------------------------------- va1 hand-off

def test_va1_handoff_build(tmp_path):
    import onnx
    import yaml

    code, out, err = cli("build", "recipe=mmyolo-yolov5s", "model.weights=random", "target=va1", "precision=fp16",
                         "input.width=128", "input.height=128", "dataset.calib.count=4",
                         "graph.patches=[mmyolo_truncate_head]",
                         f"workspace.path={tmp_path / 'ws'}", f"cache.dir={tmp_path / 'cache'}")
    assert code == 0, out + err
    d = build_dir(tmp_path / "ws", "mmyolo-yolov5s_va1_fp16_128x128")
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "handoff"
    b = d / "handoff"
    cfg = yaml.safe_load((b / "build.yaml").read_text())
    assert cfg["frontend"]["shape"] == {"images": [1, 3, 128, 128]} and cfg["backend"]["dtype"] == "fp16"
    g = onnx.load(str(b / "model.onnx")).graph
    assert [o.name for o in g.output] == ["out8", "out16", "out32"]
    assert [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in g.output] == \
        [[1, 255, 16, 16], [1, 255, 8, 8], [1, 255, 4, 4]]
    producer = {o: n.op_type for n in g.node for o in n.output}
    assert [producer[o.name] for o in g.output] == ["Conv", "Conv", "Conv"]
    plan = json.loads((d / "plan.json").read_text())
    assert next(o for o in plan["ops"] if o["id"] == "patch")["params"]["patches"] == ["mmyolo_truncate_head"]
    checks = [o["results"]["patch_check"] for o in m["ops"] if "patch_check" in (o.get("results") or {})]
    assert checks and all(f["cosine"] >= 0.99999 for f in checks[0].values())
