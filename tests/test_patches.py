"""Named patches that rewrite modules (Focus as a strided conv, SyncBatchNorm as BatchNorm), each proven
by the family parity bar: the patched, exported model detects what the unpatched PyTorch model detects."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from yolobuild.errors import UserError  # noqa: E402

from .family_parity import HEADS, assert_export_parity, demo_images, lively, run_op  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
H = W = 128


@pytest.fixture(scope="module")
def focus_model(tmp_path_factory):
    from yolobuild.models.yolov5.model import build

    work = tmp_path_factory.mktemp("focus")
    torch.manual_seed(0)
    torch.save(lively(build("n", "v5", 3), demo_images(work, 4, H, W)).state_dict(), work / "v5.pt")
    outs, _ = run_op("load_model", work, dict(family="yolov5", scale="n", layout="v5", nc=3, names=None,
                                               anchors=None, random=False, seed=0, trust_checkpoint=False),
                     {"weights": work / "v5.pt"}, ["model.pt", "model.json"])
    return work, outs["model.pt"]


@pytest.mark.parametrize("head", HEADS)
def test_focus_as_conv_is_exact_in_every_head_layout(focus_model, head):
    work, model_pt = focus_model
    figures = assert_export_parity(work, model_pt, head, H, W, patches=["focus_as_conv"], fuse=head != "split")
    assert figures["patch_check"]["boxes"]["cosine"] >= 0.99999


def test_focus_as_conv_leaves_no_slices_in_the_graph(focus_model, tmp_path):
    import onnx

    work, model_pt = focus_model
    p, res = run_op("patch", tmp_path, dict(head="raw", patches=["focus_as_conv"], fuse=True, height=H, width=W),
                    {"model": model_pt}, ["patched.pt", "patch_check.json"])
    e, _ = run_op("export_onnx", tmp_path, dict(opset=13, head="raw", batch=1, height=H, width=W),
                  {"model": p["patched.pt"]}, ["model.onnx"])
    g = onnx.load(str(e["model.onnx"])).graph
    first = next(n for n in g.node if "images" in n.input)
    assert first.op_type == "Conv"
    k = next(a.ints for a in first.attribute if a.name == "kernel_shape")
    s = next(a.ints for a in first.attribute if a.name == "strides")
    assert list(k) == [6, 6] and list(s) == [2, 2]
    assert not any(n.op_type == "Slice" for n in g.node)


def test_patch_whose_module_is_absent_fails_loudly(tmp_path):
    from yolobuild.models.yolov5.model import build
    from yolobuild.ops.patches import patch_function

    v6 = build("n", "v6", 3).eval()
    with pytest.raises(UserError, match="focus_as_conv found no Focus"):
        patch_function("focus_as_conv")(v6, None)
    with pytest.raises(UserError, match="syncbn_to_bn found no SyncBatchNorm"):
        patch_function("syncbn_to_bn")(v6, None)


def test_syncbn_to_bn_keeps_outputs(tmp_path):
    from yolobuild.models.yolov5.model import build
    from yolobuild.ops.patches import patch_function

    torch.manual_seed(0)
    model = lively(build("n", "v6", 3), demo_images(tmp_path, 2, 64, 64))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()
    n_sync = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in sync.modules())
    figures = patch_function("syncbn_to_bn")(sync, None)
    assert figures["replaced"] == n_sync > 0
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in sync.modules())
    with torch.no_grad():
        torch.testing.assert_close(sync(x), ref, rtol=1e-5, atol=1e-5)
