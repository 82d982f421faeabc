"""The toolchains: one table of what each contributes to a plan; implementations load lazily.

A toolchain module offers up to three functions, each an op implementation
(`run(ctx)`): `quantize` (only where quantization is a step of its own), `compile`, and
`simulate` (run the compiled model on the probe images, returning raw outputs).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ToolchainSpec:
    module: str | None             # implementation module; None where yolobuild has none yet
    env: str                       # "host", or the isolated environment that runs it
    tools: tuple[str, ...]         # distributions whose versions key its ops
    quantize_step: bool            # a separate quantize op before compile
    compiled: tuple[str, ...]      # what compile writes (the bundle folder, for a hand-off toolchain)
    op_version: int = 1
    exports: tuple[str, ...] = ()  # exports the toolchain reads whatever frontend.format says ("torchscript")
    simulate_rebuilds: bool = False  # its simulator needs what compile read (the model source, calibration)
    simulates_in_compile: bool = False  # its simulator runs only in the session that built the model: compile
    #                                     runs the probe images too and writes outputs.npz (no simulate op)


TOOLCHAINS: dict[str, ToolchainSpec] = {
    "onnxruntime": ToolchainSpec("yolobuild.toolchains.onnxruntime", "host", ("onnxruntime", "onnx"),
                                 quantize_step=True, compiled=("model.ort.onnx",)),
    "openvino": ToolchainSpec(None, "openvino", ("openvino", "nncf"), True, ("model.xml", "model.bin")),
    # the PC simulator needs build() in the same session, and two builds differ in ~1k bytes: the model
    # that ships is the model that was simulated only if one session does both
    "rknn-toolkit2": ToolchainSpec("yolobuild.toolchains.rknn2", "rknn-toolkit2", ("rknn-toolkit2",), False,
                                   ("model.rknn",), op_version=2, simulates_in_compile=True),
    # simulate_rebuilds: simulate reads the ONNX for its output names (the bmodel's carry suffixes)
    "tpu-mlir": ToolchainSpec("yolobuild.toolchains.tpu_mlir", "tpu-mlir", ("tpu_mlir",), False, ("model.bmodel",),
                              simulate_rebuilds=True),
    "tensorrt": ToolchainSpec(None, "tensorrt", ("tensorrt",), False, ("model.engine",)),
    # hand-off bundles (yolobuild.toolchains.handoff): the vendor compiler runs in the vendor's docker
    "rknn-toolkit-1.7": ToolchainSpec("yolobuild.toolchains.rknn1", "handoff", ("pillow", "pyyaml"), False,
                                      ("handoff",)),
    "cambricon": ToolchainSpec("yolobuild.toolchains.cambricon", "handoff", ("torch", "pillow", "pyyaml"), False,
                               ("handoff",)),
    "vamc": ToolchainSpec("yolobuild.toolchains.vamc", "handoff", ("pillow", "pyyaml"), False, ("handoff",)),
    "tpu-nntc": ToolchainSpec("yolobuild.toolchains.tpu_nntc", "handoff", ("pillow", "pyyaml"), False,
                              ("handoff",), exports=("torchscript",)),
}
