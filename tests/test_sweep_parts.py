"""The sweep's parts without a build: which overrides name a build folder, the refusal to replace another
configuration's build, rows and summaries from manifests, the Pareto front, report.html, and the
one-line errors (a launcher not installed, `yolobuild report` on a folder that is no sweep)."""
from __future__ import annotations

import csv
import importlib.util
import json
import re

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
