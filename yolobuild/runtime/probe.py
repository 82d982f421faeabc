"""A built model's raw outputs on the probe canvases: the loop every host-runnable toolchain's simulate shares.

The canvases are the letterboxed uint8 images prepare_inputs stored; each batch becomes the network
input with the same canvas_to_input the PyTorch reference used, a short last batch is padded and cut
back, and outputs.npz keeps the output names in the model's order (check_parity reads it). Each batch
is reported to `progress` (the op's ctx.progress) as "probe images" done of all."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import ToolchainError, one_line
from .arrays import canvas_to_input, save_npz


def probe_outputs(canvases: np.ndarray, scale: float, batch: int, names: Sequence[str],
                  infer: Callable[[np.ndarray], Sequence[np.ndarray]], tool: str,
                  progress: Callable[[int, int, str], None] | None = None) -> dict[str, np.ndarray]:
    """name -> outputs stacked over the canvases; `infer(x)` returns one array per name, in order."""
    results: list[list[np.ndarray]] = [[] for _ in names]
    for i in range(0, len(canvases), batch):
        x = canvas_to_input(canvases[i:i + batch], scale)
        real = len(x)
        if real < batch:
            x = np.concatenate([x, np.zeros((batch - real,) + x.shape[1:], x.dtype)], 0)
        try:
            outs = infer(x)
        except ToolchainError:
            raise
        except Exception as exc:
            raise ToolchainError(f"{tool}: inference failed on probe image {i}: {one_line(exc)}") from None
        for k, out in enumerate(outs):
            results[k].append(np.asarray(out)[:real])
        if progress is not None:
            progress(i + real, len(canvases), "probe images")
    return {n: np.concatenate(r, 0) for n, r in zip(names, results)}


def save_outputs(path, names: Sequence[str], arrays: dict[str, np.ndarray]) -> None:
    save_npz(path, __names__=np.asarray(list(names), dtype=str), **{n: arrays[n] for n in names})
