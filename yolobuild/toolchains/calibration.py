"""A calibration algorithm that crashed inside a vendor toolkit, said in one line (shared by the toolchains).

The worker returns {"calibration_failed": {"algorithm", "said"}} instead of raising, so the host can name
the algorithm and the option to change; an accuracy search skips the algorithm on this error."""
from __future__ import annotations

from ..errors import ToolchainError
from .worker import error_lines


class CalibrationFailed(ToolchainError):
    """The toolkit failed while calibrating with this algorithm (`algorithm`, `option`: what to change)."""

    def __init__(self, message: str, algorithm: str, option: str):
        super().__init__(message)
        self.algorithm, self.option = algorithm, option


def check(result: dict, toolchain: str, option: str, choices, log=None) -> dict:
    """The worker's result, or CalibrationFailed when it reports that calibration crashed."""
    failed = result.get("calibration_failed")
    if not failed:
        return result
    algorithm = failed["algorithm"]
    said = failed.get("said") or ""
    if log is not None and log.exists():
        said = " | ".join(dict.fromkeys([*error_lines(log.read_text(errors="replace"), 2), said]))
    others = ", ".join(c for c in choices if c != algorithm)
    raise CalibrationFailed(f"{toolchain}: calibration with {algorithm!r} failed inside the toolkit ({said[-300:]}); "
                            f"set backend.options.{option} to another algorithm ({others})"
                            + (f"; full log: {log}" if log is not None else ""), algorithm, option)


def call_worker(ctx, toolchain: str, function: str, req: dict) -> dict:
    """Run `function` (module:function) in the toolchain's environment; a crashed calibration becomes one
    line naming the algorithm and the option its toolchain.yaml declares (`accuracy.calibration_option`)."""
    from .envs import call_in_env
    from .registry import get

    result = call_in_env(ctx, toolchain, function, req)
    acc = get(toolchain).accuracy
    return check(result, toolchain, acc.calibration_option, acc.calibration_choices, ctx.log_file)
