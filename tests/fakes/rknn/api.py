"""A small fake of RKNN-Toolkit 1.7's rknn.api.RKNN: strict 1.x signatures, records every call."""
import os

from record import record


class RKNN(object):
    def __init__(self, verbose=False, verbose_file=None):
        record("RKNN", verbose=verbose)
        self.loaded = None

    def config(self, batch_size=100, caffe_mean_file=None, dtype="float32", epochs=-1, force_gray=None,
               input_size_list=None, mean_values=None, need_horizontal_merge=False, optimization_level=3,
               quantize_input_node=False, quantized_algorithm="normal", quantized_dtype="asymmetric_affine-u8",
               reorder_channel=None, std_values=None, target_platform=None, mmse_epoch=3, output_optimize=0):
        assert quantized_dtype in ("asymmetric_affine-u8", "dynamic_fixed_point-i8", "dynamic_fixed_point-i16")
        assert quantized_algorithm in ("normal", "mmse", "kl_divergence")
        assert reorder_channel in (None, "0 1 2", "2 1 0")
        assert target_platform in ("rk1808", "rv1126", "rv1109", ["rk1808"], ["rv1126"], ["rv1109"]), target_platform
        record("config", batch_size=batch_size, mean_values=mean_values, std_values=std_values,
               reorder_channel=reorder_channel, target_platform=target_platform, quantized_dtype=quantized_dtype,
               quantized_algorithm=quantized_algorithm, optimization_level=optimization_level)
        return 0

    def load_onnx(self, model, inputs=None, input_size_list=None, outputs=None):
        import onnx

        proto = onnx.load(model)
        ops = {n.op_type for n in proto.graph.node}
        assert "ScatterND" not in ops, "RKNN-Toolkit 1.7 fails on ScatterND"
        record("load_onnx", model=model, outputs=[o.name for o in proto.graph.output])
        self.loaded = model
        return 0

    def build(self, do_quantization=True, dataset="dataset.txt", pre_compile=False, rknn_batch_size=-1):
        assert self.loaded, "build before load_onnx"
        if do_quantization:
            with open(dataset) as f:
                images = [ln.strip() for ln in f if ln.strip()]
            assert images and all(os.path.isfile(i) for i in images), "dataset lists missing images"
        record("build", do_quantization=do_quantization, dataset=dataset, pre_compile=pre_compile)
        return 0

    def export_rknn(self, export_path):
        with open(export_path, "w") as f:
            f.write("fake rknn\n")
        record("export_rknn", export_path)
        return 0

    def release(self):
        record("release")
