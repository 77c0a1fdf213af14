"""The one place Ray is started: ``ray_session()`` connects to the Ray that is there, or
starts a local one, and shuts down only what it started.

Every stage, the sweep, the experiment runner and the benchmarks enter it; nested entries
reuse the outer session (so the experiment runner's one Ray serves every node). Where Ray
is found, in this order: an already initialised Ray in this process (tests, a Ray job's
driver), ``address`` or ``$RAY_ADDRESS`` (a cluster; token auth as Ray configures it), else
a new local instance bound to 127.0.0.1 with no dashboard, its logs kept out of the
terminal.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dtmem.interrupts import kept_across

__all__ = ["RayStartError", "ray_session"]


class RayStartError(RuntimeError):
    """Ray could not be started or reached (one line, for the CLI)."""


@contextmanager
def ray_session(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    runtime_env: dict[str, Any] | None = None,
    verbose: bool = False,
) -> Iterator[Any]:
    """Yields the ``ray`` module, initialised; shuts Ray down on exit only if this call
    started it. ``num_cpus`` applies to a new local instance only."""
    import ray

    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {
            "log_to_driver": verbose,
            "configure_logging": verbose,
            "runtime_env": runtime_env,
        }
        if address is None:  # a local instance: loopback only, no dashboard
            kwargs.update(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
        try:
            with kept_across():  # ray.init installs its own SIGTERM handler
                ray.init(address=address, **kwargs)
        except Exception as exc:  # Ray raises many types (ConnectionError, RuntimeError, ...)
            where = address or "a local instance"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RayStartError(f"could not start Ray ({where}): {first}") from exc
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
