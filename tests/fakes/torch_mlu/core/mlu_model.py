"""Fake torch_mlu.core.mlu_model: the offline-model API genoff scripts call (strict signatures)."""
import torch

from record import record

_state = {"name": None, "version": None, "core_number": None, "input_format": 0}
_real_trace = torch.jit.trace


def set_core_number(core_number):
    assert isinstance(core_number, int) and 1 <= core_number <= 16, core_number
    _state["core_number"] = core_number
    record("set_core_number", core_number)


def set_core_version(version):
    assert version in ("MLU220", "MLU270"), version
    _state["version"] = version
    record("set_core_version", version)


def set_device(device):
    assert device == -1 or device >= 0
    record("set_device", device)


def set_input_format(input_format):
    assert input_format in (0, 1, 2, 3), input_format
    _state["input_format"] = input_format
    record("set_input_format", input_format)


def save_as_cambricon(name):
    assert isinstance(name, str)
    record("save_as_cambricon", name)
    if name:
        _state["name"] = name
    else:
        _state["name"] = None


def mlu_device():
    return torch.device("cpu")


class _Traced:
    """The MLU accepts a half input into a float model; the CPU stand-in casts it."""

    def __init__(self, module):
        self.module = module

    def __call__(self, x):
        out = self.module(x.float())
        if _state["name"]:  # the forward after save_as_cambricon(name) writes the offline model
            with open(_state["name"] + ".cambricon", "w") as f:
                f.write("fake offline model %s core %s x%s\n" % (_state["name"], _state["version"],
                                                                 _state["core_number"]))
            record("wrote", _state["name"] + ".cambricon", list(x.shape), str(x.dtype))
        return out


def _trace(module, example, check_trace=True, **kwargs):
    record("jit.trace", list(example.shape), str(example.dtype), check_trace=check_trace)
    return _Traced(_real_trace(module, example.float(), check_trace=False))


torch.jit.trace = _trace
