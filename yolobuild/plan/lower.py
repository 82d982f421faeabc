"""Lower a validated config into a Plan of typed ops. Pure data work: no torch, no numpy."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..accuracy import kept_float
from ..compose import MISSING
from ..deploy.describe import HOST_RUNNABLE
from ..models import registry as families
from ..ops import OP_KINDS, code_paths
from ..toolchains import registry
from ..validate import ASSETS_DIR, BUILTIN_PREFIX, thaw
from .ir import Op, Plan, Ref


def build_name(cfg: Mapping) -> str:
    """The readable name, plus a short digest of the other overrides (yolobuild.variant) when there are any:
    two builds that differ in any override never share a folder."""
    from ..variant import suffix

    return (f"{cfg['recipe']}_{cfg['target']['name']}_{cfg['precision']['name']}_"
            f"{cfg['input']['height']}x{cfg['input']['width']}{suffix(cfg.get('overrides') or ())}")


def weights_ref(weights: str) -> Ref | None:
    if weights == "random":
        return None
    if weights == MISSING:
        return Ref(kind="unset")
    if weights.startswith(BUILTIN_PREFIX):
        return Ref(path=str(ASSETS_DIR / f"{weights[len(BUILTIN_PREFIX):]}.pt"))
    return Ref(path=str(Path(weights).expanduser().resolve()))


class _Builder:
    def __init__(self):
        self.ops: list[Op] = []

    def add(self, op_id: str, kind: str, params: dict, inputs: dict[str, Ref], outputs: tuple[str, ...],
            final: tuple[str, ...] = (), toolchain: str | None = None) -> str:
        if toolchain:   # a step of the toolchain package: what runs it and what keys it come from its declaration
            decl = registry.get(toolchain)
            env, tools, version, impl, code = decl.env, decl.tools, decl.op_version, decl.step(kind), decl.code
        else:
            k = OP_KINDS[kind]
            env, tools, version, impl, code = "host", k.tools, k.version, k.impl, code_paths(k)
        self.ops.append(Op(id=op_id, kind=kind, params=params, inputs=inputs, outputs=outputs,
                           env=env, tools=tools, version=version, final=final, toolchain=toolchain,
                           impl=impl, code=code))
        return op_id


def effective_patches(cfg: Mapping) -> list[str]:
    """What the model's family always needs for a correct export, then the recipe's / target's choice."""
    required = families.get(cfg["model"]["family"]).required_patches(cfg["model"].get("layout"))
    return list(dict.fromkeys(required + list(cfg["graph"]["patches"])))


def lower(config: Mapping) -> Plan:
    cfg: dict[str, Any] = thaw(config)
    model, ds, prec, target = cfg["model"], cfg["dataset"], cfg["precision"], cfg["target"]
    size = {"height": cfg["input"]["height"], "width": cfg["input"]["width"]}
    b = _Builder()

    # -- data: generated shapes, or the user's folders --------------------------------------------
    gen = ds["generator"]
    parity_n = cfg["check"]["parity_images"]
    notes = []
    # labels: a generated set or annotations; without them, an eval folder is scored by agreement with
    # the fp32 PyTorch model's own detections (ops.check.evaluate)
    labelled = bool(gen or ds["eval"]["annotations"])
    evaluating = bool(cfg["evaluate"]["enabled"] and (labelled or ds["eval"]["images"]))
    if evaluating and model["weights"] == "random":
        evaluating = False
        notes.append("evaluate skipped: random weights detect nothing worth a mAP"
                     + ("" if labelled else " or an agreement figure"))
    if evaluating and gen and model["names"] != ds["classes"]:
        evaluating = False
        notes.append(f"evaluate skipped: the recipe's model.names ({model['nc']} classes) are not the {ds['name']} set's "
                     f"({', '.join(ds['classes'] or [])}); set dataset.eval.images/annotations for your own set")
    if gen:  # generate only what this build reads: calibration images for int8, eval or parity images
        b.add("generate_dataset", "generate_dataset",
              {"kind": gen["kind"], "seed": gen["seed"], "size": gen["size"],
               "calib_count": gen["calib_count"] if prec["calibration"] else 0,
               "eval_count": gen["eval_count"] if evaluating else min(parity_n, gen["eval_count"])},
              {}, ("calib", "eval"))
        calib_ref, eval_ref = Ref("generate_dataset", "calib"), Ref("generate_dataset", "eval")
    else:
        calib_ref = Ref(path=str(Path(ds["calib"]["path"]).expanduser().resolve()), kind="images") \
            if ds["calib"]["path"] else None
        if ds["eval"]["images"]:
            eval_ref = Ref(path=str(Path(ds["eval"]["images"]).expanduser().resolve()), kind="images")
        else:  # no eval set: parity still needs real-looking images, so generate a few shapes
            b.add("generate_dataset", "generate_dataset",
                  {"kind": "shapes", "seed": 0, "size": max(size.values()), "calib_count": 0, "eval_count": parity_n},
                  {}, ("calib", "eval"))
            eval_ref = Ref("generate_dataset", "eval")
    annotations_ref = None
    if ds["eval"]["annotations"]:
        annotations_ref = Ref(path=str(Path(ds["eval"]["annotations"]).expanduser().resolve()))

    # -- model: load, patch, export ---------------------------------------------------------------
    w = weights_ref(model["weights"])
    patches = effective_patches(cfg)
    model_inputs = {"weights": w} if w else {}
    cfg_reader = families.cfg_reader(model["family"])      # a family built from the user's model.cfg (Darknet)
    cfg_file, cfg_note = cfg_reader.user_cfg(model.get("cfg"), model["weights"]) if cfg_reader else (None, None)
    if cfg_file is not None:        # a Darknet model built from the user's cfg: the cfg keys load_model too
        model_inputs["cfg"] = Ref(path=str(cfg_file.resolve()))
    if cfg_note:
        notes.append(cfg_note)
    b.add("load_model", "load_model",
          {"family": model["family"], "scale": model["scale"], "layout": model["layout"], "nc": model["nc"],
           "names": model["names"], "anchors": model["anchors"], "random": model["weights"] == "random",
           "seed": 0, "trust_checkpoint": model["trust_checkpoint"],
           **({"source_repo": model["source"]["repo"]} if (model.get("source") or {}).get("repo") else {})},
          model_inputs, ("model.pt", "model.json"), final=("model.json",))
    b.add("patch", "patch",
          {"head": cfg["graph"]["head"], "patches": patches, "fuse": cfg["graph"]["fuse"], **size},
          {"model": Ref("load_model", "model.pt")}, ("patched.pt",))
    b.add("check_patch", "check_patch", {}, {"model": Ref("load_model", "model.pt"), "patched": Ref("patch", "patched.pt")},
          ("patch_check.json",))
    fmt = cfg["frontend"]["format"]
    b.add("export_onnx", "export_onnx",
          {"opset": cfg["frontend"]["opset"], "head": cfg["graph"]["head"], "batch": cfg["input"]["batch"], **size},
          {"model": Ref("patch", "patched.pt")}, ("model.onnx",), final=("model.onnx",) if fmt == "onnx" else ())
    onnx_ref = Ref("export_onnx", "model.onnx")
    if cfg["frontend"]["simplify"]:
        b.add("simplify", "simplify", {}, {"model": onnx_ref}, ("model.onnx",), final=("model.onnx",))
        b.add("check_simplify", "check_simplify", {}, {"exported": onnx_ref, "simplified": Ref("simplify", "model.onnx")},
              ("simplify_check.json",))
        onnx_ref = Ref("simplify", "model.onnx")
    tc_name = cfg["backend"]["toolchain"]   # the target's toolchain unless backend.toolchain picks another
    tc = registry.get(tc_name)
    if fmt == "torchscript" or "torchscript" in tc.plan.exports:
        b.add("export_torchscript", "export_torchscript", {"batch": cfg["input"]["batch"], **size},
              {"model": Ref("patch", "patched.pt")}, ("model.torchscript.pt",), final=("model.torchscript.pt",))
    if fmt == "state_dict" or "state_dict" in tc.plan.exports:   # the family's weights + standalone definition
        b.add("export_state_dict", "export_state_dict",
              {"head": cfg["graph"]["head"], "batch": cfg["input"]["batch"], "scale": ds["preprocess"]["scale"], **size},
              {"model": Ref("patch", "patched.pt"), "meta": Ref("load_model", "model.json")},
              ("model.pth", "model_def.py", "model_def.json"))

    # -- probe images and the PyTorch reference -----------------------------------------------------
    pre = {**size, **ds["preprocess"]}
    b.add("prepare_inputs", "prepare_inputs",
          {**pre, "parity_count": parity_n, "eval_count": None if evaluating else parity_n},
          {"images": eval_ref, **({"annotations": annotations_ref} if annotations_ref else {})}, ("probe.npz",))
    b.add("reference", "reference", {"conf_thres": cfg["evaluate"]["conf_thres"], "iou_thres": cfg["evaluate"]["iou_thres"]},
          {"model": Ref("load_model", "model.pt"), "probe": Ref("prepare_inputs", "probe.npz")}, ("reference.npz",))

    # -- toolchain: calibrate, quantize, compile, simulate -----------------------------------------
    model_ref = onnx_ref
    options = cfg["backend"]["options"]
    if prec["calibration"]:   # the reviewed kept-float file's layers join backend.options.keep_float
        options = kept_float.merged(options, cfg["accuracy"]["kept_float"])
    common = {"platform": target["platform"], "precision": prec["name"], "input_layout": target["input_layout"],
              "head": cfg["graph"]["head"], "options": options, **pre}
    if prec["calibration"]:
        # the evaluation images (never the stand-in shapes) are what the calibration set is checked against
        against = {"probe": Ref("prepare_inputs", "probe.npz")} if gen or ds["eval"]["images"] else {}
        b.add("calibrate", "calibrate", {**pre, "count": ds["calib"]["count"]}, {"images": calib_ref, **against},
              ("calib.npz",))
        if tc.plan.quantize == "separate":
            b.add("quantize", "quantize", common, {"model": model_ref, "calib": Ref("calibrate", "calib.npz")},
                  ("model.onnx",), toolchain=tc_name)
            model_ref = Ref("quantize", "model.onnx")
    compile_inputs = {"model": model_ref}
    if prec["calibration"] and tc.plan.quantize != "separate":
        compile_inputs["calib"] = Ref("calibrate", "calib.npz")
    if tc.plan.handoff:  # a bundle for the vendor's docker (the shared hand-off mechanism), and a host int8 preview
        _lower_handoff(b, cfg, tc_name, common, onnx_ref, evaluating, annotations_ref, labelled)
        return Plan(name=build_name(cfg), ops=tuple(b.ops), status_if_done="handoff", notes=tuple(notes))
    if tc.plan.simulate == "in_compile":
        compile_inputs["probe"] = Ref("prepare_inputs", "probe.npz")
        b.add("compile", "compile", common, compile_inputs, tc.compiled + ("outputs.npz",), final=tc.compiled,
              toolchain=tc_name)
        outputs_ref = Ref("compile", "outputs.npz")
    else:
        b.add("compile", "compile", common, compile_inputs, tc.compiled, final=tc.compiled, toolchain=tc_name)
        sim_inputs = {"model": Ref("compile", tc.compiled[0]), "probe": Ref("prepare_inputs", "probe.npz")}
        if tc.plan.simulate == "op_rebuilds":
            sim_inputs.update({"source": compile_inputs["model"],
                               **({"calib": compile_inputs["calib"]} if "calib" in compile_inputs else {})})
        b.add("simulate", "simulate", common, sim_inputs, ("outputs.npz",), toolchain=tc_name)
        outputs_ref = Ref("simulate", "outputs.npz")
    if prec["calibration"] and cfg["accuracy"]["layers"] and tc.accuracy.layer_error:
        # per-layer cosine / SQNR of what the toolchain quantized against the float model it was handed
        built = {"built": model_ref} if tc.plan.quantize == "separate" else \
            {"built": Ref("compile", tc.compiled[0]), **{f"also:{n}": Ref("compile", n) for n in tc.compiled[1:]}}
        b.add("layer_error", "layer_error", {**common, "count": parity_n},
              {"source": onnx_ref, **built, "calib": Ref("calibrate", "calib.npz"),
               "probe": Ref("prepare_inputs", "probe.npz")}, ("layers.json",), final=("layers.json",),
              toolchain=tc_name)
    b.add("check_parity", "check_parity",
          {"head": cfg["graph"]["head"], "thresholds": target["parity"][prec["name"]], "count": parity_n},
          {"outputs": outputs_ref, "reference": Ref("reference", "reference.npz"),
           "meta": Ref("load_model", "model.json")}, ("parity.json",), final=("parity.json",))
    if model["weights"] != "random":   # random weights' boxes say nothing to look at
        b.add("compare_detections", "compare_detections",
              {"head": cfg["graph"]["head"], "count": 4, "title": f"built {prec['name']} ({target['name']})"},
              {"outputs": outputs_ref, "reference": Ref("reference", "reference.npz"),
               "meta": Ref("load_model", "model.json"), "probe": Ref("prepare_inputs", "probe.npz"),
               "images": eval_ref}, ("side_by_side",), final=("side_by_side",))
    if evaluating:
        b.add("evaluate", "evaluate", _evaluate_params(cfg, labelled),
              {"outputs": outputs_ref, "reference": Ref("reference", "reference.npz"),
               "meta": Ref("load_model", "model.json"), "probe": Ref("prepare_inputs", "probe.npz"),
               **_labels(labelled, annotations_ref)}, ("metrics.json",), final=("metrics.json",))
    b.add("package", "package", {**common, "toolchain": tc_name, "compiled": list(tc.compiled)},
          {"model": Ref("compile", tc.compiled[0]), "meta": Ref("load_model", "model.json"),
           **{f"also:{name}": Ref("compile", name) for name in tc.compiled[1:]},   # model.bin beside model.xml
           # golden samples: the checked outputs, the probe images' letterbox, the original images
           "outputs": outputs_ref, "probe": Ref("prepare_inputs", "probe.npz"), "images": eval_ref},
          ("deploy",), final=("deploy",))
    if cfg["benchmark"]["enabled"] and tc_name in HOST_RUNNABLE:
        # after the checks, so no other op shares the cores while it times the shipped artifact
        after = {"parity": Ref("check_parity", "parity.json"),
                 **({"metrics": Ref("evaluate", "metrics.json")} if evaluating else {})}
        # a calibrated build is also timed against the float ONNX it was quantized from, in turn, so a
        # busy machine slows both alike and the ratio holds where two builds' separate figures do not
        against = {"float": onnx_ref} if prec["calibration"] else {}
        b.add("benchmark", "benchmark", {"runs": cfg["benchmark"]["runs"], "warmup": cfg["benchmark"]["warmup"],
                                         "threads": cfg["benchmark"]["threads"]},
              {"deploy": Ref("package", "deploy"), **against, **after}, ("benchmark.json",), final=("benchmark.json",))
    return Plan(name=build_name(cfg), ops=tuple(b.ops), status_if_done="compiled",
                notes=tuple(notes))


def _evaluate_params(cfg: dict, labelled: bool) -> dict:
    ev = cfg["evaluate"]
    return {"head": cfg["graph"]["head"], "conf_thres": ev["conf_thres"], "iou_thres": ev["iou_thres"],
            **({} if labelled else {"agreement_conf": ev["agreement_conf"]})}


def _labels(labelled: bool, annotations_ref: Ref | None) -> dict[str, Ref]:
    """The evaluate input holding the labels: the annotations, the generated set's, or none (agreement)."""
    if not labelled:
        return {}
    return {"annotations": annotations_ref or Ref("generate_dataset", "eval")}


def _lower_handoff(b: _Builder, cfg: dict, tc_name: str, common: dict, onnx_ref: Ref, evaluating: bool,
                   annotations_ref: Ref | None, labelled: bool) -> None:
    tc, prec = registry.get(tc_name), cfg["precision"]
    inputs = {"model": onnx_ref, "meta": Ref("load_model", "model.json")}
    if "torchscript" in tc.plan.exports or cfg["frontend"]["format"] == "torchscript":
        inputs["torchscript"] = Ref("export_torchscript", "model.torchscript.pt")
    if "state_dict" in tc.plan.exports or cfg["frontend"]["format"] == "state_dict":
        inputs.update({"state_dict": Ref("export_state_dict", "model.pth"),
                       "model_def": Ref("export_state_dict", "model_def.py"),
                       "model_def_info": Ref("export_state_dict", "model_def.json")})
    if prec["calibration"]:
        inputs["calib"] = Ref("calibrate", "calib.npz")
    params = {**common, "toolchain": tc_name, "name": f"{cfg['recipe']}_{cfg['target']['name']}_{prec['name']}",
              "batch": cfg["input"]["batch"], "fuse": cfg["graph"]["fuse"], "patches": effective_patches(cfg)}
    b.add("handoff", "handoff", params, inputs, tc.compiled, final=tc.compiled, toolchain=tc_name)
    if prec["name"] != "int8":
        return
    # int8 preview: the same ONNX through a generic per-channel int8 fake-quant on the host, from the
    # bundle's own calibration set, checked like a real build; labelled a preview, never a result
    b.add("preview", "preview",
          {**_evaluate_params(cfg, labelled), "scale": common["scale"], "count": cfg["check"]["parity_images"],
           "thresholds": cfg["target"]["parity"].get(prec["name"]), "evaluate": evaluating},
          {"model": onnx_ref, "calib": Ref("calibrate", "calib.npz"), "probe": Ref("prepare_inputs", "probe.npz"),
           "reference": Ref("reference", "reference.npz"), "meta": Ref("load_model", "model.json"),
           **(_labels(labelled, annotations_ref) if evaluating else {})},
          ("preview.json",), final=("preview.json",))
