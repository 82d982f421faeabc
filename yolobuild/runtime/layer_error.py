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
layer already kept in float: never proposed again), "local_sqnr_db" (the layer alone, float against
quantized on the same inputs, in its worst channel, where the toolchain can run both: the ranking's key then).
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


def _by_channel(x: np.ndarray) -> np.ndarray:
    """(channels, values): axis 1 of an NC... tensor, else one channel."""
    if x.ndim < 3:
        return x.reshape(1, -1)
    return np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)


class LayerStats:
    """Sums over images per layer (so several images give one figure, weighted by energy), in the order
    layers were first added (the caller adds them in graph order)."""

    def __init__(self):
        self._rows: dict[str, dict] = {}
        self._local: dict[str, list] = {}

    def add(self, name: str, op: str, ref, got, inputs=None, quantized: bool | None = None, local=None) -> None:
        """`local`: (float, quantized) outputs of the layer alone on the same inputs (what quantizing it
        costs, its inputs' error aside), where the toolchain can compute both: its worst channel's SQNR is
        the ranking's key (below)."""
        if local is not None:
            self._add_local(name, *local)
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

    def _add_local(self, name: str, before, after) -> None:
        x, y = np.asarray(before, np.float64), np.asarray(after, np.float64)
        if x.shape != y.shape:
            return
        channels, noisy = _by_channel(x), _by_channel(y)
        sig = (channels ** 2).sum(1)
        err = ((channels - noisy) ** 2).sum(1)
        acc = self._local.setdefault(name, [np.zeros_like(sig), np.zeros_like(err)])
        if acc[0].shape == sig.shape:
            acc[0] += sig
            acc[1] += err

    def _local_db(self, name: str) -> float | None:
        if name not in self._local:
            return None
        sig, err = self._local[name]
        live = sig > 0
        if not live.any():
            return EXACT_DB
        return round(min(_db(float(s_), float(e_)) for s_, e_ in zip(sig[live], err[live])), 4)

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
            local = self._local_db(row["name"])
            if local is not None:
                layer["local_sqnr_db"] = local
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


def rank_key(layers: list[dict]) -> dict[str, float]:
    """name -> the dB the ranking sorts by (lower is worse): "local_sqnr_db" where layers carry it (the SQNR of
    the layer alone, float against quantized on the same inputs, in its worst channel: one scale for channels
    of very different ranges, a packed YOLO head above all, is what int8 loses most to, and energy-weighted
    figures hide it), else the own SQNR (the noise the layer adds itself; its whole SQNR without inputs)."""
    if any("local_sqnr_db" in layer for layer in layers):
        return {layer["name"]: float(layer.get("local_sqnr_db", EXACT_DB)) for layer in layers}
    return own_sqnr_db(layers)


def outputs(layers: list[dict]) -> set[str]:
    """The layers no other layer reads (the model's outputs: the head convolutions), where layers carry
    "inputs"; empty without them."""
    if not any(layer.get("inputs") for layer in layers):
        return set()
    read = {i for layer in layers for i in layer.get("inputs") or ()}
    return {layer["name"] for layer in layers if layer["name"] not in read}


def rank(layers: list[dict]) -> list[str]:
    """Names of the layers worth keeping in float, worst first (rank_key), layers already in float
    ("quantized": false) left out. Quantized output layers come first: their error reaches the detections
    with nothing after them to average it out, and a packed head's small channels (objectness, classes) are
    what int8 loses most to. Measured on an RK3588 demo with an int8 head: keeping the three outputs in
    float16 took the drop from 6.9 to 0.2 AP, keeping the 13 layers of lowest local SQNR (one output among
    them) left it at 5.0."""
    key = rank_key(layers)
    last = outputs(layers)
    candidates = [layer for layer in layers if layer.get("quantized", True)]
    order = sorted(candidates, key=lambda layer: (layer["name"] not in last, key[layer["name"]], layer["sqnr_db"]))
    return [layer["name"] for layer in order]


def write(path, doc: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=1, sort_keys=False))
