"""Atomic writes and the disk checks made before any compute.

A file written here appears whole under its name, or not at all: it is written to a hidden
temp file beside the target and renamed into place; a failed write (a full disk, a
read-only directory) removes the temp file and raises ``DiskError`` with one line naming the
file. ``check_writable`` is what a stage calls before it starts work whose output would
otherwise be lost at the end.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DiskError",
    "cache_dir",
    "check_writable",
    "disk_error",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

DEFAULT_MIN_FREE_BYTES = 100 * 2**20


class DiskError(OSError):
    """A directory that cannot be written, or a write that failed; the message is one line."""

    def __str__(self) -> str:
        return str(self.strerror or "disk error")


def cache_dir() -> Path:
    """dtmem's cache (downloaded models, Meta-World goal lists): ``$DTMEM_CACHE``, else
    ``($XDG_CACHE_HOME or ~/.cache)/dtmem``. Everything in it can be rebuilt."""
    if override := os.environ.get("DTMEM_CACHE"):
        return Path(override).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "dtmem"


def disk_error(path: str | os.PathLike[str], exc: OSError) -> DiskError:
    """``exc`` (from writing ``path``) as one line that says what to do."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        hint = "the disk is full; free space or write elsewhere"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "not writable; choose another directory"
    else:
        hint = reason
    return DiskError(exc.errno or 0, f"{path}: cannot write ({hint})")


def check_writable(
    path: str | os.PathLike[str], min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
) -> Path:
    """Make sure directory ``path`` can be created and written, and holds at least
    ``min_free_bytes`` free; returns it absolute. Raises ``DiskError`` (one line) otherwise.

    A probe file is created and removed, which also catches read-only mounts that
    ``os.access`` reports as writable (running as root).
    """
    target = Path(path).expanduser().absolute()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(target, exc) from None
    if not target.is_dir():
        raise DiskError(errno.ENOTDIR, f"{target}: cannot write (not a directory)")
    probe = target / f".dtmem-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"ok")
    except OSError as exc:
        raise disk_error(target, exc) from None
    finally:
        probe.unlink(missing_ok=True)
    free = shutil.disk_usage(target).free
    if free < min_free_bytes:
        raise DiskError(
            errno.ENOSPC,
            f"{target}: cannot write (only {free / 2**20:.0f} MiB free, "
            f"{min_free_bytes / 2**20:.0f} MiB needed)",
        )
    return target


def _write_atomic(
    path: str | os.PathLike[str], mode: str, write: Callable[[IO[Any]], object]
) -> Path:
    """Write through ``write(f)`` into a temp file beside ``path``, fsync, rename into place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise disk_error(path, exc) from None
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise disk_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> Path:
    """Writes ``payload`` as JSON to a temp file beside ``path``, then renames it into place."""
    return _write_atomic(path, "w", lambda f: json.dump(payload, f))


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """``rows`` as CSV text; columns: the union of the rows' keys, first seen first."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Writes ``text`` (UTF-8) atomically."""
    return _write_atomic(path, "w", lambda f: f.write(text))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes ``data`` atomically."""
    return _write_atomic(path, "wb", lambda f: f.write(data))
