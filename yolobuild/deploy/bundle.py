"""The deploy folder's scripts: infer.py (always) and benchmark.sh (artifacts only their board can time).

Both are fixed files shipped with yolobuild and copied as they are: infer.py reads deploy.json at
run time, so the same tested code serves every build.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .describe import HOST_RUNNABLE

TEMPLATES = Path(__file__).resolve().parent / "templates"


def write_scripts(deploy_dir: Path, toolchain: str | None) -> list[str]:
    shutil.copyfile(TEMPLATES / "infer.py", deploy_dir / "infer.py")
    (deploy_dir / "infer.py").chmod(0o755)
    written = ["infer.py"]
    if toolchain not in HOST_RUNNABLE:
        shutil.copyfile(TEMPLATES / "benchmark.sh", deploy_dir / "benchmark.sh")
        (deploy_dir / "benchmark.sh").chmod(0o755)
        written.append("benchmark.sh")
    return written
