"""--multirun for real on Hydra's launchers (pytest -m sweep; slow: real builds): joblib with 2 workers,
Ray on a local cluster, submitit's local executor; shared ops run once across jobs; a failing job
never stops the others; a fully cached sweep imports no torch; report.html drawn in headless Chromium.

Small builds (96x96 input, few images) keep it to minutes. A launcher whose extra is not installed is
skipped, naming the extra."""
from __future__ import annotations

import collections
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_cli

pytestmark = pytest.mark.sweep

SMALL = ("recipe=demo", "target=onnxruntime", "input.height=96", "dataset.generator.eval_count=8",
         "dataset.generator.calib_count=8", "dataset.calib.count=8", "check.parity_images=2")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def needs(plugin: str, extra: str):
    return pytest.mark.skipif(not _installed(f"hydra_plugins.{plugin}"),
                              reason=f'the {extra} extra is not installed: pip install "yolobuild[{extra}]"')


def sweep(root: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    r = run_cli("--multirun", *SMALL, *args, f"workspace.path={root / 'ws'}", f"cache.dir={root / 'cache'}", cwd=root)
    latest = root / "ws" / "sweeps" / "latest" / "summary.json"
    return r, (json.loads(latest.read_text()) if latest.exists() else {})


def ran_counts(summary: dict) -> collections.Counter:
    ran = collections.Counter()
    for job in summary["jobs"]:
        for op in json.loads((Path(job["build_dir"]) / "manifest.json").read_text())["ops"]:
            ran[op["fingerprint"]] += op["status"] == "ran"
    return ran


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory):
    if not _installed("hydra_plugins.hydra_joblib_launcher"):
        pytest.skip('the joblib extra is not installed: pip install "yolobuild[joblib]"')
    root = tmp_path_factory.mktemp("joblib")
    r, summary = sweep(root, "precision=fp32,int8", "input.width=96,128", "hydra/launcher=joblib",
                       "hydra.launcher.n_jobs=2")
    return root, r, summary


def test_joblib_two_workers_build_every_job_and_share_ops(joblib_sweep):
    _, r, summary = joblib_sweep
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert [j["status"] for j in summary["jobs"]] == ["compiled"] * 4 and summary["launcher"] == "joblib"
    ran = ran_counts(summary)
    assert set(ran.values()) == {1}, {fp[:12]: n for fp, n in ran.items() if n != 1}
    assert sum(j["ops_cached"] for j in summary["jobs"]) > 0   # jobs reused what another job ran
    folders = {j["build_dir"] for j in summary["jobs"]}
    assert len(folders) == 4


def test_fully_cached_sweep_imports_no_torch(joblib_sweep):
    root, _, _ = joblib_sweep
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "yolobuild", "--multirun", *SMALL,
                        "precision=fp32,int8", "input.width=96,128", f"workspace.path={root / 'ws'}",
                        f"cache.dir={root / 'cache'}"], capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert not [line for line in r.stderr.splitlines() if line.rstrip().endswith("| torch")]
    summary = json.loads((root / "ws" / "sweeps" / "latest" / "summary.json").read_text())
    assert all(j["ops_ran"] == 0 and j["seconds_saved"] > 0 for j in summary["jobs"])


def test_report_html_draws_in_headless_chromium(joblib_sweep, tmp_path):
    root, _, _ = joblib_sweep
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    page = root / "ws" / "sweeps" / "latest" / "report.html"
    text = page.read_text()
    assert text.count("<svg") == 4   # accuracy against size and against latency (the benchmark ran), parity, ops
    assert not re.search(r"https?://|<script|<link|@import|url\(", text)   # loads nothing from anywhere
    shot = tmp_path / "report.png"
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        f"--screenshot={shot}", "--window-size=1200,3200", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert shot.is_file(), r.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    coloured = sum(n for n, (red, green, blue) in colours if max(red, green, blue) - min(red, green, blue) > 60)
    assert len(colours) > 50 and coloured > 2000   # the plots drew: a page of text alone has no colour


def test_yolobuild_report_rebuilds_the_view(joblib_sweep):
    root, _, _ = joblib_sweep
    latest = root / "ws" / "sweeps" / "latest"
    (latest / "report.html").unlink()
    r = run_cli("report", str(latest), cwd=root)
    assert r.returncode == 0 and (latest / "report.html").read_text().count("<svg") == 4


@needs("hydra_ray_launcher", "ray")
def test_ray_local_cluster(tmp_path):
    r, summary = sweep(tmp_path, "precision=fp32", "input.width=96,128", "hydra/launcher=ray")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert [j["status"] for j in summary["jobs"]] == ["compiled"] * 2 and summary["launcher"] == "ray"
    assert set(ran_counts(summary).values()) == {1}


@needs("hydra_submitit_launcher", "slurm")
def test_submitit_local_executor(tmp_path):
    r, summary = sweep(tmp_path, "precision=fp32", "input.width=96,128", "hydra/launcher=submitit_local")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert [j["status"] for j in summary["jobs"]] == ["compiled"] * 2


def test_a_failing_job_never_stops_the_sweep(tmp_path):
    r, summary = sweep(tmp_path, "input.width=96", "target=onnxruntime,mlu220", "precision=fp32")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    status = {j["target"]: j for j in summary["jobs"]}
    assert status["onnxruntime"]["status"] == "compiled"
    assert status["mlu220"]["status"] == "failed" and "not supported by target mlu220" in status["mlu220"]["reason"]
    table = r.stdout[r.stdout.index("yolobuild sweep:"):]
    assert "precision.name:" in table and "failed" in table   # the reason on the job's row of the table


def test_calibrate_methods_keep_their_own_folders(tmp_path):
    r, summary = sweep(tmp_path, "input.width=96", "precision=int8", "backend.options.calibrate_method=minmax,percentile")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    folders = {j["build_dir"] for j in summary["jobs"]}
    assert len(folders) == 2
    for job in summary["jobs"]:
        method = next(o.split("=")[1] for o in job["overrides"] if "calibrate_method" in o)
        manifest = json.loads((Path(job["build_dir"]) / "manifest.json").read_text())
        assert f"target.backend_options.calibrate_method={method}" in manifest["overrides"]
        assert any((op.get("key") or {}).get("params", {}).get("options", {}).get("calibrate_method") == method
                   or f'"calibrate_method": "{method}"' in json.dumps(op.get("key")) for op in manifest["ops"])


@needs("hydra_optuna_sweeper", "optuna")
def test_optuna_sweeper_searches_with_the_built_map(joblib_sweep):
    root, _, _ = joblib_sweep   # its builds are cached: the search reuses them
    r = run_cli("--multirun", *SMALL, "precision=fp32", "input.width=choice(96,128)", "hydra/sweeper=optuna",
                "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=maximize", f"workspace.path={root / 'ws'}",
                f"cache.dir={root / 'cache'}", cwd=root)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    latest = root / "ws" / "sweeps" / "latest"
    assert (latest / "optimization_results.yaml").is_file()
    assert all(j["status"] == "compiled" for j in json.loads((latest / "summary.json").read_text())["jobs"])
