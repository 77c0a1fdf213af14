"""Fault injection for the tests of recovery, driven by an environment variable that only
tests set (never a config field): ``DTMEM_TEST_FAIL_AT_STEP=N`` makes the last worker fail
once when it reaches step N. A marker file in the run directory keeps it to once, so the
resumed attempt (Ray Train's restart, or the same run started again) goes through. Ray Train
workers do not inherit the driver's environment, so the driver forwards the variable with
the job (``forwarded``) and each worker sets it (``adopt``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FAILED_MARKER", "FAIL_AT_STEP_ENV", "SimulatedFailure", "maybe_fail"]

FAIL_AT_STEP_ENV = "DTMEM_TEST_FAIL_AT_STEP"
FAILED_MARKER = ".failed_once"


class SimulatedFailure(RuntimeError):
    """The injected failure, when training runs in-process."""


def maybe_fail(run_dir: str | Path, step: int, rank: int, world_size: int, on_ray: bool) -> None:
    """Fail here if the test asked for it at this ``step`` (last worker, once per run)."""
    at = os.environ.get(FAIL_AT_STEP_ENV)
    if not at or int(at) != step or rank != world_size - 1:
        return
    marker = Path(run_dir) / FAILED_MARKER
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"step {step}\n")
    if on_ray:
        os._exit(1)  # a hard crash of this worker process: Ray restarts the group
    raise SimulatedFailure(f"{FAIL_AT_STEP_ENV}: simulated failure at step {step}")


def forwarded() -> dict[str, str]:
    """The test switches set in this (driver) process, for the workers."""
    value = os.environ.get(FAIL_AT_STEP_ENV)
    return {FAIL_AT_STEP_ENV: value} if value else {}


def adopt(env: dict[str, str]) -> None:
    """Set the driver's test switches in this worker process."""
    os.environ.update({k: v for k, v in env.items() if k == FAIL_AT_STEP_ENV})
