"""Sophgo BM1684 with the legacy tpu-nntc SDK (not on PyPI): hand-off bundle (seed 000).

Picked with `backend.toolchain=tpu-nntc` (bm1684's default is tpu-mlir). Bundle: the TorchScript
trace tpu-nntc wants (three raw head convs, seed 000), the bmnetp FP32 command, the ufw.cali +
bmnetu INT8 steps (VENDOR_FORMATS.md), the calibration images with the exact preprocessing string,
run.sh, README.md.
"""
from __future__ import annotations


from . import handoff as ho
from .handoff import Bundle, Option, is_int, is_text

OPTIONS = {
    "opt": Option(1, allowed=(0, 1, 2)),
    "dyn": Option(False, allowed=(False, True)),
    "cmp": Option(True, allowed=(True, False)),
    "enable_profile": Option(True, allowed=(True, False)),
    "cali_iterations": Option(None, check=is_int(1, none_ok=True),
                              means="null (one per calibration image) or an integer >= 1"),
    "docker": Option("sophgo/tpuc_dev with tpu-nntc 3.1.x (source envsetup.sh)", check=is_text,
                     means="a docker image name"),
    **ho.COMMON_OPTIONS,
}

SDK = "Sophgo tpu-nntc 3.x (bmnetp, ufw, bmnetu) for BM1684, torch 1.8 TorchScript"


def _flag(v: bool) -> str:
    return "True" if v else "False"


def render(b: Bundle) -> None:
    o, p = b.options, b.params
    if str(p["platform"]).lower() != "bm1684":
        raise ho.UserError(f"backend.toolchain: tpu-nntc builds for bm1684 only, not {p['platform']!r}")
    if b.precision not in ("fp32", "int8"):
        raise ho.UserError(f"precision: {b.precision!r} is not supported by tpu-nntc on BM1684; allowed: fp32, int8")
    if "torchscript" not in b.inputs:
        raise ho.ToolchainError("handoff: tpu-nntc needs the TorchScript export; the plan has none")
    b.copy("model.torchscript.pt", b.inputs["torchscript"])
    net = b.name
    shapes = f"[[{b.batch},3,{b.height},{b.width}]]"
    target = "BM1684"
    if b.precision == "fp32":
        b.steps.append(
            f'"$PYTHON" -m bmnetp --model=model.torchscript.pt --target={target} --shapes={shapes} --net_name={net} '
            f'--opt={o["opt"]} --dyn={_flag(o["dyn"])} --cmp={_flag(o["cmp"])} '
            f'--enable_profile={_flag(o["enable_profile"])}')
        b.expects.append("compilation/compilation.bmodel")
    else:
        if not b.calib_files:
            raise ho.UserError("dataset.calib.path: int8 needs a calibration set")
        iterations = o["cali_iterations"] or len(b.calib_files)
        pre = f"resize_h={b.height},resize_w={b.width};scale={b.scale:.9f},bgr2rgb=True"
        b.text("calib/cali_image_preprocess.txt", pre)
        b.steps += [
            f"\"$PYTHON\" -m ufw.cali.cali_model --net_name {net} --model model.torchscript.pt "
            f"--cali_image_path calib/images --cali_iterations {iterations} --cali_image_preprocess='{pre}' "
            f"--input_shapes {shapes} --target {target}",
            f"bmnetu --model={net}.prototxt --weight={net}.int8umodel --shapes={shapes} --target={target} "
            f"--opt={o['opt']}",
        ]
        b.expects.append("compilation/compilation.bmodel")
    b.readme += [
        "## tpu-nntc notes", "",
        "- `model.torchscript.pt`: traced on the host, `Detect.forward` returning the three raw head convs "
        "(what bmnetp compiles cleanly); tpu-nntc reads TorchScript, not ONNX.",
        (f"- FP32: `bmnetp` with --opt={o['opt']} --dyn={_flag(o['dyn'])} --cmp={_flag(o['cmp'])}." if b.precision == "fp32"
         else f"- INT8: `ufw.cali.cali_model` over `calib/images/` (images are letterboxed {b.height}x{b.width} already, so "
              f"resize is an identity; cv2 reads BGR, hence bgr2rgb=True; x * {b.scale:.9f}), then `bmnetu` on the "
              f"int8 umodel. The preprocessing string is also in `calib/cali_image_preprocess.txt`."),
        "- On the board: `bmrt_test --bmodel compilation/compilation.bmodel`.", ""]


def detect(options: dict) -> str:
    configured = ho.configured_python(options, "bmnetp")
    if configured:
        return configured
    if ho.which("bmnetu") and ho.module_present("bmnetp"):
        return "bmnetp importable, bmnetu on PATH"
    return "absent"


VENDOR = ho.Vendor(toolchain="tpu-nntc", title="Sophgo tpu-nntc", sdk=SDK, options=OPTIONS, render=render,
                   detect=detect)


def handoff(ctx) -> None:
    """The handoff op (engine.dispatch calls the function named like the op kind)."""
    ho.run(ctx, VENDOR)
