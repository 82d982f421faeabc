"""Arrays on disk and the network input: reproducible .npz files and canvas -> input tensor.

Host ops and toolchain packages both use these, so calibration, the PyTorch reference and the
built model all see exactly the same numbers.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def save_npz(path, **arrays) -> None:
    """np.savez with fixed zip timestamps and order, so equal arrays give equal bytes (the engine hashes them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def load_npz(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def canvas_to_input(canvases: np.ndarray, scale: float = 1 / 255.0) -> np.ndarray:
    """(N, H, W, 3) uint8 letterboxed RGB -> (N, 3, H, W) float32 network input (x * scale).

    Division by 1/scale in float32, so scale 1/255 gives the very numbers of runtime.preprocess.to_tensor.
    """
    c = np.asarray(canvases)
    if c.ndim == 3:
        c = c[None]
    return np.ascontiguousarray(c.transpose(0, 3, 1, 2)).astype(np.float32) / np.float32(1.0 / float(scale))
