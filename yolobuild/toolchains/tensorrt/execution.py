"""Run a serialized engine through TensorRT's runtime: device buffers and a stream from cuda-python.

One input batch at a time, the shapes the engine was built for; host copies are plain numpy arrays
(parity needs numbers, not the last microsecond), and `time` measures the engine alone, with its input
already on the device.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ...errors import ToolchainError


def _check(cudart, result, what: str):
    """cuda-python returns (error, *values); raise on any error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        raise ToolchainError(f"tensorrt: CUDA {what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else values


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    is_input: bool
    device: int = 0   # device pointer

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


class EngineRunner:
    """A deserialized engine, an execution context, a stream and one device buffer per I/O tensor."""

    def __init__(self, trt, cudart, engine_bytes: bytes, logger, *, device: int = 0, input_shape=None):
        self.cudart = cudart
        _check(cudart, cudart.cudaSetDevice(device), "cudaSetDevice")
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ToolchainError(
                "tensorrt: the engine does not load here; an engine runs only with the TensorRT version and on "
                f"the GPU model that built it ({' '.join(logger.errors[-1:])[:200] or 'no reason given'})")
        self.context = self.engine.create_execution_context()
        self.tensors: list[_Tensor] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(self.engine.get_tensor_shape(name))
            if is_input and any(d < 0 for d in shape):
                if input_shape is None:
                    raise ToolchainError(f"tensorrt: input {name!r} has dynamic shape {shape}; give input_shape")
                self.context.set_input_shape(name, tuple(input_shape))
            self.tensors.append(_Tensor(name, shape, np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))),
                                        is_input))
        for t in self.tensors:   # output shapes are known once every input shape is
            t.shape = tuple(self.context.get_tensor_shape(t.name))
            t.device = _check(cudart, cudart.cudaMalloc(max(t.nbytes, 1)), "cudaMalloc")
            self.context.set_tensor_address(t.name, int(t.device))
        self.stream = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def input(self) -> _Tensor:
        inputs = [t for t in self.tensors if t.is_input]
        if len(inputs) != 1:
            raise ToolchainError(f"tensorrt: expected one engine input, found {[t.name for t in inputs]}")
        return inputs[0]

    def _upload(self, x: np.ndarray) -> None:
        t = self.input
        x = np.ascontiguousarray(x, dtype=t.dtype)
        if x.shape != t.shape:
            raise ToolchainError(f"tensorrt: the engine takes {t.name} {list(t.shape)}, got {list(x.shape)}")
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self.cudart, self.cudart.cudaMemcpyAsync(t.device, x.ctypes.data, t.nbytes, kind, self.stream),
               "copy to device")
        _check(self.cudart, self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def _execute(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise ToolchainError("tensorrt: execute_async_v3 failed (see the op's log)")
        _check(self.cudart, self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One batch in, every output out (float32, by tensor name)."""
        self._upload(x)
        self._execute()
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        out = {}
        for t in self.tensors:
            if t.is_input:
                continue
            host = np.empty(t.shape, t.dtype)
            _check(self.cudart, self.cudart.cudaMemcpyAsync(host.ctypes.data, t.device, t.nbytes, kind, self.stream),
                   "copy to host")
            _check(self.cudart, self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
            out[t.name] = host.astype(np.float32, copy=False)
        return out

    def time(self, x: np.ndarray, *, warmup: int = 20, iterations: int = 200) -> np.ndarray:
        """Milliseconds per execution (enqueue to stream synchronized), after `warmup` untimed runs."""
        self._upload(x)
        for _ in range(warmup):
            self._execute()
        times = np.empty(iterations)
        for i in range(iterations):
            start = time.perf_counter()
            self._execute()
            times[i] = (time.perf_counter() - start) * 1e3
        return times

    def close(self) -> None:
        for t in self.tensors:
            if t.device:
                self.cudart.cudaFree(t.device)
                t.device = 0
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
