"""A calibration algorithm that crashes inside a vendor toolkit: one line naming the algorithm and the option."""
from __future__ import annotations

import pytest

from yolobuild.errors import ToolchainError
from yolobuild.toolchains import calibration


def test_a_crashed_calibration_names_the_algorithm_the_option_and_the_others(tmp_path):
    log = tmp_path / "compile.log"
    log.write_text("I rknn building ...\nE build: Catch exception when building RKNN model!\nE build: mmse overflow\n")
    result = {"calibration_failed": {"algorithm": "mmse", "said": "rknn.build returned -1"}}
    with pytest.raises(ToolchainError) as caught:
        calibration.check(result, "rknn-toolkit2", "quantized_algorithm", ["normal", "kl_divergence", "mmse"], log)
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 3
    assert "calibration with 'mmse' failed" in message and "E build: mmse overflow" in message
    assert "set backend.options.quantized_algorithm to another algorithm (normal, kl_divergence)" in message
    assert caught.value.algorithm == "mmse" and caught.value.option == "quantized_algorithm"


def test_a_result_without_failure_passes_through():
    assert calibration.check({"outputs": ["a"]}, "tpu-mlir", "calibration_method", ["kl", "mse"]) == {"outputs": ["a"]}


def test_the_vendor_toolchains_declare_what_a_search_may_try():
    from yolobuild.toolchains import registry

    rknn, tpu = registry.get("rknn-toolkit2").accuracy, registry.get("tpu-mlir").accuracy
    assert (rknn.calibration_option, rknn.calibration_choices, rknn.layer_error) == \
        ("quantized_algorithm", ("normal", "kl_divergence", "mmse"), True)
    assert (tpu.calibration_option, tpu.calibration_choices, tpu.layer_error) == \
        ("calibration_method", ("kl", "mse", "max", "percentile9999"), True)
    for facts, name in ((rknn, "rknn-toolkit2"), (tpu, "tpu-mlir")):
        allowed = registry.get(name).options["properties"][facts.calibration_option]["enum"]
        assert set(facts.calibration_choices) <= set(allowed)
