"""ONNX Runtime on the host CPU: static QDQ int8 quantization, an optimized model, and its outputs."""
