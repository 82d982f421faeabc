"""Fake `python3 -m ufw.cali.cali_model` (tpu-nntc INT8 calibration): strict flags, writes N.prototxt/int8umodel."""
import argparse
import os

from record import record

if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="cali_model")
    for flag in ("--net_name", "--model", "--cali_image_path", "--cali_iterations", "--cali_image_preprocess",
                 "--input_shapes", "--target"):
        p.add_argument(flag, required=True)
    a = p.parse_args()
    images = [f for f in os.listdir(a.cali_image_path)]
    assert images and all(f.endswith((".png", ".jpg")) for f in images), "cali_image_path must hold only images"
    assert a.cali_image_preprocess.startswith("resize_h=") and "bgr2rgb=True" in a.cali_image_preprocess
    record("cali_model", **vars(a), images=len(images))
    open(a.net_name + ".prototxt", "w").write("fake\n")
    open(a.net_name + ".int8umodel", "w").write("fake\n")
