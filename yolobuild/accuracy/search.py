"""The accuracy searches: build, measure, change one toolchain option, build again (ordinary cached builds).

- `accuracy.calibration=auto`: one build per calibration algorithm the toolchain declares
  (toolchain.yaml `accuracy.calibration_choices`); the best by measured accuracy (labels, or agreement
  with the fp32 model) wins, never by cosine. A choice whose build fails is recorded with its reason and
  skipped.
- `accuracy.max_drop=D`: while the build loses more than D AP points, the layers whose quantization adds
  the most error (the build's own layer_error, runtime.layer_error.rank) join backend.options.keep_float,
  a growing set (the worst one or the few close to it, then three times as many, ...), up to
  accuracy.max_tries builds in all. The chosen list is written to `<build>/kept_float.yaml`.

Every try builds into the same build folder (the search changes options, not the overrides that name
the folder); the best try is built last (its ops cached), so the folder holds it. manifest.accuracy
records each try: its options, measured delta, seconds, whether it was all cached.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import EXIT_INTERRUPTED, EXIT_OK

KEPT_FLOAT_FILE = "kept_float.yaml"


def measured_delta(manifest: Mapping) -> tuple[float | None, str]:
    """(AP points the build lost against fp32, what it was measured against): labels' delta_mAP50_95, or
    without labels the agreement with the fp32 model's detections."""
    metrics = manifest.get("metrics") or {}
    if metrics.get("kind") == "agreement":
        value = metrics.get("delta_agreement")
        return (float(value) if value is not None else None), "agreement"
    value = metrics.get("delta_mAP50_95")
    return (float(value) if value is not None else None), "labels"


def _with_options(config: Mapping, changes: Mapping[str, Any]) -> Mapping:
    from ..validate import freeze, thaw

    cfg = thaw(config)
    cfg["backend"]["options"] = {**cfg["backend"]["options"], **changes}
    return freeze(cfg)


def _compile_options(plan) -> dict:
    for op in plan.ops:
        if op.kind in ("compile", "quantize") and isinstance(op.params.get("options"), Mapping):
            return dict(op.params["options"])
    return {}


class _Search:
    def __init__(self, config: Mapping, on_op, say: Callable[[str], None], on_event=None):
        from ..toolchains import registry

        self.config, self.on_op, self.say, self.on_event = config, on_op, say, on_event
        self.facts = registry.get(config["backend"]["toolchain"]).accuracy
        self.tries: list[dict] = []
        self.results: list[Any] = []     # BuildResult per try, same order

    def attempt(self, changes: Mapping[str, Any], label: str):
        from ..engine.build import run_build
        from ..plan.lower import lower

        config = _with_options(self.config, changes) if changes else self.config
        plan = lower(config)
        options = _compile_options(plan)
        self.say(f"accuracy try {len(self.tries) + 1}: {label}")
        start = time.monotonic()
        result = run_build(config, plan, self.on_op, self.on_event)
        seconds = round(time.monotonic() - start, 2)
        delta, against = measured_delta(result.manifest)
        ops = result.manifest.get("ops", [])
        entry = {"try": len(self.tries) + 1, "keep_float": list(options.get("keep_float") or ()),
                 "kept": len(options.get("keep_float") or ()), "delta": delta, "against": against,
                 "seconds": seconds, "cached": bool(ops) and all(o["status"] == "cached" for o in ops),
                 "status": result.manifest.get("status", "failed")}
        if self.facts.calibration_option:
            entry["calibration"] = options.get(self.facts.calibration_option)
        if result.exit_code != EXIT_OK:
            entry["reason"] = (result.message or "build failed").splitlines()[0][:300]
        self.tries.append(entry)
        self.results.append((config, plan, result))
        shown = f"{delta:+.2f} AP points ({against})" if delta is not None else "no accuracy measured"
        self.say(f"  -> {entry['status']}: {shown}" + (f"; {entry['reason']}" if "reason" in entry else ""))
        return entry

    def usable(self) -> list[int]:
        return [i for i, t in enumerate(self.tries) if t["status"] != "failed" and t["delta"] is not None]

    def best(self) -> int | None:
        ok = self.usable()
        return max(ok, key=lambda i: (self.tries[i]["delta"], -self.tries[i]["kept"])) if ok else None


def _first_sizes(layers: list[dict], ranked: list[str]) -> int:
    """How many layers the first keep_float try takes: the quantized output layers together (rank puts them
    first), else the worst one and those within 3 dB of it."""
    from ..runtime.layer_error import outputs, rank_key

    last = outputs(layers)
    if ranked and ranked[0] in last:
        return sum(1 for name in ranked if name in last)
    if not ranked:
        return 0
    key = rank_key(layers)
    worst = key[ranked[0]]
    return max(1, sum(1 for name in ranked if key[name] <= worst + 3.0))


def run(config: Mapping, plan, on_op=None, on_event=None, say: Callable[[str], None] = print):
    """Build `config`; with accuracy.calibration=auto or accuracy.max_drop, search as the module says.
    Returns the engine's BuildResult of the build left in the folder (its manifest carries the tries)."""
    from ..engine.build import run_build

    acc = config["accuracy"]
    searching = config["precision"]["calibration"] and (acc["max_drop"] is not None or acc["calibration"] == "auto")
    if not searching:
        return run_build(config, plan, on_op, on_event)
    s = _Search(config, on_op, say, on_event)
    max_tries = int(acc["max_tries"])
    if acc["calibration"] == "auto":
        option = s.facts.calibration_option
        for choice in s.facts.calibration_choices:
            s.attempt({option: choice}, f"{option}={choice}")
            if s.tries[-1]["status"] == "failed" and s.results[-1][2].exit_code == EXIT_INTERRUPTED:
                return s.results[-1][2]
    else:
        s.attempt({}, "as configured")
        if s.results[-1][2].exit_code == EXIT_INTERRUPTED:
            return s.results[-1][2]
    best = s.best()
    why = None
    bound = acc["max_drop"]
    if bound is not None:
        why = _keep_float_search(s, best, float(bound), max_tries)
        best = s.best()
    return _finish(s, best, bound, why)


def _keep_float_search(s: _Search, best: int | None, bound: float, max_tries: int) -> str | None:
    """Grow keep_float from the best try until its delta is within -bound; None when reached, else why not."""
    from ..runtime.layer_error import rank

    if best is None:
        return "no try built and measured (see each try's reason)"
    if s.tries[best]["delta"] >= -bound:
        return None
    option = s.facts.calibration_option
    calibration = {option: _compile_options(s.results[best][1]).get(option)} \
        if option and s.config["accuracy"]["calibration"] == "auto" else {}
    size = 0
    while len(s.tries) < max_tries:
        current = s.best()   # grow from the best try so far, ranked by its own layer errors
        layers = s.results[current][2].manifest.get("accuracy", {}).get("layers") or []
        if not layers:
            return "the build reports no per-layer error to choose layers from"
        kept = list(s.tries[current]["keep_float"])
        ranked = [name for name in rank(layers) if name not in kept]
        if not ranked:
            return f"every quantized layer is already kept in float ({len(kept)})"
        size = _first_sizes(layers, ranked) if size == 0 else size * 3
        limit = max(1, len([lay for lay in layers if lay.get("quantized", True)]) // 3)
        add = ranked[:min(size, limit)]
        if any(sorted(t["keep_float"]) == sorted(kept + add) for t in s.tries):
            return (f"keeping more than a third of the quantized layers in float ({limit}) is not int8 any more; "
                    "the best try is kept")
        s.attempt({**calibration, "keep_float": kept + add},
                  f"keep_float += {len(add)} layer(s), worst first: {', '.join(add[:3])}{' ...' if len(add) > 3 else ''}")
        last = s.tries[-1]
        if last["status"] != "failed" and last["delta"] is not None and last["delta"] >= -bound:
            return None
    b = s.best()
    return (f"accuracy.max_tries={max_tries} builds made; the best lost {-s.tries[b]['delta']:.2f} AP points "
            f"with {s.tries[b]['kept']} layer(s) kept in float (bound {bound:g}); raise accuracy.max_tries "
            "or accuracy.max_drop, or try accuracy.calibration=auto")


def _finish(s: _Search, best: int | None, bound: float | None, why: str | None):
    from ..engine.build import run_build

    last = len(s.tries) - 1
    if best is None:
        config, plan, result = s.results[last]
    elif best != last:   # the best try goes back into the folder (its ops are cached: seconds)
        config, plan, _ = s.results[best]
        s.say(f"accuracy: keeping try {best + 1}")
        result = run_build(config, plan, s.on_op, s.on_event)
    else:
        config, plan, result = s.results[best]
    chosen = s.tries[best] if best is not None else None
    summary: dict[str, Any] = {"tries": s.tries, "chosen_try": best + 1 if best is not None else None}
    if bound is not None:
        summary["max_drop"] = bound
        summary["within_bound"] = bool(chosen and chosen["delta"] is not None and chosen["delta"] >= -bound)
        if not summary["within_bound"]:
            summary["reached"] = chosen["delta"] if chosen else None
            summary["why"] = why or "no try was built and measured"
    if chosen and chosen["keep_float"] and bound is not None:
        path = result.build_dir / KEPT_FLOAT_FILE
        _write_file(path, config, chosen, bound)
        summary["kept_float_file"] = KEPT_FLOAT_FILE
        s.say(f"accuracy: {len(chosen['keep_float'])} layer(s) kept in float, listed in {path}; commit it and "
              f"build with accuracy.kept_float=PATH/{KEPT_FLOAT_FILE}: the next build reuses it (cached, no search)")
    if best is not None and s.config["accuracy"]["calibration"] == "auto":
        s.say(f"accuracy: calibration {chosen.get('calibration')} chosen by measured accuracy "
              f"({chosen['delta']:+.2f} AP points)")
    if bound is not None and not summary["within_bound"]:
        s.say(f"accuracy: bound {bound:g} not reached: {summary['why']}")
    _rewrite(result, summary)
    return result


def _write_file(path: Path, config: Mapping, chosen: dict, bound: float) -> None:
    from .kept_float import write

    header = [f"layers yolobuild keeps in float for {config['recipe']} on {config['target']['name']} "
              f"({config['precision']['name']}): found by accuracy.max_drop={bound:g}",
              f"measured: {chosen['delta']:+.2f} AP points against fp32 ({chosen['against']}) with these kept",
              "review, commit, and build with accuracy.kept_float=<this file>: the layers are then kept directly"]
    write(path, config["backend"]["toolchain"], chosen["keep_float"], header)


def _rewrite(result, summary: dict) -> None:
    """The final build folder's manifest and reports, with the search's record added."""
    import json

    from ..engine.cache import write_atomic
    from ..report import render_report
    from ..report_html import render_html

    manifest = result.manifest
    manifest["accuracy"] = {**(manifest.get("accuracy") or {}), **summary}
    folder = result.build_dir
    if not (folder / "manifest.json").is_file():
        return
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2))
    write_atomic(folder / "report.md", render_report(manifest))
    write_atomic(folder / "report.html", render_html(manifest, folder))
