"""How the CLI tells a user's mistake from a bug in dtmem.

``user_error(exc)`` is the one line to print for an error the user can cause and fix (a bad
file or field, an unreachable tracking server or Ray cluster, a full or read-only disk, a
model reference MLflow does not know), or None for anything else: a crash of the program
itself, whose traceback ``write_crash_report`` saves to a file. Messages never carry
credentials (every URI in them goes through ``redact_uri``).

Nothing heavy is imported: exception types from Ray and MLflow are recognised by name, so
classifying an error never imports those libraries.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

__all__ = ["crash_dir", "redact_text", "user_error", "write_crash_report"]

# Errors of these types (by class name, anywhere in the MRO) are the user's to fix.
_USER_TYPES = {
    "ValueError",  # ConfigError, TrackingError, SubmitError, UIError, CheckpointError, ...
    "OSError",  # missing or unreadable files, DiskError, refused connections
    "RayStartError",
    "MlflowException",  # a run, model or experiment the store does not have
}
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_text(text: str) -> str:
    """``text`` with every URI in it redacted (``dtmem.tracking.redact_uri``)."""
    from dtmem.tracking import redact_uri

    def one(match: re.Match[str]) -> str:
        uri = match.group(0)
        tail = len(uri) - len(uri.rstrip(".,:;)"))  # sentence punctuation is not the URI's
        return redact_uri(uri[: len(uri) - tail]) + uri[len(uri) - tail :]

    return _URI.sub(one, text)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: Ray task errors' cause, Ray Train worker failures, and
    the explicit ``raise ... from`` chain (a few levels)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 8:
        e = todo.pop(0)
        if any(e is s for s in seen):
            continue
        seen.append(e)
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            todo.append(cause)
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            todo.extend(f for f in failures.values() if isinstance(f, BaseException))
        if e.__cause__ is not None:
            todo.append(e.__cause__)
    return seen


def _is_user_type(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    if "RayTaskError" in names or "RayActorError" in names:
        # A Ray task error is also an instance of its cause's class; judge the cause instead.
        return False
    return bool(names & _USER_TYPES)


def _first_line(exc: BaseException) -> str:
    if type(exc).__name__ == "ValidationError" and hasattr(exc, "errors"):
        from dtmem.config.base import format_validation_error

        return format_validation_error(exc)  # type: ignore[arg-type]
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= 400 else first[:397] + "..."


def user_error(exc: BaseException) -> str | None:
    """The one line to print when ``exc`` is the user's to fix, else None (a crash)."""
    for e in _causes(exc):
        if _is_user_type(e):
            return redact_text(_first_line(e))
    return None


def crash_dir() -> Path:
    """Where crash reports go: $XDG_STATE_HOME/dtmem/crashes (~/.local/state/...), else the
    system temp directory."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "dtmem" / "crashes"


def write_crash_report(exc: BaseException) -> Path:
    """Write the command line and ``exc``'s full traceback to a new file; return its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = "".join(
        [
            f"dtmem crash report {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n",
            "command: " + redact_text(" ".join(sys.argv)) + "\n\n",
            *traceback.format_exception(exc),
        ]
    )
    for directory in (crash_dir(), Path(tempfile.gettempdir()) / "dtmem-crashes"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"crash-{stamp}-{os.getpid()}.txt"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            return path
        except OSError:
            continue
    raise exc  # nowhere to write: the traceback goes to the terminal after all
