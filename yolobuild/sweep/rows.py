"""One row per job: what the summary files, the terminal table and report.html show.

Built from the job's manifest.json, so `yolobuild report DIR` can rebuild every row from the build
folders alone."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

FIELDS = ("boxes", "objectness", "class_scores")
ARTIFACT_KINDS = ("compile", "quantize", "handoff", "export")   # the shipped model: the last op that makes one


def _key(overrides, key: str) -> str | None:
    for o in overrides:
        if o.split("=", 1)[0].lstrip("+") == key:
            return o.split("=", 1)[1]
    return None


def failed_row(overrides, code: int, reason: str, started: float) -> dict[str, Any]:
    """A job that left no build folder (a user error, say): what its overrides tell."""
    return {"overrides": list(overrides), "status": "failed", "exit_code": code or 1, "reason": reason,
            "recipe": _key(overrides, "recipe"), "target": _key(overrides, "target"),
            "precision": _key(overrides, "precision"), "input": None, "build_dir": None,
            "started_at": started, "seconds": round(time.time() - started, 3), "ops": []}


def artifact_bytes(manifest: dict, build_dir: Path) -> int | None:
    """Size of the model that ships: the compile op's files in the build folder (else the export)."""
    by_kind = {op["kind"]: op for op in manifest.get("ops", [])}
    for kind in ARTIFACT_KINDS:
        op = by_kind.get(kind)
        if not op:
            continue
        total = 0
        for out in op.get("outputs", {}).values():
            p = build_dir / out["path"] if out.get("in") == "build" else None
            if p is None or not p.exists():
                continue
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        if total:
            return total
    return None


def latency(manifest: dict) -> tuple[float | None, str | None]:
    """The benchmark's p50 latency (ms) and the runtime it was measured on: the target's own runtime
    where the benchmark timed it (onnxruntime, openvino), else the fastest one that ran."""
    runtimes = {name: r for name, r in ((manifest.get("benchmark") or {}).get("runtimes") or {}).items()
                if isinstance(r, dict) and r.get("p50_ms") is not None}
    if not runtimes:
        return None, None
    name = manifest.get("target") if manifest.get("target") in runtimes else min(runtimes, key=lambda n: runtimes[n]["p50_ms"])
    return float(runtimes[name]["p50_ms"]), name


def row_from_manifest(overrides, code: int, manifest: dict, build_dir: Path, started: float | None) -> dict[str, Any]:
    from ..accuracy_figures import accuracy

    acc = accuracy(manifest) or {}   # labels, agreement (no labels) or a hand-off's preview: accuracy_kind says
    ops = [{"id": op["id"], "kind": op["kind"], "fingerprint": op.get("fingerprint"), "status": op["status"],
            "seconds": op.get("seconds") or 0.0, "started": op.get("started")} for op in manifest.get("ops", [])]
    failed = [op for op in manifest.get("ops", []) if op["status"] == "failed"]
    latency_ms, latency_runtime = latency(manifest)
    reason = manifest.get("error") or (failed[0].get("reason") if failed else None)
    return {
        "overrides": list(overrides), "status": manifest.get("status", "failed"),
        "exit_code": code, "reason": reason.splitlines()[0] if reason else None,
        "recipe": manifest.get("recipe"), "target": manifest.get("target"), "precision": manifest.get("precision"),
        "input": manifest.get("input"), "build": manifest.get("build"), "build_dir": str(build_dir),
        "parity": {f: (manifest.get("parity") or {}).get(f, {}).get("cosine") for f in FIELDS},
        "map_fp32": acc.get("fp32"),
        "map_built": acc.get("built"),
        "accuracy_kind": (f"preview ({acc['basis']})" if acc.get("kind") == "preview" else acc.get("kind")),
        "artifact_bytes": artifact_bytes(manifest, build_dir),
        "latency_ms": latency_ms, "latency_runtime": latency_runtime,
        "started_at": started,
        "seconds": round(sum(op["seconds"] for op in ops if op["status"] != "cached"), 3) if started is None
        else round(time.time() - started, 3),
        "ops_ran": sum(op["status"] in ("ran", "handoff") for op in ops),
        "ops_cached": sum(op["status"] == "cached" for op in ops),
        "seconds_saved": round(sum(op["seconds"] for op in ops if op["status"] == "cached"), 3),
        "ops": ops,
    }
