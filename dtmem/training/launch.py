"""Run a ``TrainJob``: in this process (one worker, the default: no Ray start-up at all), or
data-parallel on Ray Train V2 (``TorchTrainer``) when several workers are asked for.

On Ray, each worker runs ``run_worker(job, ray_context())``: the single-process loop plus
Ray's prepare step. Ray is entered only through ``dtmem.ray_session.ray_session()`` (which
reuses a Ray already running, e.g. a sweep's or the experiment runner's). Worker failures
restart the whole worker group (``FailureConfig``), and the loop resumes from the run
directory's last checkpoint. A sweep trial passes its own worker function (the loop with a
per-checkpoint report) and Ray Train callbacks (``TuneReportCallback``).

Ctrl-C (or SIGTERM in the CLI, or a study's ``ray.cancel``) during ``fit`` is the stage's,
as in one process: it raises ``KeyboardInterrupt`` where ``fit`` waits, the Train run is
aborted (its workers and their CPUs released), and the interrupt goes on up, so that the
stage's runs end KILLED and the command exits 130 (143). Left to itself, Train V2's ``fit``
installs a SIGINT handler whose abort ends in ``SystemExit(1)`` out of ``fit`` (Ray 2.60:
the controller exits as it aborts), a silent exit 1 with the runs FAILED, and which it
leaves installed after ``fit``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dtmem.config.train import FailureConfig, ScalingConfig
from dtmem.training.loop import TrainJob, local_context, ray_context, run_worker

__all__ = [
    "TRAIN_POLL_S",
    "RayResourcesError",
    "check_ray_resources",
    "launch",
    "ray_worker",
    "train_poll",
]

ABORT_WAIT_S = 10.0  # an interrupted Train run's abort may take this long, then it is killed
# Train V2's controller looks at its workers this often (Ray's default 2 s): a run's end, its
# reports and its failures are seen up to this late. 0.5 s took 1.5-2.5 s off a 1-worker
# smoke pretrain (benchmarks/bench_train_poll.py: wall ratio 0.87 and 0.92, 4 pairs each); a
# poll is one small remote call per worker, and a worker is declared lost only after Train's
# own 10-minute timeout. A value set in the environment is left alone (Ray passes it from the
# driver to the controller).
TRAIN_POLL_S = 0.5
_TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


class RayResourcesError(ValueError):
    """The Ray cluster cannot hold the requested workers (it would wait forever)."""


def ray_worker(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the TorchTrainer."""
    from dtmem.training import faults

    faults.adopt(config.get("test_env", {}))
    run_worker(config["job"], ray_context())


def check_ray_resources(scaling: ScalingConfig) -> None:
    """Refuse a request the cluster cannot meet (Ray would wait for it forever)."""
    import ray

    total = ray.cluster_resources()
    cpus = scaling.num_workers * scaling.cpus_per_worker
    if total.get("CPU", 0.0) < cpus:
        raise RayResourcesError(
            f"scaling: {scaling.num_workers} workers x {scaling.cpus_per_worker} CPUs need "
            f"{cpus:g} CPUs; the Ray cluster has {total.get('CPU', 0.0):g}"
        )
    if scaling.use_gpu and total.get("GPU", 0.0) < scaling.num_workers:
        raise RayResourcesError(
            f"scaling: {scaling.num_workers} GPU workers; the Ray cluster has "
            f"{total.get('GPU', 0.0):g} GPUs"
        )


def launch(
    job: TrainJob,
    scaling: ScalingConfig,
    failure: FailureConfig,
    *,
    callbacks: Sequence[Any] = (),
    worker_fn: Callable[[dict[str, Any]], None] = ray_worker,
    verbose: bool = False,
) -> None:
    """Train ``job`` to the end; raises if training fails after the allowed restarts.

    On Ray (``scaling.on_ray``), ``worker_fn`` is the ``train_loop_per_worker`` (its config
    is ``{"job": job}``) and ``callbacks`` go to the ``RunConfig``
    (``ray.train.UserCallback``); both are unused in this process.
    """
    if not scaling.on_ray:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, round(scaling.cpus_per_worker)))  # the worker's CPUs
        try:
            run_worker(job, local_context(scaling.use_gpu))
        finally:
            torch.set_num_threads(threads)
        return

    from dtmem.ray_session import ray_session

    with ray_session(verbose=verbose):
        check_ray_resources(scaling)
        _fit(job, scaling, failure, callbacks, worker_fn)


def _fit(
    job: TrainJob,
    scaling: ScalingConfig,
    failure: FailureConfig,
    callbacks: Sequence[Any],
    worker_fn: Callable[[dict[str, Any]], None],
) -> None:
    # Train V2's classes (ray.train re-exports them when V2 is on, the 2.60 default; their
    # static types are V1's, which lack controller_failure_limit)
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2.api.config import FailureConfig as RayFailureConfig
    from ray.train.v2.api.config import RunConfig
    from ray.train.v2.api.config import ScalingConfig as RayScalingConfig

    from dtmem.training import faults

    class Trainer(TorchTrainer):
        """``TorchTrainer`` that leaves SIGINT to the stage (see the module docstring)."""

        controller: Any = None

        def _register_sigint_handler(self, controller: Any) -> None:  # Train V2's own hook
            self.controller = controller

    run_dir = Path(job.run_dir)
    trainer = Trainer(
        worker_fn,
        train_loop_config={"job": job, "test_env": faults.forwarded()},
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=RayScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker},
        ),
        run_config=RunConfig(  # type: ignore[arg-type]  # V2 at run time (see above)
            name=run_dir.name,
            storage_path=str(run_dir.resolve() / "ray"),
            failure_config=RayFailureConfig(
                max_failures=failure.max_failures,
                controller_failure_limit=failure.controller_failures,
            ),
            callbacks=list(callbacks),
        ),
    )
    try:
        with train_poll():
            trainer.fit()
    except KeyboardInterrupt:
        _abort(trainer.controller)
        raise


@contextmanager
def train_poll() -> Iterator[None]:
    """Around ``fit`` (which hands the environment's value to its controller): Train polls
    every ``TRAIN_POLL_S`` unless the environment says otherwise; restored after."""
    if _TRAIN_POLL_ENV in os.environ:
        yield
        return
    os.environ[_TRAIN_POLL_ENV] = str(TRAIN_POLL_S)
    try:
        yield
    finally:
        os.environ.pop(_TRAIN_POLL_ENV, None)


def _abort(controller: Any) -> None:
    """Abort an interrupted Train run: its workers stop and their CPUs are freed. The
    controller exits as it aborts; one that does not within ``ABORT_WAIT_S`` is killed.
    None: interrupted before the controller started (nothing to abort)."""
    if controller is None:
        return
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        ray.get(controller.abort.remote(), timeout=ABORT_WAIT_S)
    except RayActorError:  # the controller exited: the abort is done
        pass
    except GetTimeoutError:
        ray.kill(controller)
