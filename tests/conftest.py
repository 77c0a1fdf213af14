"""Shared fixtures. One Ray instance serves the whole session (``ray.init`` costs ~5 s)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

# Tests run Ray without token auth (clusters keep it on) and never send usage stats.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# One intra-op thread: tests share 2 cores with Ray workers, and an oversubscribed OpenMP
# pool spin-waits (measured: 200 training steps took 234 s with 2 threads under load, 10 s
# with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# dtmem's cache (Meta-World goal lists, downloaded models) in a directory of this session's
# own, shared by its tests and Ray workers, removed at the end: never the user's ~/.cache.
_CACHE = tempfile.mkdtemp(prefix="dtmem-test-cache-")
os.environ["DTMEM_CACHE"] = _CACHE
# A run started in the background (`make test &`, nohup) inherits SIGINT ignored, and so
# would every process it starts: Ray's workers, whose cancel is SIGINT's handler, and the
# CLIs that tests send Ctrl-C. The tests run as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _session_cache() -> Iterator[None]:
    yield
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """A local Ray with 2 CPUs, shared by every test that needs Ray; shut down at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()
