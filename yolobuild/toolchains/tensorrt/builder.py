"""ONNX -> serialized TensorRT engine, through the TensorRT 10 builder.

Precision is a builder flag: fp16 lets TensorRT pick half-precision kernels; int8 reads the Q/DQ nodes of
the quantized ONNX (explicit quantization: their scales are the calibration, done on the host), and the
layers those nodes leave float run in fp16 or fp32 as options say.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import ToolchainError


def _network_flags(trt) -> int:
    """TensorRT 10 networks are explicit-batch always (the flag is deprecated and ignored); older ones ask."""
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and int(trt.__version__.split(".")[0]) < 10:
        return 1 << int(explicit)
    return 0


def _first_error(logger, fallback: str) -> str:
    return logger.errors[-1][:300] if logger.errors else fallback


def _fixed_profile(trt, builder, network, height: int, width: int):
    """An optimization profile pinning any dynamic input dim (batch 1, the build's H x W); None when static."""
    profile, dynamic = builder.create_optimization_profile(), False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if all(d >= 0 for d in shape):
            continue
        dynamic = True
        fixed = tuple(d if d >= 0 else (height if k == 2 else width if k == 3 else 1) for k, d in enumerate(shape))
        profile.set_shape(tensor.name, fixed, fixed, fixed)
    return profile if dynamic else None


def build(trt, logger, onnx_path: Path, engine_path: Path, *, precision: str, options: dict,
          height: int, width: int) -> dict:
    """Parse, configure and build; writes engine_path and returns what the manifest should say about it."""
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [" ".join(str(parser.get_error(i).desc()).split()) for i in range(parser.num_errors)]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ToolchainError(f"tensorrt: the ONNX parser refused {onnx_path.name}: "
                             f"{(errors[0] if errors else _first_error(logger, 'no reason given'))[:300]}{more}")
    config = builder.create_builder_config()
    if options["workspace_mib"] is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options["workspace_mib"]) << 20)
    config.builder_optimization_level = int(options["optimization_level"])
    flags = []
    if precision == "fp16" or (precision == "int8" and options["int8_float_layers"] == "fp16"):
        flags.append("FP16")
    if precision == "int8":
        flags.append("INT8")   # weakly typed network: the flag lets the builder honour the Q/DQ nodes
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = _fixed_profile(trt, builder, network, height, width)
    if profile is not None:
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ToolchainError(f"tensorrt: the builder made no engine from {onnx_path.name}: "
                             f"{_first_error(logger, 'no reason given')}")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with open(engine_path, "wb") as f:
        f.write(serialized)
    return {
        "tensorrt": trt.__version__, "flags": flags, "layers": int(network.num_layers),
        "optimization_level": int(options["optimization_level"]), "workspace_mib": options["workspace_mib"],
        "inputs": {network.get_input(i).name: list(network.get_input(i).shape) for i in range(network.num_inputs)},
        "outputs": [network.get_output(i).name for i in range(network.num_outputs)],
        "bytes": engine_path.stat().st_size,
    }
