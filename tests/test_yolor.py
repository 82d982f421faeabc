"""YOLOR (paper branch: yolor-p6 / yolor-w6, ImplicitA / ImplicitM, IDetect), no upstream code installed.

Upstream's train.py checkpoints are written here the way it writes them: a full pickle
{'epoch', 'best_fitness', 'training_results', 'model', 'optimizer', 'wandb_id'} whose model's classes
are `models.yolo.Model`, `models.yolo.IDetect`, `models.common.{Conv, BottleneckCSPF, ImplicitA, ...}`
and `torch.nn.SyncBatchNorm` (--sync-bn). The classes are stand-ins made in a temporary module
namespace named like upstream's, gone from sys.modules before yolobuild reads the file.
"""
from __future__ import annotations

import contextlib
import copy
import json
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

from yolobuild.errors import CheckFailed, UserError  # noqa: E402

from .conftest import run_cli  # noqa: E402
from .family_parity import assert_export_parity, demo_images, lively, run_op  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
H = W = 128          # a multiple of yolor's max stride 64: P6 is 2x2 here
NC = 3

UPSTREAM_CLASSES = {
    "models.yolo": ("Model", "IDetect"),
    "models.common": ("Conv", "Bottleneck", "BottleneckCSPF", "BottleneckCSP2", "SPPCSP", "ReOrg", "Concat",
                      "ImplicitA", "ImplicitM"),
}


def params(**kw):
    p = dict(family="yolor", scale=None, layout="p6", nc=NC, names=None, anchors=None, random=False, seed=0,
             trust_checkpoint=False)
    p.update(kw)
    return p


def load(work, weights, **kw):
    return run_op("load_model", work, params(**kw), {"weights": weights}, ["model.pt", "model.json"])


@contextlib.contextmanager
def fake_modules(classes: dict[str, tuple[str, ...]]):
    """Module objects named like upstream's, holding empty nn.Module classes of upstream's names; removed
    from sys.modules on exit (and `import models.yolo` must then fail)."""
    made = {}
    for modname, names in classes.items():
        mod = types.ModuleType(modname)
        for n in names:
            setattr(mod, n, type(n, (nn.Module,), {"__module__": modname}))
        made[modname] = mod
    for modname in list(made):
        parent = modname.rsplit(".", 1)[0]
        if "." in modname and parent not in made:
            made[parent] = types.ModuleType(parent)
    saved = {k: sys.modules.get(k) for k in made}
    sys.modules.update(made)
    try:
        yield made
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def upstream_checkpoint(model: nn.Module, path, syncbn: bool = True, tweak=None) -> None:
    """Save `model` (yolobuild's yolor) as upstream YOLOR's train.py saves its EMA model: upstream class
    names, upstream's extra attributes (yaml, names, stride, hyp, gr; IDetect grid / anchor_grid / export)
    and, with `syncbn`, every BatchNorm2d as torch.nn.SyncBatchNorm (train.py --sync-bn)."""
    from yolobuild.models.yolor.layers import YOLOR_LAYOUTS, YOLOR_ANCHORS

    with fake_modules(UPSTREAM_CLASSES) as mods:
        up = copy.deepcopy(model).float().eval()
        for m in up.modules():
            if type(m).__module__ in ("yolobuild.models.yolor.model", "yolobuild.models.yolov5.model"):   # Conv & co. are shared
                m.__class__ = getattr(mods["models.yolo" if type(m).__name__ in ("Model", "IDetect")
                                           else "models.common"], type(m).__name__)
        head = up.model[-1]
        del head.layout
        head.export = False
        head.grid = [torch.zeros(1)] * head.nl
        head.register_buffer("anchor_grid", (head.anchors * head.stride.view(-1, 1, 1)).view(head.nl, 1, -1, 1, 1, 2))
        table = YOLOR_LAYOUTS[model.yaml["layout"]]
        up.yaml = {"nc": 80, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": YOLOR_ANCHORS,
                   "backbone": [list(r) for r in table[:12]], "head": [list(r) for r in table[12:]]}
        up.yaml["nc"] = head.nc                     # Model(cfg, nc=nc) overrides the yaml's nc
        up.names = ["circle", "square", "triangle"] if head.nc == 3 else [f"class{i}" for i in range(head.nc)]
        up.hyp, up.gr, up.nc = {"lr0": 0.01, "anchor_t": 4.0}, 1.0, head.nc
        if syncbn:
            up = nn.SyncBatchNorm.convert_sync_batchnorm(up)
        if tweak:
            tweak(up)
        for p in up.parameters():
            p.requires_grad_(False)
        torch.save({"epoch": -1, "best_fitness": np.zeros(1), "training_results": None, "model": up,
                    "optimizer": None, "wandb_id": None}, path)
    with pytest.raises(ImportError):
        __import__("models.yolo")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("yolor")


def conditioned(work, layout: str = "p6") -> nn.Module:
    """A yolor network with input-sensitive random weights and a few confident cells per image.

    A random 200-BatchNorm SiLU network is chaotic (it amplifies float32 rounding 1e4-fold, so no two
    runtimes agree) or, for other draws, maps every image to the same output. Mean-field theory: with
    unit-variance pre-activations of mean mu, a SiLU layer stretches perturbations by
    chi = E[silu'(h)^2] / Var[silu(h)]: 1.21 at mu=0, 1.03 at mu=1.5. So every BatchNorm's bias is set
    to 1.5 (near the edge of chaos) before lively() measures the statistics on 8 demo images (enough
    samples at P6, 2x2 here). Checked below, so the parity tests never pass on a degenerate network."""
    from yolobuild.models.yolor.model import build
    from yolobuild.ops.building import example_input
    from yolobuild.ops.patches import fuse

    torch.manual_seed(0)
    model = build(None, layout, NC)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.bias.fill_(1.5)
    images = demo_images(work, 8, H, W)
    model = lively(model, images)
    model.detect.layout = "raw"
    try:
        probe = example_input({"height": H, "width": W})
        with torch.no_grad():
            pair = model(torch.from_numpy(images[:2]))
            fused = copy.deepcopy(model)
            fuse(fused)
            drift = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(model(probe), fused(probe)))
    finally:
        model.detect.layout = "decoded"
    sensitivity = min(float((t[0] - t[1]).abs().mean() / t.abs().mean()) for t in pair)
    assert sensitivity > 0.1, f"the test network barely looks at the image ({sensitivity:.3g})"
    assert drift < 1e-5, f"the test network amplifies rounding on the probe input ({drift:.3g})"
    return model


@pytest.fixture(scope="module")
def net(work):
    return conditioned(work, "p6")


@pytest.fixture(scope="module")
def sd_model(work, net):
    torch.save(net.state_dict(), work / "yolor-p6-sd.pt")
    outs, res = load(work / "sd", work / "yolor-p6-sd.pt")
    return outs["model.pt"], res


@pytest.fixture(scope="module")
def sync_pickle(work, net):
    path = work / "yolor-p6-syncbn.pt"
    upstream_checkpoint(net, path)
    return path


@pytest.fixture(scope="module")
def sync_model(work, sync_pickle):
    """Loaded with no `models` package anywhere (other test modules may leave fakes of their own in sys.modules)."""
    import importlib.util

    def drop_models() -> dict:
        return {k: sys.modules.pop(k) for k in list(sys.modules) if k == "models" or k.startswith("models.")}

    others = drop_models()
    try:
        try:   # onnxruntime puts its transformers folder (a namespace `models`) on sys.path: no yolo there
            assert importlib.util.find_spec("models.yolo") is None
        except ModuleNotFoundError:
            pass
        drop_models()
        outs, res = load(work / "sync", sync_pickle, nc=80)      # the recipe's 80: the checkpoint's nc=3 wins
    finally:
        drop_models()
        sys.modules.update(others)
    return outs, res


# --------------------------------------------------------------------------- the network

def test_upstream_key_layout_and_sizes():
    """Keys and shapes read off upstream's yolor-p6.yaml / yolor-w6.yaml (ReOrg -> 12 channels, SPPCSP's
    hidden width 2*c2*0.5, IDetect's ia over the four output convs, im over na*(nc+5))."""
    from yolobuild.models.yolor.model import build

    p6 = build(None, "p6", 80).state_dict()
    want = {"model.1.conv.weight": (64, 12, 3, 3), "model.3.cv2.weight": (64, 128, 1, 1),
            "model.5.m.6.cv2.conv.weight": (128, 128, 3, 3), "model.12.cv1.conv.weight": (320, 640, 1, 1),
            "model.12.cv5.conv.weight": (320, 1280, 1, 1), "model.12.bn.running_var": (640,),
            "model.17.cv2.weight": (256, 256, 1, 1), "model.40.conv.weight": (640, 320, 3, 3),
            "model.41.m.0.weight": (255, 256, 1, 1), "model.41.m.3.weight": (255, 640, 1, 1),
            "model.41.ia.1.implicit": (1, 384, 1, 1), "model.41.im.2.implicit": (1, 255, 1, 1),
            "model.41.anchors": (4, 3, 2)}
    assert {k: tuple(p6[k].shape) for k in want} == want
    assert "model.3.cv3.weight" not in p6                      # BottleneckCSPF has no cv3
    def n_params(sd):
        return sum(v.numel() for k, v in sd.items() if v.is_floating_point() and "running" not in k
                   and not k.endswith("anchors"))

    assert 37.2e6 <= n_params(p6) < 37.3e6                     # YOLOR-P6 is quoted at 37.2M parameters
    w6 = build(None, "w6", 80).state_dict()
    assert 79.8e6 <= n_params(w6) < 79.9e6                     # YOLOR-W6 at 79.8M
    assert tuple(w6["model.41.ia.3.implicit"].shape) == (1, 1024, 1, 1)
    assert tuple(w6["model.12.cv1.conv.weight"].shape) == (512, 1024, 1, 1)


def test_raw_outputs_follow_the_strides(net):
    from yolobuild.models.registry import families

    d = net.detect
    d.layout = "raw"
    try:
        with torch.no_grad():
            outs = net(torch.zeros(1, 3, H, W))
    finally:
        d.layout = "decoded"
    spec = families()["yolor"].layouts["p6"]
    assert [H // o.shape[-2] for o in outs] == spec["strides"] == [8, 16, 32, 64]
    assert torch.allclose(d.anchors * d.stride.view(-1, 1, 1), torch.tensor(spec["anchors"]).float().view(4, 3, 2))


def test_implicit_layers_are_applied_and_fold_exactly(net):
    from yolobuild.models.yolor.model import fuse_implicit

    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(5))
    m = copy.deepcopy(net).eval()
    with torch.no_grad():
        ref = m(x)
        for name in ("ia", "im"):
            probe = copy.deepcopy(m)
            for layer in getattr(probe.detect, name):
                layer.implicit.add_(0.25)
            assert (probe(x) - ref).abs().max() > 1e-2, f"{name} does not reach the output"
    figures = fuse_implicit(m)
    assert figures == {"folded_levels": 4}
    assert not any(type(x).__name__.startswith("Implicit") for x in m.modules())
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-3, atol=1e-3)   # float32 reassociation in the wh power
    with pytest.raises(UserError, match="fuse_implicit found no ImplicitA / ImplicitM left"):
        fuse_implicit(m)
    from yolobuild.models.yolov5.model import build as build_v5
    with pytest.raises(UserError, match="fuse_implicit found no YOLOR IDetect"):
        fuse_implicit(build_v5("n", "v6", NC).eval())


def test_idetect_export_verifies_and_catches_upstream_decode(net):
    """The upstream IDetect export bugs, written into a copy of the head, are what the idetect_export patch refuses."""
    from yolobuild.models.yolor.model import verify_idetect_export

    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(6))
    m = copy.deepcopy(net).eval()
    for layout in ("raw", "split", "decoded"):
        m.detect.layout = layout
        figures = verify_idetect_export(m, x)
        assert figures["head0"]["layout"] == layout
    d = m.detect

    def inplace_decode(self, feats):       # upstream's decode: y[..., 0:2] = ... written into a slice
        out = []
        for i in range(self.nl):
            t = self._to_5d(self.im[i](self.m[i](self.ia[i](feats[i])))).sigmoid()
            grid, anchor_grid = self._make_grid(t.shape[3], t.shape[2], i, t.dtype, t.device)
            t[..., 0:2] = (t[..., 0:2] * 2 + grid) * float(self.stride[i])
            t[..., 2:4] = (t[..., 2:4] * 2) ** 2 * anchor_grid
            out.append(t.view(t.shape[0], -1, self.no))
        return torch.cat(out, 1)

    def export_flag(self, feats):          # upstream's `self.training |= self.export`
        self.training |= True
        return [self._to_5d(self.im[i](self.m[i](self.ia[i](feats[i])))) for i in range(self.nl)]

    d.layout = "decoded"
    d.forward = types.MethodType(inplace_decode, d)
    with pytest.raises(CheckFailed, match="in place"):
        verify_idetect_export(m, x)
    d.forward = types.MethodType(export_flag, d)
    with pytest.raises(CheckFailed, match="training mode"):
        verify_idetect_export(m, x)
    from yolobuild.models.yolov5.model import build as build_v5
    with pytest.raises(UserError, match="idetect_export found no YOLOR IDetect"):
        verify_idetect_export(build_v5("n", "v6", NC).eval(), x)


# --------------------------------------------------------------------------- export parity (the bar)

def test_family_patches_reach_the_plan():
    from yolobuild.plan.lower import effective_patches

    cfg = {"model": {"family": "yolor"}, "graph": {"patches": ["fuse_implicit"]}}
    assert effective_patches(cfg) == ["idetect_export", "fuse_implicit"]


@pytest.mark.parametrize("head,patches,fuse", [("raw", ["idetect_export", "fuse_implicit"], True),
                                               ("split", ["idetect_export"], False)])
def test_export_parity_state_dict(work, sd_model, head, patches, fuse):
    model_pt, res = sd_model
    assert res["source"] == "state_dict"
    figures = assert_export_parity(work, model_pt, head, H, W, patches=patches, fuse=fuse)
    print(head, figures)
    applied = json.loads((work / f"parity_{head}_{'fused' if fuse else 'unfused'}" / "patch" /
                          "patch_check.json").read_text())["applied"]
    assert applied["idetect_export"]["head0"]["layout"] == head
    if "fuse_implicit" in patches:
        assert applied["fuse_implicit"] == {"folded_levels": 4}


def test_w6_export_parity(work):
    """yolor-w6 (79.9M parameters): its own state_dict through load_model, raw head, fused, implicit folded."""
    net_w6 = conditioned(work, "w6")
    torch.save(net_w6.state_dict(), work / "yolor-w6-sd.pt")
    del net_w6
    outs, res = load(work / "w6", work / "yolor-w6-sd.pt", layout="w6")
    assert res["layout"] == "w6" and res["parameters"] > 79e6
    figures = assert_export_parity(work / "w6", outs["model.pt"], "raw", H, W,
                                   patches=["idetect_export", "fuse_implicit"], fuse=True)
    print("w6 raw", figures)


def test_raw_export_with_fuse_implicit_ends_in_convs(work, sd_model):
    import onnx

    onnx_path = work / "parity_raw_fused" / "export_onnx" / "model.onnx"
    if not onnx_path.exists():
        pytest.skip("runs after test_export_parity_state_dict[raw]")
    g = onnx.load(str(onnx_path)).graph
    producer = {o: n for n in g.node for o in n.output}
    assert [o.name for o in g.output] == ["out8", "out16", "out32", "out64"]
    assert [producer[o.name].op_type for o in g.output] == ["Conv"] * 4      # ImplicitA / M folded away


def test_syncbn_pickle_loads_without_upstream_and_exports(work, net, sync_pickle, sync_model):
    """Upstream's --sync-bn checkpoint: read with no upstream code, rebuilt with SyncBatchNorm where the file
    had it, converted by syncbn_to_bn (added by the patch op), fused, exported; decoded head parity."""
    from yolobuild.ops.building import load_checkpoint

    # sync_model read the file while no `models` package was in sys.modules or importable
    outs, res = sync_model
    assert res["source"] == "upstream:models.yolo.Model" and res["checkpoint_overrides"] == ["nc"]
    meta = json.loads(outs["model.json"].read_text())
    assert meta["family"] == "yolor" and meta["layout"] == "p6" and meta["nc"] == NC
    assert meta["names"] == ["circle", "square", "triangle"] and meta["strides"] == [8, 16, 32, 64]
    assert meta["anchors_px"][3] == [[436.0, 615.0], [739.0, 380.0], [925.0, 792.0]]
    ckpt, model = load_checkpoint(outs["model.pt"])
    assert ckpt["syncbn"] == "all"
    n_sync = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert n_sync == sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) > 100
    x = torch.from_numpy(demo_images(work, 2, H, W))
    with torch.no_grad():                      # the file reproduces the network it was written from
        torch.testing.assert_close(model(x), net.eval()(x), rtol=1e-5, atol=1e-4)
    figures = assert_export_parity(work / "sync", outs["model.pt"], "decoded", H, W, patches=["idetect_export"],
                                   fuse=True)
    print("decoded (syncbn pickle)", figures)
    check = json.loads((work / "sync" / "parity_decoded_fused" / "patch" / "patch_check.json").read_text())
    assert check["patches"] == ["syncbn_to_bn", "idetect_export"]
    assert check["applied"]["syncbn_to_bn"] == {"replaced": n_sync}
    assert check["applied"]["fused"] > 100 and check["applied"]["idetect_export"]["head0"]["layout"] == "decoded"


def test_inspect_syncbn_pickle(sync_pickle):
    r = run_cli("inspect", f"model.weights={sync_pickle}")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "family:      yolor" in out and "layout:      p6" in out and "nc:          3" in out
    assert "syncbn:      all" in out and "strides:     [8, 16, 32, 64]" in out


# --------------------------------------------------------------------------- bad input: one line each

def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_unknown_class_in_pickle_is_refused(work):
    with fake_modules({"models.yolo": ("Model",), "mylab.layers": ("FancyAct",)}) as mods:
        m = mods["models.yolo"].Model()
        m.act = mods["mylab.layers"].FancyAct()
        torch.save({"epoch": -1, "model": m, "optimizer": None}, work / "unknown.pt")
    with pytest.raises(UserError) as err:
        load(work / "unknown", work / "unknown.pt")
    msg = _one_line(err)
    assert "refused a full pickle referencing mylab.layers.FancyAct" in msg and "trust_checkpoint" in msg


def test_truncated_checkpoint(work, sync_pickle):
    data = sync_pickle.read_bytes()
    (work / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="truncated or corrupt") as err:
        load(work / "cut", work / "cut.pt")
    _one_line(err)


def test_class_count_mismatch(work, net, sd_model):
    with pytest.raises(UserError, match=r"class count mismatch: the checkpoint's head has nc=3, the recipe says "
                                        r"nc=80") as err:
        load(work / "nc80", work / "yolor-p6-sd.pt", nc=80)
    _one_line(err)

    def wrong_nc(up):                         # a full pickle whose IDetect.nc disagrees with its own convs
        up.model[-1].nc = 5

    upstream_checkpoint(net, work / "bad-nc.pt", syncbn=False, tweak=wrong_nc)
    with pytest.raises(UserError, match=r"class count mismatch inside the checkpoint: its IDetect says nc=5 "
                                        r"\(3 anchors -> 30 output channels\) but its output conv has 24") as err:
        load(work / "bad-nc", work / "bad-nc.pt")
    _one_line(err)


@pytest.fixture(scope="module")
def v5n(work):
    from yolobuild.models.yolov5.model import build as build_v5

    torch.manual_seed(0)
    torch.save(build_v5("n", "v6", NC).state_dict(), work / "v5n.pt")
    return work / "v5n.pt"


def test_family_mismatch_names_both(work, v5n, sync_pickle, sd_model):
    with pytest.raises(UserError, match=r"the checkpoint is a yolov5n \(layout v6\) model but the recipe says "
                                        r"yolor \(layout p6\); pick a yolov5 recipe") as err:
        load(work / "v5_to_yolor", v5n)
    _one_line(err)
    v5 = dict(family="yolov5", scale="n", layout="v6")
    for weights in (sync_pickle, work / "yolor-p6-sd.pt", sd_model[0]):    # full pickle, state_dict, model.pt
        with pytest.raises(UserError, match=r"yolor \(layout p6\).*yolov5n \(layout v6|yolov5n \(layout v6"
                                            r".*yolor \(layout p6\)") as err:
            load(work / f"yolor_to_v5_{weights.stem}", weights, **v5)
        _one_line(err)
    with pytest.raises(UserError, match=r"the checkpoint is yolor \(layout p6\) but the recipe says yolor "
                                        r"\(layout w6\); set model.layout=p6"):
        load(work / "p6_to_w6", work / "yolor-p6-sd.pt", layout="w6")


def test_cli_family_mismatch_exits_2_with_one_line(v5n, tmp_path):
    r = run_cli("build", "recipe=yolor-p6", "target=onnxruntime", f"model.weights={v5n}",
                "model.nc=3", "input.width=128", "input.height=128", f"workspace.path={tmp_path / 'ws'}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert "yolov5n" in r.stderr and "yolor" in r.stderr


def test_validate_does_not_import_torch():
    r = run_cli("validate", "recipe=yolor-p6", "model.weights=random", "target=onnxruntime",
                env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert r.returncode == 0 and "recipe yolor-p6" in r.stdout and "1280x1280" in r.stdout, r.stdout + r.stderr
    assert not [line for line in r.stderr.splitlines() if line.rstrip().endswith(" torch")]
    r = run_cli("validate", "recipe=yolor-w6", "model.weights=random", "model.max_stride=32")
    assert r.returncode == 2 and "model.max_stride" in r.stderr
