"""A build's accuracy as every table shows it: mAP against labels, agreement with PyTorch fp32 where the
evaluation images have no labels, or a hand-off build's host int8 preview, each labelled for what it is.

The build summary, report.md, report.html and the sweep's tables read it from the manifest here, so
an agreement figure is never shown as a mAP, nor a preview as a compiled model's result.
"""
from __future__ import annotations

from typing import Any

KINDS = {"labels": "mAP50-95", "agreement": "agreement mAP50-95 with PyTorch fp32",
         "preview": "mAP50-95 of the host int8 preview"}


def _preview(manifest: dict) -> dict | None:
    for op in manifest.get("ops") or ():
        pm = ((op.get("results") or {}).get("preview") or {}).get("metrics")
        if pm and pm.get("preview_int8"):
            return pm
    return None


def accuracy(manifest: dict) -> dict[str, Any] | None:
    """{"kind": labels|agreement|preview, "fp32", "built" (mAP50-95), "fp32_50", "built_50" (mAP50),
    "delta" (AP points), "basis": labels|agreement} or None when the build measured none."""
    m = manifest.get("metrics") or {}
    if m.get("kind") == "agreement" and "agreement_mAP50_95" in m:
        ref = m.get("fp32_self_agreement") or {}
        return {"kind": "agreement", "basis": "agreement", "fp32": ref.get("mAP50_95"), "built": m["agreement_mAP50_95"],
                "fp32_50": ref.get("mAP50"), "built_50": m.get("agreement_mAP50"), "delta": m.get("delta_agreement")}
    if m.get("built"):
        ref, got = m.get("pytorch_fp32") or {}, m["built"]
        return {"kind": "labels", "basis": "labels", "fp32": ref.get("mAP50_95"), "built": got.get("mAP50_95"),
                "fp32_50": ref.get("mAP50"), "built_50": got.get("mAP50"), "delta": m.get("delta_mAP50_95")}
    pm = _preview(manifest)
    if pm:
        agreement = pm.get("kind") == "agreement"
        ref = (pm.get("fp32_self_agreement") if agreement else pm.get("pytorch_fp32")) or {}
        return {"kind": "preview", "basis": "agreement" if agreement else "labels", "fp32": ref.get("mAP50_95"),
                "built": pm["preview_int8"]["mAP50_95"], "fp32_50": ref.get("mAP50"),
                "built_50": pm["preview_int8"].get("mAP50"),
                "delta": pm.get("delta_agreement") if agreement else pm.get("delta_mAP50_95")}
    return None


def label(fig: dict) -> str:
    """What the figure is, in a few words: the suffix a table cell carries."""
    if fig["kind"] == "preview":
        return "preview, agreement" if fig["basis"] == "agreement" else "preview"
    return "agreement" if fig["kind"] == "agreement" else ""


def cell(fig: dict | None) -> str:
    """'0.4921 → 0.4929', '1.0000 → 0.9650 (agreement)', '0.4921 → 0.4290 (preview)'; '-' for none."""
    if not fig or fig.get("built") is None:
        return "-"
    ref = f"{fig['fp32']:.4f}" if fig.get("fp32") is not None else "?"
    text = f"{ref} → {fig['built']:.4f}"
    return f"{text} ({label(fig)})" if label(fig) else text
