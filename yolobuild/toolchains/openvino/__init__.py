"""Intel OpenVINO on the host CPU: an IR (model.xml + model.bin) in fp32, fp16 weights, or NNCF int8.

The declaration is toolchain.yaml; steps.py runs in yolobuild's own interpreter (openvino and nncf
install beside torch and onnxruntime without changing either: the `openvino` extra).
"""
