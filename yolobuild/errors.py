"""The error kinds yolobuild reports, each with its exit code.

User errors print as one line with no traceback (exit 2); toolchain and numeric-check failures
exit 3; the machine itself in the way (a full disk, a folder yolobuild may not write) exits 4;
an interrupted build exits 130.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_USER = 2
EXIT_TOOLCHAIN = 3
EXIT_MACHINE = 4
EXIT_INTERRUPTED = 130


class YolobuildError(Exception):
    exit_code = EXIT_TOOLCHAIN


class UserError(YolobuildError):
    """Something the user can fix: a recipe, an override, an input file."""

    exit_code = EXIT_USER

    def __init__(self, message: str, lines: list[str] | None = None):
        super().__init__(message)
        self.lines = lines or [message]

    def __reduce__(self):   # keeps `lines` when an op's error comes back from a child process
        return type(self), (str(self), self.lines)


class ToolchainError(YolobuildError):
    """A toolchain is missing, crashed, or refused the model."""

    exit_code = EXIT_TOOLCHAIN


class CheckFailed(YolobuildError):
    """A numeric check (parity, accuracy) fell below the target's threshold."""

    exit_code = EXIT_TOOLCHAIN


class MachineError(YolobuildError):
    """The machine is in the way: no space left, no permission, a read-only file system."""

    exit_code = EXIT_MACHINE


_MACHINE_ERRNOS = {"ENOSPC": "no space left on the device", "EDQUOT": "disk quota exceeded",
                   "EACCES": "permission denied", "EPERM": "operation not permitted",
                   "EROFS": "read-only file system", "EFBIG": "file too large for this system's limits"}


def machine_error(exc: OSError, doing: str = "") -> MachineError | None:
    """The one line for an OSError the machine causes (disk full, permissions), or None for other errors."""
    import errno

    name = errno.errorcode.get(exc.errno or 0, "")
    if name not in _MACHINE_ERRNOS:
        return None
    where = exc.filename or ""
    fix = ("free space there, or point workspace.path / cache.dir (YOLOBUILD_CACHE) at another disk"
           if name in ("ENOSPC", "EDQUOT", "EFBIG") else "fix its permissions, or point workspace.path / cache.dir elsewhere")
    return MachineError(f"{_MACHINE_ERRNOS[name]}{' ' + doing if doing else ''}"
                        f"{': ' + str(where) if where else ''}; {fix}")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """'TypeName: the message' on one line, cut to `limit`: how a tool's exception reaches the user."""
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text[:limit]}"


def nearest(word: str, choices, n: int = 1) -> str:
    """' (did you mean X?)' for the closest choice, or '' when none is close."""
    import difflib

    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


class LockMismatch(YolobuildError):
    """`build --locked`: the build would differ from the one yolobuild.lock pinned (before anything runs)."""

    exit_code = EXIT_TOOLCHAIN

    def __init__(self, lines: list[str]):
        super().__init__(lines[0])
        self.lines = lines


class BuildFailed(YolobuildError):
    """A build ran and failed (a toolchain, a parity or accuracy check); `result` holds its manifest."""

    def __init__(self, message: str, result=None, exit_code: int = EXIT_TOOLCHAIN):
        super().__init__(message)
        self.result = result
        self.exit_code = exit_code
