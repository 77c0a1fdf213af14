"""SIGTERM as an interruption. While ``sigterm_interrupts()`` is entered (the CLI enters it
around every stage, ``dtmem.cli.guarded``), SIGTERM (``ray job stop``, ``kill``, a pod being
stopped) raises ``Terminated``, a ``KeyboardInterrupt``, in the main thread: the stage unwinds
as from Ctrl-C, its MLflow runs end KILLED, pools and Ray are closed, temporary files removed.

``ray.init`` replaces the SIGTERM handler with its own (exit at once, or kill the local
cluster and exit); ``dtmem.ray_session`` starts Ray inside ``kept_across()``, which puts this
one back when it was there.

How long an interrupted stage may take to unwind: a study gives each running node
``STOP_GRACE_S`` before killing it (``dtmem.experiment.runner``), and ``dtmem submit`` asks
Ray's job supervisor to wait ``JOB_STOP_WAIT_S`` after its SIGTERM before its SIGKILL
(Ray's own default is 3 s, too short for runs to end KILLED).

A study's node runs its stage as a Ray task inside ``cancellable()``, so that the runner's
``ray.cancel`` interrupts it whatever SIGINT handler its worker process has.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = [
    "JOB_STOP_WAIT_S",
    "STOP_GRACE_S",
    "Terminated",
    "cancellable",
    "kept_across",
    "sigterm_interrupts",
    "sigterm_interrupts_active",
]

STOP_GRACE_S = 20.0  # an interrupted study node's stage gets this long, then is killed
JOB_STOP_WAIT_S = int(STOP_GRACE_S) + 10  # a submitted job: the grace, then the driver's end


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


def sigterm_interrupts_active() -> bool:
    """Whether SIGTERM raises ``Terminated`` here now (inside ``sigterm_interrupts``)."""
    return signal.getsignal(signal.SIGTERM) is _raise_terminated


@contextmanager
def kept_across() -> Iterator[None]:
    """Around code that installs its own SIGTERM handler (``ray.init``): if SIGTERM raised
    ``Terminated`` before, it does again after."""
    ours = _main_thread() and sigterm_interrupts_active()
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGTERM, _raise_terminated)


@contextmanager
def cancellable() -> Iterator[None]:
    """Around a stage run as a Ray task (a study's node): SIGINT raises KeyboardInterrupt
    while the block runs, so that ``ray.cancel`` interrupts it. Ray cancels a running task by
    calling SIGINT's Python handler in it (``_thread.interrupt_main``), which does nothing
    where SIGINT is ignored (a worker of a driver started in the background or under nohup
    inherits that), and runs whatever handler an earlier task in the same worker left. The
    previous handler is restored after. Main thread only."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
