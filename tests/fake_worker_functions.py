"""Functions the toolchain worker runs inside a test environment (stdlib only: no pytest there)."""
import os
from pathlib import Path


def echo(request: dict) -> dict:
    Path(request["out"]).write_text(request["text"].upper())
    return {"seen": request["text"]}


def compiler_error(request: dict) -> dict:
    print("\x1b[31mE build: Unsupported op 'Foo' at node 17\x1b[0m", flush=True)
    raise RuntimeError("build returned -1")


def hard_exit(request: dict) -> dict:
    os._exit(3)


def slow_loop(request: dict) -> dict:
    """Reports progress image by image, the last images from a process it starts (as TPU-MLIR's runner)."""
    import subprocess
    import sys
    import time

    from yolobuild.progress import report

    n, pause = int(request["images"]), float(request["pause"])
    for done in range(n - 1):
        report(done, n, "simulator images")
        time.sleep(pause)
    code = f"from yolobuild.progress import report; report({n}, {n}, 'simulator images')"
    subprocess.run([sys.executable, "-c", code], check=True)
    return {"images": n}
