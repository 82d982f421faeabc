"""NVIDIA TensorRT: a serialized engine (fp32, fp16, or int8 from a symmetric Q/DQ ONNX), checked by
running it through TensorRT's runtime on the GPU it was built for.

Importing this package imports neither tensorrt nor CUDA: planning reads toolchain.yaml only, and the
steps look for a GPU (through the driver, in milliseconds) before they import the vendor's Python.
"""
