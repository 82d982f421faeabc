"""Per-layer error of a quantized model against its float model: cosine and SQNR per layer, and the ranking.

numpy only and no other yolobuild import, so the vendor workers (rknn-toolkit2, TPU-MLIR), which run in
their own environments, compute the same figures the host toolchains do.

    stats = LayerStats()
    for image in probe:                       # per image, per layer: the float tensor and the quantized one
        stats.add("conv_3", "Conv", ref, got, inputs=["conv_2"], quantized=True)
    doc = stats.document("onnxruntime intermediate outputs", images=4)   # layers.json

layers.json: {"method", "images", "layers": [{"name", "op", "cosine", "sqnr_db", ...}] (graph order),
"worst": [names, worst first]}. Optional per-layer keys: "inputs" (the reported layers feeding it: the
ranking then charges a layer only the error it adds, not what it inherits; "own_sqnr_db" says how much) and "quantized" (false for a
layer already kept in float: never proposed again).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

# SQNR of an exact match (no noise): a finite ceiling so layers.json stays plain JSON
EXACT_DB = 200.0


def cosine(ref, got) -> float:
    """Cosine similarity of two tensors taken as flat vectors (1.0 when both are all zero)."""
    a, b = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    na, nb = float(np.sqrt(a @ a)), float(np.sqrt(b @ b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(a @ b) / (na * nb)


def sqnr_db(ref, got) -> float:
    """10 log10(sum ref^2 / sum (ref - got)^2), in dB; EXACT_DB when got equals ref."""
    a, b = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    return _db(float(a @ a), float((a - b) @ (a - b)))


def _db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return EXACT_DB
    if signal <= 0.0:
        return -EXACT_DB
    return float(min(EXACT_DB, max(-EXACT_DB, 10.0 * math.log10(signal / noise))))


class LayerStats:
    """Sums over images per layer (so several images give one figure, weighted by energy), in the order
    layers were first added (the caller adds them in graph order)."""

    def __init__(self):
        self._rows: dict[str, dict] = {}

    def add(self, name: str, op: str, ref, got, inputs=None, quantized: bool | None = None) -> None:
        a, b = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
        if a.shape != b.shape:
            raise ValueError(f"layer {name}: float tensor has {a.size} values, quantized {b.size}")
        finite = np.isfinite(a) & np.isfinite(b)
        a, b = a[finite], b[finite]
        row = self._rows.setdefault(name, {"name": name, "op": op, "ab": 0.0, "aa": 0.0, "bb": 0.0, "ee": 0.0,
                                           "inputs": list(inputs) if inputs is not None else None,
                                           "quantized": quantized})
        d = a - b
        row["ab"] += float(a @ b)
        row["aa"] += float(a @ a)
        row["bb"] += float(b @ b)
        row["ee"] += float(d @ d)

    def layers(self) -> list[dict]:
        out = []
        for row in self._rows.values():
            na, nb = math.sqrt(row["aa"]), math.sqrt(row["bb"])
            cos = 1.0 if na == 0 and nb == 0 else (0.0 if na == 0 or nb == 0 else row["ab"] / (na * nb))
            layer = {"name": row["name"], "op": row["op"], "cosine": round(float(cos), 8),
                     "sqnr_db": round(_db(row["aa"], row["ee"]), 4)}
            if row["inputs"] is not None:
                layer["inputs"] = [i for i in row["inputs"] if i in self._rows]
            if row["quantized"] is not None:
                layer["quantized"] = bool(row["quantized"])
            out.append(layer)
        return out

    def document(self, method: str, images: int, worst: int = 10) -> dict:
        layers = self.layers()
        own = own_sqnr_db(layers)
        for layer in layers:
            layer["own_sqnr_db"] = own[layer["name"]]
        return {"method": method, "images": int(images), "layers": layers, "worst": rank(layers)[:worst]}


def own_sqnr_db(layers: list[dict]) -> dict[str, float]:
    """name -> the SQNR of the noise a layer adds itself (dB), not the noise it inherits: noise-to-signal
    ratios add, so its own is its output's minus that of its noisiest input. Without "inputs" a layer is
    charged its whole error (own = its SQNR)."""
    by_name = {layer["name"]: layer for layer in layers}
    out = {}
    for layer in layers:
        ins = [by_name[i]["sqnr_db"] for i in layer.get("inputs") or () if i in by_name]
        inherited = 10.0 ** (-min(ins) / 10.0) if ins else 0.0
        own = 10.0 ** (-layer["sqnr_db"] / 10.0) - inherited
        out[layer["name"]] = round(_db(1.0, own), 4)
    return out


def rank(layers: list[dict]) -> list[str]:
    """Names of the layers worth keeping in float, worst first: the lowest own SQNR (the noise the layer adds
    itself; its whole SQNR when layers carry no inputs), layers already in float ("quantized": false) left out."""
    own = own_sqnr_db(layers)
    candidates = [layer for layer in layers if layer.get("quantized", True)]
    order = sorted(candidates, key=lambda layer: (own[layer["name"]], layer["sqnr_db"]))
    return [layer["name"] for layer in order]


def write(path, doc: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=1, sort_keys=False))
