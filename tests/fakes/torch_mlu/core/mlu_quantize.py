"""Fake torch_mlu.core.mlu_quantize: quantize_dynamic_mlu with the 1.x signature, checking the qconfig."""
from record import record

QCONFIG_KEYS = {"iteration", "use_avg", "data_scale", "mean", "std", "per_channel", "firstconv"}


def quantize_dynamic_mlu(model, qconfig_spec=None, dtype=None, mapping=None, inplace=False, gen_quant=False):
    if qconfig_spec is not None:
        unknown = set(qconfig_spec) - QCONFIG_KEYS
        assert not unknown, "unknown qconfig keys %s" % sorted(unknown)
        assert isinstance(qconfig_spec.get("iteration", 1), int)
        assert len(qconfig_spec.get("mean", [0, 0, 0])) == 3 and len(qconfig_spec.get("std", [1, 1, 1])) == 3
    assert dtype in (None, "int8", "int16"), dtype
    record("quantize_dynamic_mlu", type(model).__name__, qconfig_spec=qconfig_spec, dtype=dtype, gen_quant=gen_quant)
    if gen_quant:
        calls = {"n": 0}

        def count(_module, _inp):
            calls["n"] += 1

        model.register_forward_pre_hook(count)
        model._fake_calls = calls
    return model
