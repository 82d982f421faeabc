"""Runs inside the rknn-toolkit2 environment (see envs.py): build a .rknn, run the PC simulator, and the
toolkit's per-layer accuracy analysis.

Only rknn.api, numpy, onnx and yolobuild.runtime.layer_error (numpy only) are imported here; the host
prepares every input file. `build()` and `init_runtime()` report failure by returning non-zero, so each
is checked.
"""
from __future__ import annotations

import shutil
from pathlib import Path


class CalibrationFailed(RuntimeError):
    """The toolkit's quantizing build failed for this calibration setup: the host names the option to change."""


def _build(request: dict):
    """The configured, built RKNN session and the model's output names. Layers named in request["float_layers"]
    stay float16 (hybrid quantization), plus the head with fp16_head on int8."""
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
    quantize = r["dataset"] is not None
    keep = set(r.get("keep_float") or ())
    if quantize and r["quantized_dtype"] == "w8a8" and r.get("fp16_head"):
        keep |= _head_tensors(graph)
    if quantize and keep:
        return _hybrid_build(rknn, r, keep), names
    ret = rknn.build(do_quantization=quantize, dataset=r["dataset"] if quantize else None)
    if ret != 0:
        if quantize:
            raise CalibrationFailed(f"rknn.build returned {ret}")
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


def _hybrid_build(rknn, r: dict, keep: set[str]):
    """rknn-toolkit2's hybrid quantization: quantized everywhere but the `keep` tensors, which stay float16.

    Step 1 writes <stem>.model/.data/.quantization.cfg in the working folder; the cfg's
    custom_quantize_layers names the tensors to keep in float; step 2 builds from them. A kept name the
    cfg does not list (a tensor the toolkit fused away) is skipped; none at all is an error."""
    from rknn.api import RKNN

    ret = rknn.hybrid_quantization_step1(dataset=r["dataset"], proposal=False)
    if ret != 0:
        raise CalibrationFailed(f"rknn.hybrid_quantization_step1 returned {ret}")
    rknn.release()
    stem = Path(r["onnx"]).stem
    cfg = Path(f"{stem}.quantization.cfg")
    text = cfg.read_text()
    known = {line.strip().rstrip(":") for line in text.splitlines() if line.startswith("    ") and not line.startswith("     ")}
    layers = sorted(t for t in keep if t in known)
    if not layers:
        raise RuntimeError(f"hybrid quantization: none of {', '.join(sorted(keep)[:5])} is a layer of the "
                           "quantization config")
    print(f"hybrid quantization: {len(layers)} layer(s) kept in float16", flush=True)
    custom = "custom_quantize_layers:\n" + "".join(f"    {t}: float16\n" for t in layers)
    cfg.write_text(text.replace("custom_quantize_layers: {}\n", custom, 1))
    hybrid = RKNN(verbose=False)
    ret = hybrid.hybrid_quantization_step2(model_input=f"{stem}.model", data_input=f"{stem}.data",
                                           model_quantization_cfg=str(cfg))
    if ret != 0:
        raise RuntimeError(f"rknn.hybrid_quantization_step2 failed (returned {ret})")
    hybrid.yolobuild_float_layers = layers
    return hybrid


def _built(request: dict):
    """_build, with a calibration failure returned as data (the host words the message), not raised."""
    try:
        return _build(request), None
    except CalibrationFailed as exc:
        return (None, None), {"calibration_failed": {"algorithm": request["quantized_algorithm"],
                                                     "dtype": request["quantized_dtype"], "said": str(exc)}}


def compile_and_simulate(request: dict) -> dict:
    """Build, export the .rknn, then run the PC simulator on the probe images in the same session
    (the simulator runs only after build() in the process that built the model)."""
    import time

    import numpy as np

    from ...progress import report

    start = time.time()
    (rknn, names), failed = _built(request)
    if failed:
        return failed
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
            "float_layers": len(getattr(rknn, "yolobuild_float_layers", ())),
            "seconds_building": round(built - start, 3), "seconds_simulating": round(time.time() - built, 3)}


def _analysis_rows(folder: Path) -> list[tuple[str, str, float]]:
    """error_analysis.txt rows in graph order: (layer, op type, the toolkit's single-layer cosine).

    A row reads `[Conv] /model.0/conv/Conv_output_0   0.99996 | 5.05334   0.99996 | 5.05334`: entire
    cosine | euclidean (error accumulated from the input), then single cosine | euclidean (this layer
    alone, fed the float input). Rows whose figures read `q_zero` (the toolkit's own float16 conversions
    of all-zero tensors, no ONNX tensor) are left out."""
    rows = []
    for line in (folder / "error_analysis.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) < 8 or not parts[0].startswith("[") or parts[0][-1] != "]":
            continue
        try:
            single = float(parts[5])
        except ValueError:     # `q_zero`: a toolkit-internal conversion (…__float16) of an all-zero tensor
            continue
        rows.append((parts[1], parts[0][1:-1], single))
    return rows


def _dump_files(folder: Path) -> dict[str, str]:
    """Layer name -> its dump's file name (map_name_to_file.txt)."""
    out = {}
    for line in (folder / "map_name_to_file.txt").read_text().splitlines()[2:]:
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def _reported_inputs(graph, reported: set[str]) -> dict[str, list[str]]:
    """For each reported tensor, the reported tensors feeding it (through tensors the toolkit fused away)."""
    producer = {out: node for node in graph.node for out in node.output}
    out = {}
    for tensor in reported:
        node = producer.get(tensor)
        found, stack, seen = [], list(node.input) if node is not None else [], set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in reported:
                found.append(t)
            elif t in producer:
                stack.extend(producer[t].input)
        out[tensor] = sorted(found)
    return out


def layer_error(request: dict) -> dict:
    """Build the model as compile does, then rknn-toolkit2's accuracy_analysis on each probe image: the
    float ('golden') and simulator output of every layer. Cosine and SQNR come from those dumps; the
    toolkit's own single-layer cosine rides along, and each layer's float subgraph re-run on the simulator's
    own input tensors gives what quantizing that layer alone costs per channel (local_sqnr_db, the ranking's
    key: the toolkit's single-layer figure is one cosine per tensor, blind to a packed head's small
    channels). Layers are the ONNX tensors the toolkit reports (the names hybrid quantization takes), in the
    ONNX graph's order; its internal ones (images_int8, *_conv) are left out. Each image's dumps (hundreds of
    MB) are deleted once read."""
    import time

    import numpy as np
    import onnx

    from yolobuild.runtime.float_layers import FloatLayers
    from yolobuild.runtime.layer_error import LayerStats

    start = time.time()
    (rknn, _), failed = _built(request)
    if failed:
        return failed
    graph = onnx.load(request["onnx"], load_external_data=False).graph
    position = {out: i for i, node in enumerate(graph.node) for out in node.output}   # ONNX graph order
    kept = set(getattr(rknn, "yolobuild_float_layers", ()))
    float_layers = FloatLayers(request["onnx"])   # each layer alone, on the simulator's own inputs
    stats, single = LayerStats(), {}
    work = Path(request["work"])
    images = sorted(Path(request["images_dir"]).glob("*.npy"))
    inputs = None
    try:
        for i, image in enumerate(images):
            snap = work / f"snapshot_{i}"
            t = time.time()
            if rknn.accuracy_analysis(inputs=[str(image)], output_dir=str(snap)) != 0:
                raise RuntimeError(f"rknn.accuracy_analysis failed on probe image {i}")
            rows = sorted((row for row in _analysis_rows(snap) if row[0] in position), key=lambda row: position[row[0]])
            files = _dump_files(snap)
            if inputs is None:
                inputs = _reported_inputs(graph, {name for name, _, _ in rows})
            simulated = {}
            for name, op, single_cos in rows:
                ref = np.fromfile(snap / "golden" / files[name], sep=" ", dtype=np.float64)
                got = simulated[name] = np.fromfile(snap / "simulator" / files[name], sep=" ", dtype=np.float32)
                alone = float_layers.run(name, {n: simulated[n] for n in inputs[name]}) \
                    if all(n in simulated for n in inputs[name]) else None
                stats.add(name, op, ref, got, inputs=inputs[name], quantized=name not in kept,
                          local=None if alone is None else (alone, got.reshape(alone.shape)))
                single.setdefault(name, []).append(single_cos)
            del simulated
            shutil.rmtree(snap)
            print(f"accuracy_analysis image {i + 1}/{len(images)}: {time.time() - t:.1f} s", flush=True)
    finally:
        rknn.release()
    doc = stats.document("rknn-toolkit2 accuracy_analysis (float vs simulator, per layer)", images=len(images))
    for layer in doc["layers"]:
        layer["toolkit_single_cosine"] = round(float(np.mean(single[layer["name"]])), 6)
    return {"doc": doc, "seconds": round(time.time() - start, 2)}
