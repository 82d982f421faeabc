"""Each layer's float computation re-run on the quantized model's own inputs: what quantizing that layer
alone costs ("local_sqnr_db" in layers.json), for toolchains that dump every tensor but cannot say it.

A vendor simulator's dump of a layer carries its inputs' error as well as its own, and a packed YOLO head
(boxes, objectness and classes sharing one int8 scale) hides its loss in energy-weighted figures: measured on
an RK3588 int8 head, the stride-32 output's whole-tensor SQNR is 24.7 dB against its input's 19.2 dB, so
subtracting inherited noise charges it nothing, while the layer alone (the float ONNX subgraph fed the
simulator's own input tensors) loses 13.3 dB in its worst channel, and keeping it in float16 is what brings
the mAP back. Runs in the vendor workers' environments: onnx, onnxruntime and numpy only, no other yolobuild
import.

    layers = FloatLayers("model.onnx")
    ref = layers.run("out32", {"/model.23/cv3/act/Mul_output_0": simulator_tensor})   # None: not computable
    stats.add("out32", "Conv", golden, simulated, inputs=[...], local=(ref, simulated))
"""
from __future__ import annotations

import numpy as np


class FloatLayers:
    """One small ONNX Runtime session per layer (the subgraph from its reported inputs to it), made on
    first use and kept, so several probe images cost one extraction each."""

    def __init__(self, onnx_path):
        import onnx
        from onnx import shape_inference, utils

        inferred = shape_inference.infer_shapes(onnx.load(str(onnx_path)))   # the extractor needs every shape
        graph = inferred.graph
        self._shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                        for v in [*graph.value_info, *graph.input, *graph.output]}
        self._extractor = utils.Extractor(inferred)
        self._sessions: dict[tuple, object] = {}

    def shape(self, name: str) -> list[int] | None:
        """The tensor's static shape (dumps are flat), or None when shape inference could not fix it."""
        shape = self._shapes.get(name)
        return shape if shape and all(d > 0 for d in shape) else None

    def run(self, name: str, inputs: dict[str, np.ndarray]) -> np.ndarray | None:
        """Float output `name` computed from `inputs` (the quantized model's tensors, any shape of the
        right size), or None where that subgraph needs more than `inputs` or a shape is unknown."""
        key = (name, *sorted(inputs))
        if key not in self._sessions:
            self._sessions[key] = self._session(name, sorted(inputs))
        session = self._sessions[key]
        if session is None:
            return None
        feed = {}
        for n, value in inputs.items():
            shape = self.shape(n)
            value = np.asarray(value, np.float32)
            if shape is None or value.size != int(np.prod(shape)):
                return None
            feed[n] = value.reshape(shape)
        return session.run(None, feed)[0]

    def _session(self, name: str, inputs: list[str]):
        import onnxruntime as ort

        if not inputs or self.shape(name) is None:
            return None
        try:
            sub = self._extractor.extract_model(inputs, [name])
            given = {i.name for i in sub.graph.input}
            if given - set(inputs):        # the path also reads a tensor the caller did not give
                return None
            options = ort.SessionOptions()
            options.log_severity_level = 3
            return ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:   # noqa: BLE001  (an op ONNX Runtime cannot run alone, an unreachable output)
            return None
