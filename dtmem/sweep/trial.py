"""A trial (``run_trial``, a Tune function trainable): train one config of the stage with the
trial's values, report the validation loss at every checkpoint (``TrialReporter``), then
evaluate the final model, log and mark the trial done (``RESULT_FILE``); in-process
(``executor: local``) or on Ray Train with ``TuneReportCallback`` (``executor: train``),
whose workers' placement group ``release_train_workers`` removes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtmem import metrics as M
from dtmem.config.base import ConfigError, format_validation_error
from dtmem.config.sweep import EvaluationConfig
from dtmem.sweep.base import (
    EVAL_SUCCESS_RATE_MEAN,
    FINAL_FILE,
    PG_FILE,
    RESULT_FILE,
    STEP,
    STOPPED_MARKER,
    TRAIN_LOSS,
    log_event,
    plain_values,
    read_json,
    write_json,
)
from dtmem.sweep.plan import STAGES, TrialSpec
from dtmem.sweep.space import apply_values
from dtmem.sweep.tracking import end_trial_run, trial_end, trial_run
from dtmem.sweep.validation import validation_batches, validation_loss

if TYPE_CHECKING:
    from torch import nn

    from dtmem.batch import Batch
    from dtmem.config.train import TrainConfig
    from dtmem.tracking import RunHandle
    from dtmem.training.loop import TrainJob, WorkerContext
    from dtmem.training.plan import TrainPlan

__all__ = [
    "TrialReporter",
    "evaluate_model",
    "release_train_workers",
    "run_trial",
    "scores_of",
    "trial_config",
    "trial_plan",
]


@dataclass
class TrialReporter:
    """A trial's reports: at every checkpoint the validation loss (rank 0 also logs it to the
    trial's MLflow run), at the end the final metrics with the evaluation (rank 0 writes them
    to ``FINAL_FILE`` for the trial). ``report`` is ``tune.report`` or ``ray.train.report``."""

    batches: list[Batch]
    report: Callable[[dict[str, Any]], None]
    extra_keys: tuple[str, ...] = ()
    evaluation: EvaluationConfig | None = None
    handle: RunHandle | None = None  # rank 0's MLflow run
    last: dict[str, Any] | None = None
    last_batches: list[float] = field(default_factory=list)
    logged_up_to: int = 0

    def __post_init__(self) -> None:
        if self.handle is not None:
            history = self.handle.metric_history(M.VAL_LOSS)
            self.logged_up_to = max((s for s, _ in history), default=0)

    def on_checkpoint(
        self,
        *,
        step: int,
        model: nn.Module,
        rank: int,
        world_size: int,
        trainer_state: Mapping[str, Any],
    ) -> None:
        means, per_batch = validation_loss(model, self.batches, rank, world_size)
        history = trainer_state.get("loss_history") or []
        train_loss = float(history[-1][1]) if history else math.nan
        metrics: dict[str, Any] = {STEP: step, **means, TRAIN_LOSS: train_loss}
        metrics.update({k: math.nan for k in self.extra_keys})
        if self.handle is not None and step > self.logged_up_to:
            self.handle.log_metrics(means, step=step)
        self.last, self.last_batches = metrics, per_batch
        self.report(metrics)

    def on_end(self, job: TrainJob, ctx: WorkerContext, loop_s: float) -> None:
        """After training (``loop_s``: the training loop's wall time): the final model's
        validation loss (if no checkpoint was written in this attempt) and evaluation,
        written by rank 0, reported by every worker."""
        from dtmem.training.checkpoint import FINAL_MODEL, load_model_dir

        model_dir = Path(job.run_dir) / FINAL_MODEL
        if self.last is None:  # resumed after the last checkpoint: nothing left to train
            model = load_model_dir(model_dir, ctx.device).model
            means, self.last_batches = validation_loss(
                model, self.batches, ctx.rank, ctx.world_size
            )
            self.last = {STEP: job.cfg.optim.max_steps, **means, TRAIN_LOSS: math.nan}
        metrics = dict(self.last)
        episodes: list[dict[str, Any]] = []
        if ctx.rank == 0:
            t0 = time.time()
            if self.evaluation is not None:
                scores, episodes = evaluate_model(model_dir, self.evaluation)
                metrics.update(scores)
            payload = {
                "metrics": metrics,
                "val_batches": self.last_batches,
                "episodes": episodes,
                "loop_s": loop_s,
                "eval_s": time.time() - t0,
            }
            write_json(Path(job.run_dir) / FINAL_FILE, payload)
            if self.handle is not None and scores_of(metrics):
                self.handle.log_metrics(scores_of(metrics), step=int(metrics[STEP]))
        self.report(metrics)


def scores_of(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The ``eval/`` entries of ``metrics``."""
    return {k: float(v) for k, v in metrics.items() if k.startswith("eval/")}


def evaluate_model(
    model_dir: Path, ecfg: EvaluationConfig
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Meta-World rollouts of the model in ``model_dir`` in this process (``EvalWorker``, the
    body of ``dtmem evaluate``'s actors, on ``dtmem evaluate``'s units: few-episode tasks side
    by side): per-task and mean return and success rate, and one row per episode."""
    import numpy as np

    from dtmem.evaluation import (
        EvalWorker,
        ModelPayload,
        TaskRequest,
        check_requests,
        plan_units,
        resolve_metaworld_tasks,
        split_by_task,
        task_result,
    )
    from dtmem.metrics import eval_metric
    from dtmem.training.checkpoint import load_model_dir

    loaded = load_model_dir(model_dir)
    requests = [
        TaskRequest("metaworld", t, ecfg.episodes, ecfg.max_steps, ecfg.target_return)
        for t in resolve_metaworld_tasks(ecfg.tasks)
    ]
    check_requests(loaded.model.spec, loaded.state_stats, requests)
    worker = EvalWorker(ModelPayload.of(loaded.model, loaded.config, loaded.state_stats))
    by_task: dict[str, list[Any]] = {r.task: [] for r in requests}
    try:
        for unit in plan_units(requests, seed=ecfg.seed, chunk=ecfg.envs):
            for task, episodes in split_by_task(unit, worker.run(unit).episodes):
                by_task[task] += episodes
    finally:
        worker.close()
    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    results = [task_result(r, by_task[r.task]) for r in requests]
    for tr in results:
        metrics[eval_metric(tr.task, "return_mean")] = tr.return_mean
        metrics[eval_metric(tr.task, "success_rate")] = float(tr.success_rate or 0.0)
        rows += [
            {
                "task": tr.task,
                "episode": e.episode,
                "return": e.episode_return,
                "success": e.success,
            }
            for e in tr.episodes
        ]
    metrics[M.EVAL_RETURN_MEAN] = float(np.mean([t.return_mean for t in results]))
    metrics[EVAL_SUCCESS_RATE_MEAN] = float(np.mean([t.success_rate or 0.0 for t in results]))
    return metrics, rows


# --------------------------------------------------------------------------- the trial


def run_trial(values: dict[str, Any], spec: TrialSpec) -> None:
    """One Tune trial: train the stage's config with ``values`` set, reporting at every
    checkpoint; then evaluate, log and mark the trial done (``RESULT_FILE``)."""
    from ray import tune

    t0 = time.time()
    trial_id = tune.get_context().get_trial_id()
    values = plain_values(values)
    run_dir = spec.runs_dir / trial_id
    done = read_json(run_dir / RESULT_FILE)
    if done is not None:  # finished before the driver died; Tune's snapshot predates it
        log_event(spec.sweep_dir, "trial_replayed", trial_id=trial_id)
        tune.report(done["metrics"])
        return
    log_event(spec.sweep_dir, "trial_begin", trial_id=trial_id, pid=os.getpid())
    cfg, plan = trial_plan(spec, values, trial_id)
    run = trial_run(spec, cfg, trial_id, values, plan.tags)
    try:
        _train_and_finish(spec, cfg, plan, run, trial_id, values, t0)
    except BaseException as exc:
        if not (run_dir / STOPPED_MARKER).exists():  # not the scheduler stopping it
            # interrupted (a rerun with --resume continues this run) or failed
            end_trial_run(run.uri, run.run_id, *trial_end(exc))
        raise


def trial_config(spec: TrialSpec, values: Mapping[str, Any], trial_id: str) -> TrainConfig:
    """The base config with the trial's values and its name, validated."""
    from pydantic import ValidationError

    data = apply_values(spec.base, {**values, "run_name": trial_id})
    try:
        return STAGES[spec.stage].validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"trial {trial_id}")) from None


def trial_plan(
    spec: TrialSpec, values: Mapping[str, Any], trial_id: str
) -> tuple[TrainConfig, TrainPlan]:
    """The trial's config and the stage's plan of it (every check of the stage, before any
    compute): the stage's own ``prepare`` for its own config type."""
    cfg = trial_config(spec, values, trial_id)
    return cfg, STAGES[spec.stage].prepare(cfg)


def _train_and_finish(
    spec: TrialSpec,
    cfg: TrainConfig,
    plan: TrainPlan,
    run: RunHandle,
    trial_id: str,
    values: Mapping[str, Any],
    t0: float,
) -> None:
    import torch
    from ray import tune

    from dtmem.training.finish import finish, log_inputs
    from dtmem.training.loop import local_context, run_worker

    run_dir = Path(plan.run_dir)
    log_inputs(plan, run)  # model size as params, datasets as MLflow dataset inputs
    batches = validation_batches(cfg.data, spec.validation, plan.state_stats)
    job = plan.job(run)
    (run_dir / FINAL_FILE).unlink(missing_ok=True)  # a failed attempt's
    t_train = time.time()
    threads = None  # a Ray Train trial's workers get theirs from Ray Train
    if spec.executor == "local":
        # torch's intra-op threads = the CPUs Tune reserved for the trial (more would
        # spin-wait against the trials beside it)
        torch.set_num_threads(spec.threads)
        threads = torch.get_num_threads()
    log_event(
        spec.sweep_dir,
        "train_begin",
        trial_id=trial_id,
        from_step=plan.resume_step,
        pid=os.getpid(),
        threads=threads,
    )
    if spec.executor == "local":
        reporter = TrialReporter(batches, tune.report, spec.extra_keys, spec.evaluation, handle=run)
        ctx = local_context(cfg.scaling.use_gpu)
        run_worker(job, ctx, on_checkpoint=reporter.on_checkpoint)
        reporter.on_end(job, ctx, loop_s=time.time() - t_train)
    else:
        _fit_on_ray_train(spec, cfg, job, batches)
    t_end = time.time()
    log_event(spec.sweep_dir, "train_end", trial_id=trial_id, train_s=t_end - t_train)
    final = read_json(run_dir / FINAL_FILE)
    if final is None:
        raise RuntimeError(f"trial {trial_id}: training ended without {FINAL_FILE}")
    result = finish(plan, run, wall_s=time.time() - t0)
    timings = {
        "setup_s": t_train - t0,
        "train_s": t_end - t_train,
        "loop_s": float(final["loop_s"]),  # the training loop itself (in train_s)
        "eval_s": float(final["eval_s"]),  # the rollouts (in train_s)
        "log_s": time.time() - t_end,
        "trial_s": time.time() - t0,
    }
    perf = {
        M.PERF_SWEEP_SETUP_S: timings["setup_s"],
        M.PERF_SWEEP_TRAIN_S: timings["train_s"],
        M.PERF_SWEEP_LOOP_S: timings["loop_s"],
        M.PERF_SWEEP_EVAL_S: timings["eval_s"],
        M.PERF_SWEEP_LOG_S: timings["log_s"],
        M.PERF_SWEEP_TRIAL_S: timings["trial_s"],
    }
    run.log_metrics(perf, step=result.steps)
    payload = {
        "trial_id": trial_id,
        "values": dict(values),
        "metrics": final["metrics"],
        "val_batches": final["val_batches"],
        "episodes": final["episodes"],
        "run_id": run.run_id,
        "steps": result.steps,
        "timings": timings,
    }
    write_json(run_dir / RESULT_FILE, payload)  # the trial is done
    end_trial_run(run.uri, run.run_id, "FINISHED", "finished")
    log_event(spec.sweep_dir, "trial_end", trial_id=trial_id, **timings)


def _fit_on_ray_train(
    spec: TrialSpec, cfg: TrainConfig, job: TrainJob, batches: list[Batch]
) -> None:
    """Train on Ray Train, the workers reporting through ``TuneReportCallback``; Ray Train's
    own restarts are off (Tune restarts the trial)."""
    import functools

    from ray.tune.integration.ray_train import TuneReportCallback

    from dtmem.config.train import FailureConfig
    from dtmem.training.launch import launch

    worker = functools.partial(
        _train_worker, batches=batches, extra_keys=spec.extra_keys, evaluation=spec.evaluation
    )
    no_restarts = FailureConfig(max_failures=0, controller_failures=0)
    launch(job, cfg.scaling, no_restarts, callbacks=[TuneReportCallback()], worker_fn=worker)


def _train_worker(
    config: dict[str, Any],
    *,
    batches: list[Batch],
    extra_keys: tuple[str, ...],
    evaluation: EvaluationConfig | None,
) -> None:
    """``train_loop_per_worker``: the training loop with the trial's reporter; rank 0 records
    the worker group's placement group so the driver can free it if the trial is stopped."""
    import ray.train
    from ray.util import get_current_placement_group

    from dtmem.tracking import attach
    from dtmem.training.loop import ray_context, run_worker

    job: TrainJob = config["job"]
    ctx = ray_context()
    handle = None
    if ctx.rank == 0:
        pg = get_current_placement_group()
        if pg is not None:
            (Path(job.run_dir) / PG_FILE).write_text(pg.id.hex())
        if job.run_id is not None and job.tracking_uri is not None:
            handle = attach(job.tracking_uri, job.run_id)
    reporter = TrialReporter(
        batches, lambda metrics: ray.train.report(metrics), extra_keys, evaluation, handle=handle
    )
    t0 = time.time()
    run_worker(job, ctx, on_checkpoint=reporter.on_checkpoint)
    reporter.on_end(job, ctx, loop_s=time.time() - t0)


def release_train_workers(run_dir: str | Path) -> bool:
    """Remove the Ray Train workers' placement group a trial recorded, if it still exists
    (True if one was removed)."""
    from ray import PlacementGroupID
    from ray.util.placement_group import (
        PlacementGroup,
        placement_group_table,
        remove_placement_group,
    )

    path = Path(run_dir) / PG_FILE
    if not path.is_file():
        return False
    pg = PlacementGroup(PlacementGroupID.from_hex(path.read_text().strip()))
    if placement_group_table(pg).get("state") in (None, "REMOVED"):
        return False
    remove_placement_group(pg)
    return True
