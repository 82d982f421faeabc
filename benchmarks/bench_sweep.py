"""Sweep bars, measured in one run (fresh `python -m yolobuild` processes, private caches):

  the demo 4-job sweep (fp32,int8 x width 256,320) on joblib with 2 workers, cold cache:
      wall time <= 0.8 x the same sweep on the basic launcher, cold cache too;
      4 compiled jobs, each op fingerprint `ran` exactly once across the four manifests
  the same sweep again with everything cached: <= 0.8 x `python -c "import torch"`, no torch import

Usage: python benchmarks/bench_sweep.py   (needs the joblib extra: pip install "yolobuild[joblib]")
"""
from __future__ import annotations

import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = ["--multirun", "recipe=demo", "target=onnxruntime", "precision=fp32,int8", "input.width=256,320"]


def run(args: list[str], root: Path, extra_flags: tuple[str, ...] = ()) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, *extra_flags, "-m", "yolobuild", *args, f"workspace.path={root / 'ws'}",
                        f"cache.dir={root / 'cache'}"], capture_output=True, text=True, cwd=root)
    return time.perf_counter() - t, r


def check_sweep(root: Path, r: subprocess.CompletedProcess) -> dict:
    if r.returncode != 0:
        sys.exit(f"sweep failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    summary = json.loads((root / "ws" / "sweeps" / "latest" / "summary.json").read_text())
    ran = collections.Counter()
    fingerprints = set()
    for job in summary["jobs"]:
        for op in json.loads((Path(job["build_dir"]) / "manifest.json").read_text())["ops"]:
            fingerprints.add(op["fingerprint"])
            ran[op["fingerprint"]] += op["status"] == "ran"
    return {"compiled": sum(j["status"] == "compiled" for j in summary["jobs"]), "jobs": len(summary["jobs"]),
            "fingerprints": len(fingerprints), "ran_once": sum(ran[f] == 1 for f in fingerprints)}


def main() -> int:
    basic_root, joblib_root = (Path(tempfile.mkdtemp(prefix=f"yolobuild-bench-sweep-{n}-")) for n in ("basic", "joblib"))
    basic_s, r = run(SWEEP, basic_root)
    basic = check_sweep(basic_root, r)
    joblib_s, r = run(SWEEP + ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], joblib_root)
    joblib = check_sweep(joblib_root, r)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    torch_s = time.perf_counter() - t
    cached_s, r = run(SWEEP, joblib_root, ("-X", "importtime"))
    cached = check_sweep(joblib_root, r)
    torch_imported = any(line.rstrip().endswith("| torch") for line in r.stderr.splitlines())
    print(f"basic launcher, cold:   {basic_s:7.1f} s  {basic}")
    print(f"joblib n_jobs=2, cold:  {joblib_s:7.1f} s  {joblib}  ratio to basic {joblib_s / basic_s:.2f} (bar <= 0.8)")
    print(f"import torch:           {torch_s:7.2f} s")
    print(f"fully cached sweep:     {cached_s:7.2f} s  ratio to import torch {cached_s / torch_s:.2f} (bar <= 0.8), "
          f"torch imported: {torch_imported}")
    ok = (joblib_s <= 0.8 * basic_s and joblib["compiled"] == 4 and joblib["ran_once"] == joblib["fingerprints"]
          and cached_s <= 0.8 * torch_s and not torch_imported)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
