"""VastAI VA1 (vamc / vamp): hand-off bundle. The compiler runs only in VastAI's docker.

Bundle: model.onnx (the head cut at the per-level convs, as seed 003 does for mmyolo), build.yaml
for `vamc compile` (vamc 3; `backend.options.vamc_version: 2` writes the older `vamc build`
layout), vdsp_params.json for vamp / vaststreamx, benchmark.sh with the vamp benchmark and
accuracy commands, the calibration set (int8), run.sh, README.md.
"""
from __future__ import annotations

from . import handoff as ho
from .handoff import Bundle, Option, is_int, is_number, is_text

OPTIONS = {
    "vamc_version": Option(3, allowed=(3, 2), doc="3: vamc compile (sections frontend/graph/dataset/backend/"
                                                   "workspace); 2: vamc build (model/engine/dataset/workspace)"),
    "backend_type": Option("tvm_vacc", allowed=("tvm_vacc",), doc="runstream"),
    "data_transport_mode": Option(3, check=is_int(0, 3), means="an integer 0..3"),
    "cluster_mode": Option(0, check=is_int(0, 2), means="an integer 0..2"),
    "calibrate_mode": Option("max", check=is_text, means="a vamc calibrate_mode name, e.g. max"),
    "quantize_per_channel": Option(True, allowed=(True, False)),
    "calib_count": Option(None, check=is_int(1, none_ok=True),
                          means="null (every calibration image) or an integer >= 1"),
    "extra_ops": Option(False, allowed=(False, True),
                        doc="let the compiler append the YOLOv5 decode + NMS (graph.extra_ops yolov5_nms)"),
    "nms_threshold": Option(0.65, check=is_number(0, 1), means="a number 0..1"),
    "confidence_threshold": Option(0.001, check=is_number(0, 1), means="a number 0..1"),
    "device": Option(0, check=is_int(0), means="an integer >= 0 (vamp -d)"),
    "docker": Option("VastAI's vamc 3 docker (vamc v3.0+, vamp v2.4+, vaststreamx v2.8+)", check=is_text,
                     means="a docker image name"),
    **ho.COMMON_OPTIONS,
}

SDK = "vamc v3.0+ (or v2 with backend.options.vamc_version=2), vamp v2.4+, vaststreamx v2.8+"


def _anchor_numbers(meta: dict) -> list[float]:
    flat = [float(v) for level in meta["anchors_px"] for pair in level for v in pair]
    return [int(v) if float(v).is_integer() else v for v in flat]


def _extra_ops(b: Bundle) -> dict:
    return {"type": "yolov5_nms",
            "params": {"num_classes": int(b.meta["nc"]), "nms_threshold": b.options["nms_threshold"],
                       "confidence_threshold": b.options["confidence_threshold"],
                       "anchor": _anchor_numbers(b.meta), "strides": [int(s) for s in b.meta["strides"]]}}


def _process_ops(b: Bundle) -> list[dict]:
    """The calibration images are already letterboxed to HxW in RGB: resize and pad are identities.

    A square input keeps seed 003's list (Resize long side, Pad to square: identities here); a
    non-square one drops them, since vamc's pad_to_square would change the canvas.
    """
    ops: list[dict] = [{"type": "DecodeImage"}]
    if b.height == b.width:
        ops += [{"type": "Resize", "size": [b.height, -1], "adaptive_side": "long"},
                {"type": "Pad", "pad_to_square": True}]
    ops += [{"type": "Normalize", "div255": True, "norm_type": None}, {"type": "ToTensor"}]
    return ops


def _calib_count(b: Bundle) -> int:
    n = len(b.calib_files)
    return min(n, b.options["calib_count"]) if b.options["calib_count"] else n


def build_yaml_v3(b: Bundle) -> dict:
    int8 = b.precision == "int8"
    cfg: dict = {
        "name": b.name,
        "frontend": {"type": "onnx", "checkpoint": "model.onnx",
                     "shape": {"images": [b.batch, 3, b.height, b.width]}, "dtype": "fp32"},
    }
    if b.options["extra_ops"]:
        cfg["graph"] = {"extra_ops": _extra_ops(b)}
    if int8:
        cfg["dataset"] = {"type": "tvm", "path": "calib/images/",
                          "sampler": {"suffix": "png", "get_data_num": _calib_count(b)},
                          "process_ops": _process_ops(b)}
    backend: dict = {"type": b.options["backend_type"], "dtype": b.precision,
                     "compile": {"data_transport_mode": b.options["data_transport_mode"],
                                 "cluster_mode": b.options["cluster_mode"]}}
    if int8:
        backend["quantize"] = {"calibrate_mode": b.options["calibrate_mode"],
                               "quantize_per_channel": b.options["quantize_per_channel"]}
    cfg["backend"] = backend
    cfg["workspace"] = {"path": "./deploy_weights/"}
    return cfg


def build_yaml_v2(b: Bundle) -> dict:
    int8 = b.precision == "int8"
    engine: dict = {"type": "vacc", "dtype": b.precision, "common": {"do_quantization": int8}}
    if b.options["extra_ops"]:
        engine["add_extra_ops_to_graph"] = _extra_ops(b)
    if int8:
        engine["calibration"] = {"quant_mode": b.options["calibrate_mode"],
                                 "per_channel": b.options["quantize_per_channel"]}
    cfg: dict = {"model": {"name": b.name, "inputs": {"images": [b.batch, 3, b.height, b.width]},
                           "checkpoint": "model.onnx"},
                 "engine": engine}
    if int8:
        cfg["dataset"] = {"path": "calib/images/", "sampler": {"suffix": "png", "get_data_num": _calib_count(b)},
                          "transform_ops": _process_ops(b)}
    cfg["workspace"] = {"work_dir": "./deploy_weights/", "enable_ir": False, "save_log": True}
    return cfg


def vdsp_params(b: Bundle) -> dict:
    # images arrive as the camera / decoder gives them (BGR888); the VDSP letterboxes to the input
    # size, converts to RGB and divides by 255 (dataset.preprocess: letterbox, rgb, scale 1/255)
    return {"OpType": "FUSION_OP_RGB_LETTERBOX_CVTCOLOR_NORM_TENSOR",
            "OpConfig": {"IimageFormat": "BGR888", "NormaType": "DIV255", "ColorCvtCode": "BGR2RGB",
                         "ResizeType": "BILINEAR"}}


def render(b: Bundle) -> None:
    if abs(b.scale - 1 / 255.0) > 1e-9:
        raise ho.UserError(f"dataset.preprocess.scale: {b.scale!r} is not supported by vamc's Normalize "
                                "(div255); allowed: 0.00392156862745098 (1/255)")
    if b.params.get("head") != "raw":
        raise ho.UserError(f"graph.head: {b.params.get('head')!r} does not suit vamc (no YOLO decode on "
                                "vacc); allowed: raw")
    b.copy("model.onnx", b.inputs["model"])
    v3 = b.options["vamc_version"] == 3
    b.yaml("build.yaml", build_yaml_v3(b) if v3 else build_yaml_v2(b),
           header=f"# vamc {'3: vamc compile' if v3 else '2: vamc build'} build.yaml, generated by yolobuild")
    b.json("vdsp_params.json", vdsp_params(b))
    mod = f"deploy_weights/{b.name}/mod"
    dev = b.options["device"]
    bench = [
        "#!/usr/bin/env bash",
        "# vamp on a VA1 card: throughput/latency, then raw outputs for the accuracy check. Generated by yolobuild.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f"vamp -m {mod} --vdsp_params vdsp_params.json -i 1 p 1 -b {b.batch} -d {dev}",
        'if [ -f "${DATALIST:-npz_datalist.txt}" ]; then',
        f'  vamp -m {mod} --vdsp_params vdsp_params.json -i 1 p 1 -b {b.batch} -d {dev} '
        '--datalist "${DATALIST:-npz_datalist.txt}" --path_output npz_output',
        "fi",
    ]
    b.text("benchmark.sh", "\n".join(bench), executable=True)
    b.steps += [f"vamc {'compile' if v3 else 'build'} build.yaml"]
    b.expects += [f"deploy_weights/{b.name}"]
    head = ("decode + NMS appended by vamc (graph.extra_ops yolov5_nms)" if b.options["extra_ops"] else
            "three raw head convs (out8, out16, out32): decode on the host with the anchors in deploy terms "
            "(labels.txt, bundle.json)")
    b.readme += [
        "## VastAI notes", "",
        f"- `build.yaml` is for `vamc {'compile' if v3 else 'build'}`; the model is `model.onnx`, cut at the head "
        f"convs (for mmyolo, `YOLOv5HeadModule` returns its raw convs_pred maps). Outputs: {head}.",
        "- `vdsp_params.json` is the VDSP preprocessing for vamp / vaststreamx (BGR888 in, letterbox, RGB, /255).",
        "- On a VA1 card: `bash benchmark.sh` (vamp throughput and latency; with `DATALIST=npz_datalist.txt` "
        "it also writes raw outputs to `npz_output/` for the accuracy check).", ""]


def detect(options: dict) -> str:
    path = ho.which("vamc")
    return f"vamc on PATH ({path.rsplit('/', 1)[-1]})" if path else "absent"


VENDOR = ho.Vendor(
    toolchain="vamc", title="VastAI vamc", sdk=SDK, options=OPTIONS, render=render,
    schemas={"build.yaml": "vamc3_build.schema.json", "vdsp_params.json": "vamp_vdsp_params.schema.json"},
    detect=detect)


def _vendor_for(params: dict) -> ho.Vendor:
    if (params.get("options") or {}).get("vamc_version") != 2:
        return VENDOR
    return ho.Vendor(toolchain=VENDOR.toolchain, title=VENDOR.title, sdk=VENDOR.sdk, options=OPTIONS,
                     render=render, detect=detect,
                     schemas={"build.yaml": "vamc2_build.schema.json",
                              "vdsp_params.json": "vamp_vdsp_params.schema.json"})


def handoff(ctx) -> None:
    """The handoff op (engine.dispatch calls the function named like the op kind)."""
    ho.run(ctx, _vendor_for(ctx.params))
