"""`yolobuild benchmark BUILD_DIR [--runs N] [--warmup N] [--threads N]`: time a build's artifact afresh.

Prints p50 / p90 latency and throughput per runtime this machine has, and records them where the
benchmark op does: BUILD_DIR/benchmark.json, manifest.benchmark, report.md and report.html.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

USAGE = "benchmark: say `yolobuild benchmark BUILD_DIR [--runs N] [--warmup N] [--threads N]` (command line)"


def _parse(argv: list[str]) -> tuple[Path, dict]:
    opts = {"--runs": 30, "--warmup": 5, "--threads": 0}
    folders = []
    it = iter(argv)
    for a in it:
        key, _, value = a.partition("=")
        if key in opts:
            value = value or next(it, "")
            if not value.isdigit() or (key == "--runs" and int(value) < 1):
                raise UserError(f"benchmark: {key} {value!r} is not allowed; allowed: a whole number"
                                f"{' >= 1' if key == '--runs' else ''} (command line)")
            opts[key] = int(value)
        elif a.startswith("-"):
            raise UserError(f"benchmark: {a} is not an option of it; allowed: --runs, --warmup, --threads (command line)")
        else:
            folders.append(Path(a))
    if len(folders) != 1:
        raise UserError(USAGE)
    build = folders[0]
    if not (build / "deploy" / "deploy.json").is_file():
        raise UserError(f"benchmark: {build} is not a build folder with deploy/deploy.json (command line)")
    return build, {k.lstrip("-"): v for k, v in opts.items()}


def _record(build: Path, figures: dict) -> None:
    from ..engine.cache import write_atomic
    from ..report import render_report
    from ..report_html import render_html

    write_atomic(build / "benchmark.json", json.dumps(figures, indent=2) + "\n")
    try:
        manifest = json.loads((build / "manifest.json").read_text())
    except (OSError, ValueError):
        return
    manifest["benchmark"] = figures
    write_atomic(build / "manifest.json", json.dumps(manifest, indent=2))
    write_atomic(build / "report.md", render_report(manifest))
    write_atomic(build / "report.html", render_html(manifest, build))


def run(argv: list[str], say) -> int:
    from .timing import benchmark_deploy, runtimes_for

    build, opts = _parse(argv)
    spec = json.loads((build / "deploy" / "deploy.json").read_text())
    if not runtimes_for(build / "deploy" / spec["model"]["file"]):
        say(f"{spec['model']['file']} runs only on its board: copy {build / 'deploy'} there and run "
            "`sh benchmark.sh` (the same figures, timed by the board's runtime)")
        return 0
    # a quantized build's folder keeps the float ONNX it came from (model.onnx): timed beside it, in turn
    quantized = spec["model"].get("precision") not in (None, "fp32", "fp16")
    float_model = build / "model.onnx" if quantized and (build / "model.onnx").is_file() else None
    figures = benchmark_deploy(build / "deploy", opts["runs"], opts["warmup"], opts["threads"], float_model=float_model)
    for name, r in figures["runtimes"].items():
        if "error" in r:
            say(f"{name}: cannot run {figures['model']}: {r['error']}")
        else:
            against = f", {r['vs_float']:.2f}x the float model's p50 (timed in turn)" if "vs_float" in r else ""
            say(f"{name}: {figures['model']} batch 1, {r['runs']} runs after {r['warmup']} warm-up, {r['threads']} "
                f"threads: p50 {r['p50_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, {r['throughput_ips']:.1f} images/s"
                + against)
    _record(build, figures)
    return 0 if any("p50_ms" in r for r in figures["runtimes"].values()) else 3
