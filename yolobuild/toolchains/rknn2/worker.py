"""Runs inside the rknn-toolkit2 environment (see envs.py): build a .rknn, run the PC simulator.

Only rknn.api, numpy and onnx are imported here; the host prepares every input file.
`build()` and `init_runtime()` report failure by returning non-zero, so each is checked.
"""
from __future__ import annotations

from pathlib import Path


def _build(request: dict):
    import onnx
    from rknn.api import RKNN

    r = request
    rknn = RKNN(verbose=False)
    ret = rknn.config(mean_values=[r["mean"]], std_values=[r["std"]], target_platform=r["platform"],
                      quantized_dtype=r["quantized_dtype"], quantized_algorithm=r["quantized_algorithm"],
                      quantized_method=r["quantized_method"], optimization_level=r["optimization_level"])
    if ret != 0:
        raise RuntimeError(f"rknn.config returned {ret}")
    if rknn.load_onnx(model=r["onnx"]) != 0:
        raise RuntimeError("rknn.load_onnx failed")
    graph = onnx.load(r["onnx"], load_external_data=False).graph
    names = [o.name for o in graph.output]
    if r["precision"] == "int8" and r.get("fp16_head"):
        return _hybrid_build(rknn, r, _head_tensors(graph)), names
    quantize = r["precision"] == "int8"
    ret = rknn.build(do_quantization=quantize, dataset=r["dataset"] if quantize else None)
    if ret != 0:
        raise RuntimeError(f"rknn.build failed (returned {ret})")
    return rknn, names


def _head_tensors(graph) -> set[str]:
    """Tensors from the last convolutions to the outputs: the head kept in float16 by fp16_head."""
    producer = {out: node for node in graph.node for out in node.output}
    keep, stack = set(), [o.name for o in graph.output]
    while stack:
        tensor = stack.pop()
        if tensor in keep or tensor not in producer:
            continue
        keep.add(tensor)
        node = producer[tensor]
        if node.op_type != "Conv":
            stack.extend(node.input)
    return keep


def _hybrid_build(rknn, r: dict, head: set[str]):
    """rknn-toolkit2's hybrid quantization: int8 everywhere but the head, which stays float16.

    Step 1 writes <stem>.model/.data/.quantization.cfg in the working folder; the cfg's
    custom_quantize_layers names the tensors to keep in float; step 2 builds from them."""
    from rknn.api import RKNN

    ret = rknn.hybrid_quantization_step1(dataset=r["dataset"], proposal=False)
    if ret != 0:
        raise RuntimeError(f"rknn.hybrid_quantization_step1 failed (returned {ret})")
    rknn.release()
    stem = Path(r["onnx"]).stem
    cfg = Path(f"{stem}.quantization.cfg")
    text = cfg.read_text()
    known = {line.strip().rstrip(":") for line in text.splitlines() if line.startswith("    ") and not line.startswith("     ")}
    layers = sorted(t for t in head if t in known)
    if not layers:
        raise RuntimeError("fp16_head: no head tensor found in the quantization config")
    custom = "custom_quantize_layers:\n" + "".join(f"    {t}: float16\n" for t in layers)
    cfg.write_text(text.replace("custom_quantize_layers: {}\n", custom, 1))
    hybrid = RKNN(verbose=False)
    ret = hybrid.hybrid_quantization_step2(model_input=f"{stem}.model", data_input=f"{stem}.data",
                                           model_quantization_cfg=str(cfg))
    if ret != 0:
        raise RuntimeError(f"rknn.hybrid_quantization_step2 failed (returned {ret})")
    return hybrid


def compile_and_simulate(request: dict) -> dict:
    """Build, export the .rknn, then run the PC simulator on the probe images in the same session
    (the simulator runs only after build() in the process that built the model)."""
    import time

    import numpy as np

    from ...progress import report

    start = time.time()
    rknn, names = _build(request)
    try:
        if rknn.export_rknn(request["out"]) != 0:
            raise RuntimeError("rknn.export_rknn failed")
        built = time.time()
        if rknn.init_runtime() != 0:
            raise RuntimeError("rknn.init_runtime (PC simulator) failed")
        images = np.load(request["images"])
        stacked = {n: [] for n in names}
        for done, image in enumerate(images):
            report(done, len(images), "simulator images")
            outs = rknn.inference(inputs=[image[None]], data_format="nhwc")
            if outs is None or len(outs) != len(names):
                raise RuntimeError(f"rknn.inference returned {None if outs is None else len(outs)} outputs, "
                                   f"expected {len(names)}")
            for n, o in zip(names, outs):
                stacked[n].append(np.asarray(o, dtype=np.float32).reshape(o.shape[1:]) if o.shape[0] == 1
                                  else np.asarray(o, dtype=np.float32))
        report(len(images), len(images), "simulator images")
        out_dir = Path(request["out_dir"])
        for i, n in enumerate(names):
            np.save(out_dir / f"{i}.npy", np.stack(stacked[n]))
    finally:
        rknn.release()
    return {"outputs": names, "bytes": Path(request["out"]).stat().st_size, "images": int(len(images)),
            "seconds_building": round(built - start, 3), "seconds_simulating": round(time.time() - built, 3)}
