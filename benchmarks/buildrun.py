"""One build, run as a user runs it (a fresh `python -m yolobuild` process), for the benchmarks."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def build(args: list[str], root: Path) -> tuple[float, dict, str]:
    """-> (wall seconds, manifest, build name); exits with the build's output when it fails."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "yolobuild", *args, f"workspace.path={root / 'ws'}",
                        f"cache.dir={root / 'cache'}"], capture_output=True, text=True, cwd=root)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"build failed ({r.returncode}): {' '.join(args)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    name = next(line.split()[-1] for line in r.stdout.splitlines() if line.startswith("building "))
    return wall, json.loads((root / "ws" / name / "manifest.json").read_text()), name
