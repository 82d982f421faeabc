"""Cambricon MLU220 / MLU270 (torch_mlu 1.x + genoff): hand-off bundle (seeds 001 and 004).

Bundle: model.pth (weights-only state_dict, no conv+BN fuse, legacy serialization that PyTorch 1.3
reads), <family>_mlu.py (the model definition the scripts import, PyTorch 1.3 compatible; one
template per family, TEMPLATES),
quantize.py (int8/int16: mlu_quantize.quantize_dynamic_mlu with the recipe's qconfig over the
calibration list, on the CPU), genoff.py (the offline .cambricon model per core version), run.sh,
README.md. Nothing here imports torch_mlu on the host.
"""
from __future__ import annotations

import io
import pprint
from pathlib import Path

from . import handoff as ho
from .handoff import Bundle, Option, is_int, is_number, is_text, is_triple

CORES = {"MLU220": 4, "MLU270": 16}                 # core_number ceilings
QUANTIZED_MODE = {"fp16": 0, "int8": 1, "int16": 2}  # genoff -quantized_mode

OPTIONS = {
    "iteration": Option(None, check=is_int(1, none_ok=True), means="null (one per calibration image) or >= 1"),
    "use_avg": Option(False, allowed=(False, True)),
    "data_scale": Option(1.0, check=is_number(1e-6), means="a number > 0"),
    "mean": Option([0.0, 0.0, 0.0], check=is_triple, means="three numbers"),
    "std": Option([1.0, 1.0, 1.0], check=lambda v: is_triple(v) and all(x > 0 for x in v),
                  means="three numbers > 0"),
    "per_channel": Option(False, allowed=(False, True)),
    "firstconv": Option(True, allowed=(True, False)),
    "core_number": Option(1, check=is_int(1, 16), means="1..4 on MLU220, 1..16 on MLU270"),
    "half_input": Option(1, allowed=(1, 0)),
    "input_format": Option(0, allowed=(0, 1, 2, 3), doc="0 rgba, 1 argb, 2 bgra, 3 abgr"),
    "fake_device": Option(1, allowed=(1, 0)),
    "docker": Option("Cambricon PyTorch docker (torch_mlu 1.x on PyTorch 1.3, Neuware/CNToolkit with CNRT 4.x)",
                     check=is_text, means="a docker image name"),
    **ho.COMMON_OPTIONS,
}

SDK = ("Cambricon PyTorch (torch_mlu) 1.x on PyTorch 1.3 with Neuware / CNToolkit (CNML, CNRT 4.x), "
       "the vendor's docker image; the offline model runs with CNRT")


def _config_block(b: Bundle) -> str:
    """CONFIG of templates/mlu_yolov5.py: the yolov5 layer table and scale multiples."""
    from ..models.arch import YOLOV5_LAYOUTS, YOLOV5_SCALES

    meta = b.meta
    gd, gw = YOLOV5_SCALES[meta["scale"]]
    cfg = {
        "model_scale": meta["scale"], "layout": meta["layout"], "depth_multiple": gd, "width_multiple": gw,
        "nc": int(meta["nc"]), "names": list(meta["names"]),
        "anchors_px": [[float(v) for pair in level for v in pair] for level in meta["anchors_px"]],
        "strides": [int(s) for s in meta["strides"]], "head": b.params["head"],
        "input": [b.batch, 3, b.height, b.width], "scale": b.scale,  # input pixel scale (1/255)
        "layers": [list(row) for row in YOLOV5_LAYOUTS[meta["layout"]]],
    }
    return "CONFIG = " + pprint.pformat(cfg, width=110, sort_dicts=False)


def _config_darknet(b: Bundle) -> str:
    """CONFIG of templates/mlu_darknet.py: the Darknet cfg's layers (classes / filters set for nc)."""
    from ..models import darknet_cfg as dc

    meta = b.meta
    layers = dc.walk(dc.with_classes(dc.read_cfg(meta["layout"]), int(meta["nc"])))
    keep = ("type", "index", "inputs", "c_in", "filters", "size", "stride", "pad", "groups", "bn", "act")
    levels = dc.levels(layers)
    cfg = {
        "layout": meta["layout"], "nc": int(meta["nc"]), "names": list(meta["names"]),
        "anchors_px": [[float(v) for pair in level for v in pair] for level in meta["anchors_px"]],
        "strides": [int(s) for s in meta["strides"]], "head": b.params["head"],
        "input": [b.batch, 3, b.height, b.width], "scale": b.scale,  # input pixel scale (1/255)
        "heads": {y["index"] - 1: level for level, y in enumerate(levels)},     # conv before a [yolo] -> level
        "yolo_levels": {y["index"]: level for level, y in enumerate(levels)},
        "layers": [{k: la[k] for k in keep if k in la} for la in layers],
    }
    return "CONFIG = " + pprint.pformat(cfg, width=110, sort_dicts=False)


# family -> (template in templates/, the module name the bundle's scripts import, its CONFIG writer, activation note)
TEMPLATES = {
    "yolov5": ("mlu_yolov5.py", "yolov5_mlu", _config_block, "SiLU as x*sigmoid(x)"),
    "yolov3": ("mlu_darknet.py", "yolov3_mlu", _config_darknet, "Darknet cfg layers, LeakyReLU(0.1)"),
}


def _template(b: Bundle) -> tuple:
    family = b.meta.get("family", "yolov5")
    if family not in TEMPLATES:
        raise ho.UserError(f"model.family: {family} has no Cambricon model definition template; "
                           f"allowed: {', '.join(TEMPLATES)}")
    return TEMPLATES[family]


def model_definition(b: Bundle) -> str:
    file, _, config, _ = _template(b)
    text = (Path(__file__).parent / "templates" / file).read_text()
    marker = "CONFIG = {}  # @CONFIG@"
    assert marker in text
    return text.replace(marker, config(b))


def weights_only_pth(patched: Path) -> bytes:
    """patched.pt -> the unfused fp32 state_dict, legacy (non-zip) serialization PyTorch 1.3 reads."""
    from ..ops.model import load_checkpoint_file

    ckpt = load_checkpoint_file(patched, key="model")
    sd = {k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous().clone()
          for k, v in ckpt["state_dict"].items() if not k.endswith("num_batches_tracked")}
    return _legacy_save_bytes(sd)


def _legacy_save_bytes(obj) -> bytes:
    """torch.save(obj, _use_new_zipfile_serialization=False), reproducibly.

    The legacy writer names each storage by its memory address (str(storage._cdata)) and writes
    them in that name's order; for the same bytes every run, the names become the order in which
    the pickler meets the storages (dict order), for this call only.
    """
    import torch

    cls = torch.UntypedStorage
    real = next(vars(k)["_cdata"] for k in cls.__mro__ if "_cdata" in vars(k))
    own = "_cdata" in vars(cls)
    names: dict[int, int] = {}

    def stable(self):
        return names.setdefault(real.__get__(self, type(self)), 10 ** 9 + len(names))

    cls._cdata = property(stable)
    try:
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=False)
    finally:
        if own:
            cls._cdata = real
        else:
            del cls._cdata
    return buf.getvalue()


QUANTIZE = '''#!/usr/bin/env python
# -*- coding: utf-8 -*-
"""{dtype} quantization on the CPU with torch_mlu's mlu_quantize (Cambricon PyTorch 1.x). Generated by yolobuild.

Reads the calibration list, runs `iteration` forwards through the quantized model and saves its
state_dict (weights plus the quantization parameters) for genoff.py.
"""
import argparse

import torch
import torch_mlu  # noqa: F401  (registers the MLU backend)
import torch_mlu.core.mlu_quantize as mlu_quantize

from {module} import build_model, load_image

DTYPE = {dtype!r}
QCONFIG = {qconfig}


def main():
    parser = argparse.ArgumentParser(description="quantize the model for the MLU ({dtype})")
    parser.add_argument("--weights", default="model.pth", help="weights-only state_dict")
    parser.add_argument("--data", default="dataset.txt", help="calibration list, one image per line")
    parser.add_argument("--output", default={output!r}, help="quantized state_dict")
    args = parser.parse_args()
    with open(args.data) as f:
        images = [line.strip() for line in f if line.strip()]
    if not images:
        raise SystemExit("no calibration images in " + args.data)
    model = build_model(args.weights)
    qmodel = mlu_quantize.quantize_dynamic_mlu(model, QCONFIG, dtype=DTYPE, gen_quant=True)
    with torch.no_grad():
        for i in range(QCONFIG["iteration"]):
            qmodel(load_image(images[i % len(images)]))
    torch.save(qmodel.state_dict(), args.output)
    print("saved " + args.output)


if __name__ == "__main__":
    main()
'''

GENOFF = '''#!/usr/bin/env python
# -*- coding: utf-8 -*-
"""Offline model generation for {mcore} with torch_mlu (Cambricon PyTorch 1.x). Generated by yolobuild.

Loads the (quantized) state_dict into the model, sets core version / number / input format, traces
once on the MLU device: that forward writes <mname>.cambricon (and <mname>.cambricon_twins).
"""
import argparse

import torch
import torch_mlu  # noqa: F401
import torch_mlu.core.mlu_model as ct
import torch_mlu.core.mlu_quantize as mlu_quantize

from {module} import build_model


def parse_args():
    parser = argparse.ArgumentParser(description="generate the offline model")
    parser.add_argument("-model", dest="model", default={model!r}, help="state_dict to load")
    parser.add_argument("-mname", dest="mname", default={mname!r}, help="offline model name")
    parser.add_argument("-mcore", dest="mcore", default={mcore!r}, help="MLU220 or MLU270")
    parser.add_argument("-core_number", dest="core_number", default={core_number}, type=int)
    parser.add_argument("-batch_size", dest="batch_size", default={batch}, type=int)
    parser.add_argument("-in_height", dest="in_height", default={height}, type=int)
    parser.add_argument("-in_width", dest="in_width", default={width}, type=int)
    parser.add_argument("-half_input", dest="half_input", default={half_input}, type=int)
    parser.add_argument("-input_format", dest="input_format", default={input_format}, type=int,
                        help="0 rgba, 1 argb, 2 bgra, 3 abgr")
    parser.add_argument("-fake_device", dest="fake_device", default={fake_device}, type=int)
    parser.add_argument("-quantized_mode", dest="quantized_mode", default={quantized_mode}, type=int,
                        help="0 float16, 1 int8, 2 int16")
    return parser.parse_args()


def genoff(args):
    ct.set_core_number(args.core_number)
    ct.set_core_version(args.mcore)
    if args.fake_device:
        ct.set_device(-1)
    ct.save_as_cambricon(args.mname)
    ct.set_input_format(args.input_format)

    net = build_model()
    if args.quantized_mode in (1, 2):
        net = mlu_quantize.quantize_dynamic_mlu(net)
        net.load_state_dict(torch.load(args.model, map_location="cpu"), strict=False)
    else:
        net.load_state_dict(torch.load(args.model, map_location="cpu"), strict=True)
    net = net.eval().float().to(ct.mlu_device())

    example = torch.randn(args.batch_size, 3, args.in_height, args.in_width, dtype=torch.float)
    if args.half_input:
        example = example.type(torch.HalfTensor)
    with torch.no_grad():
        traced = torch.jit.trace(net, example.to(ct.mlu_device()), check_trace=False)
        traced(example.to(ct.mlu_device()))
    ct.save_as_cambricon("")
    print("wrote " + args.mname + ".cambricon")


if __name__ == "__main__":
    genoff(parse_args())
'''


def render(b: Bundle) -> None:
    o, p = b.options, b.params
    mcore = str(p["platform"]).upper()
    if mcore not in CORES:
        raise ho.UserError(f"target.platform: {p['platform']!r} is not a Cambricon core; allowed: {', '.join(CORES)}")
    if o["core_number"] > CORES[mcore]:
        raise ho.UserError(f"backend.options.core_number: {o['core_number']} is not allowed on {mcore}; "
                           f"allowed: 1..{CORES[mcore]}")
    if b.precision not in QUANTIZED_MODE:
        raise ho.UserError(f"precision: {b.precision!r} is not supported by the Cambricon flow; "
                           f"allowed: {', '.join(QUANTIZED_MODE)}")
    mode = QUANTIZED_MODE[b.precision]
    b.files["model.pth"] = weights_only_pth(b.inputs["patched"])
    _, module, _, act_note = _template(b)
    b.text(f"{module}.py", model_definition(b))
    weights = "model.pth"
    if mode in (1, 2):
        if not b.calib_files:
            raise ho.UserError(f"dataset.calib.path: {b.precision} needs a calibration set")
        qconfig = {"iteration": o["iteration"] or len(b.calib_files), "use_avg": o["use_avg"],
                   "data_scale": float(o["data_scale"]), "mean": [float(v) for v in o["mean"]],
                   "std": [float(v) for v in o["std"]], "per_channel": o["per_channel"],
                   "firstconv": o["firstconv"]}
        weights = f"model_{b.precision}.pth"
        b.text("quantize.py", QUANTIZE.format(module=module, dtype=b.precision,
                                               qconfig=pprint.pformat(qconfig, sort_dicts=False), output=weights))
        b.steps.append('"$PYTHON" quantize.py --weights model.pth --data dataset.txt --output ' + weights)
    mname = f"{b.name}_{mcore.lower()}"
    b.text("genoff.py", GENOFF.format(module=module, model=weights, mname=mname, mcore=mcore,
                                      core_number=o["core_number"], batch=b.batch, height=b.height, width=b.width,
                                      half_input=o["half_input"], input_format=o["input_format"],
                                      fake_device=o["fake_device"], quantized_mode=mode))
    b.steps.append(
        f'"$PYTHON" genoff.py -model {weights} -mname {mname} -mcore {mcore} -core_number {o["core_number"]} '
        f'-batch_size {b.batch} -in_height {b.height} -in_width {b.width} -half_input {o["half_input"]} '
        f'-input_format {o["input_format"]} -fake_device {o["fake_device"]} -quantized_mode {mode}')
    b.expects.append(f"{mname}.cambricon")
    if p.get("fuse"):
        b.readme += ["Note: graph.fuse is on for the host export; `model.pth` is still the unfused state_dict, "
                     "as the Cambricon flow wants.", ""]
    b.readme += [
        "## Cambricon notes", "",
        "- `model.pth`: weights only (`torch.load` gives a state_dict), conv+BN not fused, no AutoShape; "
        f"`{module}.py` is the model definition it loads into ({act_note}, PyTorch 1.3 compatible).",
        (f"- `quantize.py`: {b.precision} quantization on the CPU with `mlu_quantize.quantize_dynamic_mlu` and "
         "the recipe's qconfig (backend.options iteration, use_avg, data_scale, mean, std, per_channel, firstconv), "
         f"over `dataset.txt`; writes `{weights}`." if mode else
         "- fp16: no quantization step; genoff traces the float weights with `-quantized_mode 0`."),
        f"- `genoff.py`: traces on the MLU once and writes `{mname}.cambricon` for {mcore} "
        f"(-core_number {o['core_number']}, -batch_size {b.batch}, -half_input {o['half_input']}, "
        f"-input_format {o['input_format']}, -fake_device {o['fake_device']}).",
        f"- Outputs of the offline model: head `{p['head']}`"
        + (f" — {len(b.meta['strides'])} raw conv outputs; decode on the host with the anchors in "
           f"{module}.py CONFIG." if p["head"] == "raw"
           else "."), ""]


def detect(options: dict) -> str:
    configured = ho.configured_python(options, "torch_mlu")
    if configured:
        return configured
    if ho.which("genoff.py"):
        return "genoff.py on PATH"
    if ho.module_present("torch_mlu"):
        return "torch_mlu importable"
    return "absent"


VENDOR = ho.Vendor(toolchain="cambricon", title="Cambricon torch_mlu 1.x + genoff", sdk=SDK, options=OPTIONS,
                   render=render, detect=detect)


def handoff(ctx) -> None:
    """The handoff op (engine.dispatch calls the function named like the op kind)."""
    ho.run(ctx, VENDOR)
