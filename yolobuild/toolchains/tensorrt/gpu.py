"""Is there an NVIDIA GPU here? Asked of the CUDA driver through ctypes: no tensorrt, no cuda-python,
so a machine without one fails in milliseconds with a sentence instead of an import error."""
from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass

DRIVER_LIBRARY = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
_COMPUTE_MAJOR, _COMPUTE_MINOR = 75, 76   # CUdevice_attribute values, stable since CUDA 5


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: str   # "8.9": what a serialized engine is tied to


class NoGpu(Exception):
    """Why no NVIDIA GPU can be used here, as one clause."""


def _error_name(driver, code: int) -> str:
    name = ctypes.c_char_p()
    try:
        if driver.cuGetErrorName(code, ctypes.byref(name)) == 0 and name.value:
            return name.value.decode()
    except AttributeError:
        pass
    return f"CUresult {code}"


def find_gpus(library: str | None = None) -> list[Gpu]:
    """Every GPU the driver sees; raises NoGpu when the driver is missing or sees none."""
    library = library or DRIVER_LIBRARY
    try:
        driver = ctypes.CDLL(library)
    except OSError:
        raise NoGpu(f"no NVIDIA driver: {library} not found") from None
    code = driver.cuInit(0)
    if code != 0:
        raise NoGpu(f"the NVIDIA driver sees no usable GPU (cuInit: {_error_name(driver, code)})")
    count = ctypes.c_int(0)
    code = driver.cuDeviceGetCount(ctypes.byref(count))
    if code != 0 or count.value < 1:
        raise NoGpu("the NVIDIA driver sees no GPU" + (f" (cuDeviceGetCount: {_error_name(driver, code)})"
                                                        if code else ""))
    return [_describe(driver, i) for i in range(count.value)]


def _describe(driver, index: int) -> Gpu:
    device = ctypes.c_int(0)
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    if driver.cuDeviceGet(ctypes.byref(device), index) != 0:
        return Gpu(index, "unknown", "unknown")
    driver.cuDeviceGetName(name, len(name), device)
    driver.cuDeviceGetAttribute(ctypes.byref(major), _COMPUTE_MAJOR, device)
    driver.cuDeviceGetAttribute(ctypes.byref(minor), _COMPUTE_MINOR, device)
    return Gpu(index, name.value.decode(errors="replace") or "unknown", f"{major.value}.{minor.value}")
