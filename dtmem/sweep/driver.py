"""The driver side of a sweep on Ray Tune: the cluster's room for trials, the ``Tuner``
(ASHA or FIFO, basic or Optuna search) or its restore, the callback that frees an
early-stopped trial's resources and ends its MLflow run, and the storage checks of a new or
resumed sweep, and ``tune_interrupts`` (Ctrl-C ends the sweep interrupted, not finished).
Ray itself is entered by the caller, through ``dtmem.ray_session``.

In-process trials (``executor: local``) reuse their Ray actor for the next trial (Tune's
``reuse_actors``): the process, its imports (torch, MLflow) and its MLflow client stay warm,
so a trial after the first pays only its own set-up. Ray Train trials start a fresh actor
each (their Train controller and worker group are the trial's own).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dtmem.config.tracking import TrackingConfig
from dtmem.interrupts import Terminated, sigterm_interrupts_active
from dtmem.sweep.base import (
    RESULT_FILE,
    RUNS_DIR,
    STATE_FILE,
    STEP,
    STOPPED_MARKER,
    TUNE_DIR,
    SweepError,
    log_event,
    plain_values,
    read_json,
)
from dtmem.sweep.plan import SweepPlan
from dtmem.sweep.space import tune_param_space
from dtmem.sweep.tracking import end_trial_run, find_trial_run
from dtmem.sweep.trial import release_train_workers, run_trial

__all__ = [
    "build_tuner",
    "check_storage",
    "quiet_ray",
    "resources_per_trial",
    "tune_interrupts",
]


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


def _tune_callback_class() -> type:
    from ray import tune

    class _SweepCallback(tune.Callback):
        """Driver side of every trial: the event log; when Tune stops a trial early, its
        MLflow run ends KILLED and its Ray Train workers' placement group is removed."""

        def __init__(self, sweep_dir: str, tracking: TrackingConfig, parent_run_id: str):
            self.sweep_dir = sweep_dir
            self.tracking = tracking
            self.parent_run_id = parent_run_id

        def _run_dir(self, trial: Any) -> Path:
            return Path(self.sweep_dir) / RUNS_DIR / str(trial.trial_id)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            log_event(self.sweep_dir, "trial_start", trial_id=trial.trial_id)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            run_dir = self._run_dir(trial)
            finished = (run_dir / RESULT_FILE).is_file()
            log_event(
                self.sweep_dir,
                "trial_complete",
                trial_id=trial.trial_id,
                status="finished" if finished else "early_stopped",
                step=(trial.last_result or {}).get(STEP),
            )
            if finished:
                return
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / STOPPED_MARKER).write_text("stopped by the scheduler\n")
            run_id = find_trial_run(self.tracking, self.parent_run_id, trial.trial_id)
            if run_id is not None:
                assert self.tracking.uri is not None
                end_trial_run(self.tracking.uri, run_id, "KILLED", "early_stopped")
            release_train_workers(run_dir)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            log_event(self.sweep_dir, "trial_retry", trial_id=trial.trial_id)
            release_train_workers(self._run_dir(trial))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            log_event(self.sweep_dir, "trial_error", trial_id=trial.trial_id)
            release_train_workers(self._run_dir(trial))

    return _SweepCallback


def resources_per_trial(plan: SweepPlan) -> tuple[dict[str, float], int]:
    """Tune's reservation per trial and how many trials the cluster holds at once."""
    import ray

    scaling = plan.base_config.scaling
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if plan.spec.executor == "local":
        trial = {"CPU": scaling.cpus_per_worker, "GPU": 1.0 if scaling.use_gpu else 0.0}
        need_cpu, need_gpu = trial["CPU"], trial["GPU"]
    else:
        trial = {"CPU": plan.cfg.resources.driver_cpus}
        need_cpu = trial["CPU"] + scaling.num_workers * scaling.cpus_per_worker
        need_gpu = float(scaling.num_workers) if scaling.use_gpu else 0.0
    fits = math.floor(cpus / need_cpu + 1e-9)
    if need_gpu:
        fits = min(fits, math.floor(gpus / need_gpu + 1e-9))
    if fits < 1:
        raise SweepError(
            f"resources: a trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs "
            f"({plan.spec.executor} executor); the Ray cluster has {cpus:g} CPUs, {gpus:g} GPUs"
        )
    return trial, min(plan.cfg.resources.max_concurrent_trials, fits)


def build_tuner(
    plan: SweepPlan,
    trial_resources: dict[str, float],
    concurrency: int,
    restore: bool,
    verbose: bool = False,
) -> Any:
    """The ``Tuner`` of the plan (``restore``: Tune's saved state); ``verbose`` lets Tune print
    its trial tables and hints (off: the sweep prints its own summary)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    cfg = plan.cfg
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=plan.spec),
        {k: v for k, v in trial_resources.items() if v},
    )
    if restore:
        return tune.Tuner.restore(
            str(plan.tune_dir), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    if cfg.scheduler.kind == "asha":
        # Rungs (grace * rf^k) strictly before the last step, and no stop at max_t: a trial
        # that has trained all its steps finishes and is evaluated, never stopped at its end
        # by a hair's difference in the last rung (plan_sweep checks grace < max_t).
        scheduler: Any = ASHAScheduler(
            time_attr=STEP,
            max_t=plan.max_t - 1,
            grace_period=cfg.scheduler.grace_period,
            reduction_factor=cfg.scheduler.reduction_factor,
            stop_last_trials=False,
        )
    else:
        scheduler = FIFOScheduler()
    if cfg.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg: Any = OptunaSearch(seed=cfg.seed)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # a SearchAlgorithm ignores TuneConfig.max_concurrent_trials: give it here
        search_alg = BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrency)
    assert plan.spec.parent_run_id is not None
    callback = _tune_callback_class()(
        plan.spec.sweep_dir, plan.spec.tracking, plan.spec.parent_run_id
    )
    return tune.Tuner(
        trainable,
        param_space=tune_param_space(plan.axes),
        tune_config=tune.TuneConfig(
            metric=cfg.metric,
            mode=cfg.mode,
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=cfg.num_samples,
            max_concurrent_trials=concurrency if cfg.search == "optuna" else None,
            reuse_actors=plan.spec.executor == "local" and cfg.resources.reuse_actors,
            trial_dirname_creator=_trial_dirname,
            trial_name_creator=lambda trial: plan.spec.label(plain_values(trial.config)),
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(plan.sweep_dir),
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
            callbacks=[callback],
            verbose=1 if verbose else 0,
        ),
    )


def check_storage(plan: SweepPlan, resume: bool) -> tuple[str | None, bool]:
    """(the sweep's MLflow run id to continue or None, whether Tune's state can be
    restored); refuses to start a sweep over an existing one or to resume a missing one."""
    from ray import tune

    state = read_json(plan.sweep_dir / STATE_FILE)
    exists = plan.tune_dir.exists()
    if not resume:
        if exists or state is not None:
            raise SweepError(
                f"sweep {plan.cfg.name!r} already exists in {plan.sweep_dir}: add --resume "
                "to finish it, or choose another name"
            )
        return None, False
    if state is None:
        raise SweepError(f"--resume: no sweep to resume in {plan.sweep_dir}")
    # killed before Tune wrote its first state: start the trials afresh under the same run
    return str(state["run_id"]), exists and tune.Tuner.can_restore(str(plan.tune_dir))


# Ray's own loggers that talk on the driver during a sweep (Tune's experiment snapshots,
# "Trials did not complete", Train's controller): the sweep's summary says what happened.
_RAY_LOGGERS = ("ray.tune", "ray.train", "ray.air", "ray.util")


@contextmanager
def quiet_ray(verbose: bool) -> Iterator[None]:
    """Unless ``verbose``, while the sweep runs: Tune prints nothing (its new output engine
    prints the experiment table and the TensorBoard hint even at ``verbose=0``, so the old
    one, silent at 0, is chosen with ``RAY_AIR_NEW_OUTPUT=0``) and Ray's loggers above only
    errors. Everything is restored on exit."""
    loggers = [logging.getLogger(name) for name in _RAY_LOGGERS]
    levels = [lg.level for lg in loggers]
    engine = os.environ.get("RAY_AIR_NEW_OUTPUT")
    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        for lg in loggers:
            lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if engine is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = engine


@contextmanager
def tune_interrupts() -> Iterator[None]:
    """Around ``Tuner.fit``: a Ctrl-C (or a study's ``ray.cancel``) that Tune took as its
    graceful stop (running trials stopped, its state saved, so that ``--resume`` finishes the
    sweep) raises ``KeyboardInterrupt`` once ``fit`` returns; left alone, ``fit`` returned the
    trials so far and the sweep ended as if finished, with fewer trials. Where SIGTERM is an
    interruption (``dtmem.interrupts.sigterm_interrupts``: the CLI, ``ray job stop``), it
    takes the same graceful stop and raises ``Terminated`` after; raised inside Tune's loop,
    it left the trials' runs RUNNING. A second signal raises at once. Tune's handler is not
    left installed after ``fit``.

    How it knows (Ray 2.60, ``ray.tune.tune._setup_signal_catching``): on the main thread,
    unless ``TUNE_DISABLE_SIGINT_HANDLER`` is set, ``fit`` installs a SIGINT handler that puts
    back the handler it found when it fires and is never removed otherwise. The one put in
    place here raises ``KeyboardInterrupt``: finding it in place after ``fit`` means Tune's
    fired."""
    tune_handles_sigint = threading.current_thread() is threading.main_thread() and not int(
        os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")
    )
    if not tune_handles_sigint:  # a Ctrl-C raises in fit itself
        yield
        return
    terminated: list[bool] = []

    def interrupted_after_tune(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def terminate_as_tune_stops(signum: int, frame: Any) -> None:
        tune_stop = signal.getsignal(signal.SIGINT)
        if terminated or not callable(tune_stop) or tune_stop is interrupted_after_tune:
            raise Terminated  # stopping already, or Tune's handler is not (yet) there
        terminated.append(True)
        tune_stop(signal.SIGINT, frame)

    previous = signal.signal(signal.SIGINT, interrupted_after_tune)
    previous_term = signal.getsignal(signal.SIGTERM)
    if sigterm_interrupts_active():
        signal.signal(signal.SIGTERM, terminate_as_tune_stops)
    try:
        yield
        fired = signal.getsignal(signal.SIGINT) is interrupted_after_tune
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
    if terminated:
        raise Terminated
    if fired:
        raise KeyboardInterrupt
