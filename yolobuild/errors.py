"""The error kinds yolobuild reports, each with its exit code.

User errors print as one line with no traceback; toolchain and numeric-check failures
exit 3; an interrupted build exits 130.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_USER = 2
EXIT_TOOLCHAIN = 3
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


def nearest(word: str, choices, n: int = 1) -> str:
    """' (did you mean X?)' for the closest choice, or '' when none is close."""
    import difflib

    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""
