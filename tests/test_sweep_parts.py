"""The sweep's parts without a build: which overrides name a build folder, the refusal to replace another
configuration's build, rows and summaries from manifests, the Pareto front, report.html, and the
one-line errors (a launcher not installed, `yolobuild report` on a folder that is no sweep)."""
from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

import pytest

from yolobuild.engine.build import refuse_another_configuration
from yolobuild.errors import UserError
from yolobuild.sweep import html, plots
from yolobuild.sweep.folder import point_latest, write_summaries
from yolobuild.sweep.rows import row_from_manifest
from yolobuild.variant import identity, suffix

from .conftest import cli_in_process


def test_identity_keeps_what_the_name_does_not_show():
    ours = identity(["recipe=demo", "target=onnxruntime", "precision=int8", "input.width=256", "workspace.path=ws",
                     "cache.dir=c", "hydra/launcher=joblib", "backend.options.calibrate_method=minmax", "+x.y=1"])
    assert ours == ["target.backend_options.calibrate_method=minmax", "x.y=1"]
    assert suffix([]) == "" and re.fullmatch(r"-[0-9a-f]{8}", suffix(ours))
    assert suffix(["target.backend_options.calibrate_method=minmax"]) != suffix(["target.backend_options.calibrate_method=entropy"])


def test_two_calibrate_methods_name_two_folders(tmp_path):
    names = set()
    for method in ("minmax", "entropy"):
        code, out, err = cli_in_process("validate", "precision=int8", f"backend.options.calibrate_method={method}",
                                        f"workspace.path={tmp_path}")
        assert code == 0, err
        names.add(out.split()[1])
    assert len(names) == 2 and all(n.startswith("demo_onnxruntime_int8_320x320-") for n in names)


def test_a_build_refuses_a_folder_holding_another_configuration(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"overrides": ["target.backend_options.calibrate_method=minmax"]}))
    refuse_another_configuration({"overrides": ("target.backend_options.calibrate_method=minmax",)}, tmp_path)
    with pytest.raises(UserError, match="holds another configuration's build"):
        refuse_another_configuration({"overrides": ("target.backend_options.calibrate_method=entropy",)}, tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "compiled"}))   # before overrides were recorded
    refuse_another_configuration({"overrides": ("x=1",)}, tmp_path)


def test_pareto_front_keeps_only_unbeaten_points():
    points = [(7.1, 0.935), (2.1, 0.931), (7.1, 0.915), (2.1, 0.906), (5.0, 0.92)]
    assert sorted(plots.pareto_front(points)) == [0, 1]


def _manifest(target, precision, width, fingerprints, status="compiled"):
    ops = [{"id": k, "kind": k, "fingerprint": fp, "status": st, "seconds": 2.0, "started": float(i), "outputs": {}}
           for i, (k, fp, st) in enumerate(fingerprints)]
    return {"status": status, "recipe": "demo", "target": target, "precision": precision,
            "input": {"height": 320, "width": width}, "ops": ops, "error": None,
            "parity": {f: {"cosine": 0.9999} for f in ("boxes", "objectness", "class_scores")},
            "metrics": {"pytorch_fp32": {"mAP50_95": 0.93}, "built": {"mAP50_95": 0.92}}}


def _summary(tmp_path):
    rows = []
    for job, (precision, status) in enumerate((("fp32", "ran"), ("int8", "cached"))):
        m = _manifest("onnxruntime", precision, 320, [("export_onnx", "f" * 64, status), (f"q{job}", f"{job}" * 64, "ran")])
        row = row_from_manifest([f"precision={precision}"], 0, m, tmp_path, 1000.0 + job)
        rows.append({"job": job, **row, "artifact_bytes": 1_000_000 * (job + 1)})
    rows.append({"job": 2, "overrides": ["target=mlu220"], "status": "failed", "exit_code": 2, "target": "mlu220",
                 "precision": "fp32", "reason": "precision.name: 'fp32' is not supported by target mlu220",
                 "input": None, "ops": [], "started_at": 1000.0, "seconds": 1.0})
    return {"dir": str(tmp_path), "overrides": ["--multirun"], "launcher": "basic", "seconds": 3.0, "jobs": rows}


def test_summary_files_hold_every_job_and_the_failed_reason(tmp_path):
    summary = _summary(tmp_path)
    write_summaries(tmp_path, summary)
    table = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["status"] for r in table] == ["compiled", "compiled", "failed"]
    assert table[2]["reason"].startswith("precision.name") and table[1]["ops_cached"] == "1"
    assert float(table[1]["seconds_saved"]) == 2.0 and table[0]["parity_boxes"] == "0.9999"
    assert json.loads((tmp_path / "summary.json").read_text())["jobs"][2]["exit_code"] == 2


def test_report_html_is_self_contained_with_its_plots(tmp_path):
    page = html.render(_summary(tmp_path))
    assert page.count("<svg") == 3 and "Pareto front" in page and "not supported by target mlu220" in page
    assert not re.search(r"https?://|//[a-z]|<script|<link|@import|url\(", page)
    assert "(an earlier build)" not in page and "ran in job" in page   # export_onnx: ran in job 0, reused by job 1
    assert "Accuracy against latency" in page and "Nothing to plot" in page   # no job ran a benchmark


def _benchmarked(manifest: dict, p50: dict) -> dict:
    """The manifest with a benchmark op's figures (manifest.benchmark), one p50 per runtime."""
    runtimes = {name: {"p50_ms": ms, "p90_ms": ms * 1.2, "batch": 1} for name, ms in p50.items()}
    return {**manifest, "benchmark": {"model": "model.ort.onnx", "runtimes": runtimes}}


def test_latency_is_the_targets_own_runtime_else_the_fastest(tmp_path):
    m = _benchmarked(_manifest("onnxruntime", "int8", 320, []), {"openvino": 8.0, "onnxruntime": 11.5})
    row = row_from_manifest([], 0, m, tmp_path, 0.0)
    assert (row["latency_ms"], row["latency_runtime"]) == (11.5, "onnxruntime")
    m = _benchmarked(_manifest("rk3588", "int8", 320, []), {"openvino": 8.0, "onnxruntime": 11.5})
    assert row_from_manifest([], 0, m, tmp_path, 0.0)["latency_runtime"] == "openvino"
    assert row_from_manifest([], 0, _manifest("rk3588", "int8", 320, []), tmp_path, 0.0)["latency_ms"] is None


def _latency_summary(tmp_path) -> dict:
    """Six benchmarked jobs (two targets × fp32/int8, two input sizes) and the failed one."""
    summary = _summary(tmp_path)
    rows = []
    figures = [("onnxruntime", "fp32", 320, 0.935, 24.0, 7.1), ("onnxruntime", "int8", 320, 0.929, 12.5, 2.1),
               ("openvino", "fp32", 320, 0.935, 18.0, 7.0), ("openvino", "int8", 320, 0.933, 9.5, 2.0),
               ("onnxruntime", "int8", 256, 0.901, 8.0, 2.1), ("openvino", "fp16", 256, 0.915, 14.0, 3.6)]
    for job, (target, precision, width, mAP, p50, mb) in enumerate(figures):
        m = _benchmarked(_manifest(target, precision, width, [("export_onnx", "f" * 64, "ran" if job == 0 else "cached")]),
                         {target: p50})
        m["metrics"]["built"]["mAP50_95"] = mAP
        row = row_from_manifest([f"target={target}", f"precision={precision}", f"input.width={width}"], 0, m,
                                tmp_path, 1000.0 + job)
        rows.append({"job": job, **row, "artifact_bytes": int(mb * 1e6)})
    return {**summary, "jobs": rows + [{**summary["jobs"][2], "job": len(rows)}]}


def test_accuracy_against_latency_marks_the_pareto_front(tmp_path):
    svg = plots.accuracy_vs_latency(_latency_summary(tmp_path)["jobs"])
    front = re.findall(r"on the Pareto front: job (\d+)", svg)
    # by hand: 8.0 ms 0.901 (#4), 9.5 ms 0.933 (#3), 18.0 ms 0.935 (#2); the others are slower and no better
    assert sorted(map(int, front)) == [2, 3, 4]
    assert "p50 latency" in svg and "openvino · int8" in svg


def _chromium():
    import shutil

    return next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


def test_report_html_with_latency_draws_in_headless_chromium(tmp_path):
    import os
    import subprocess

    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium): report.html checked as text only")
    page = tmp_path / "report.html"
    html.write_report(page, _latency_summary(tmp_path))
    assert page.read_text().count("<svg") == 4
    shot = Path(os.environ.get("YOLOBUILD_SWEEP_SHOT") or tmp_path / "report.png")
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert shot.is_file(), r.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    # the two accuracy plots sit one above the other, each with its own coloured points
    colours = image.getcolors(maxcolors=1 << 20) or []
    coloured = sum(n for n, (red, green, blue) in colours if max(red, green, blue) - min(red, green, blue) > 60)
    assert len(colours) > 50 and coloured > 2000, "the plots drew nothing"


def test_latest_points_at_the_newest_sweep(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        point_latest(tmp_path / name)
    assert (tmp_path / "latest").resolve() == (tmp_path / "b").resolve()


def test_report_on_a_folder_that_is_no_sweep_is_one_line(tmp_path):
    code, _, err = cli_in_process("report", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "holds no sweep jobs" in err


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:   # not even the hydra_plugins namespace
        return False


@pytest.mark.skipif(_installed("hydra_plugins.hydra_joblib_launcher"),
                    reason="the joblib launcher is installed here: its absence cannot be shown")
def test_a_missing_launcher_names_its_extra(tmp_path):
    code, _, err = cli_in_process("--multirun", "precision=fp32,int8", "hydra/launcher=joblib",
                                  f"workspace.path={tmp_path}")
    assert code == 2 and err.count("\n") == 1 and 'pip install "yolobuild[joblib]"' in err
    assert not any((tmp_path / "sweeps").glob("*/summary.json"))


def test_a_single_build_never_imports_the_sweep_machinery(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from yolobuild.cli import main; main(['validate', 'workspace.path=%s']); "
            "print(sorted(m for m in sys.modules if m.startswith(('yolobuild.sweep', 'hydra_plugins'))))" % tmp_path)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr
