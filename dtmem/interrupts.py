"""SIGTERM as an interruption. While ``sigterm_interrupts()`` is entered (the CLI enters it
around every stage, ``dtmem.cli.guarded``), SIGTERM (``ray job stop``, ``kill``, a pod being
stopped) raises ``Terminated``, a ``KeyboardInterrupt``, in the main thread: the stage unwinds
as from Ctrl-C, its MLflow runs end KILLED, pools and Ray are closed, temporary files removed.

``ray.init`` replaces the SIGTERM handler with its own (exit at once, or kill the local
cluster and exit); ``dtmem.ray_session`` starts Ray inside ``kept_across()``, which puts this
one back when it was there.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Terminated", "kept_across", "sigterm_interrupts"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the stage runs so that it unwinds as from Ctrl-C."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` while the block runs (main thread only; elsewhere
    SIGTERM is left as it is). The previous handler is restored after."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def kept_across() -> Iterator[None]:
    """Around code that installs its own SIGTERM handler (``ray.init``): if SIGTERM raised
    ``Terminated`` before, it does again after."""
    ours = _main_thread() and signal.getsignal(signal.SIGTERM) is _raise_terminated
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGTERM, _raise_terminated)
