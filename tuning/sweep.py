"""``dtmem sweep CONFIG``: Ray Tune trials of a pretraining or fine-tuning config, each with some
fields replaced (memory slots, LoRA rank/alpha/dropout, any dotted path), weak trials stopped
early by ASHA, everything tracked in MLflow, resumable after the driver dies.

Set up (``plan_sweep``: every check that needs no Ray, then the cluster's resources; a bad path,
an empty or ill-typed space, a metric no trial reports end here with one line), run
(``Tuner.fit``, or ``Tuner.restore(..., resume_errored=True)`` with ``--resume``), clean up (a
results table and plots on the sweep's MLflow run; a summary).

A trial (``run_trial``, a Tune function trainable) trains one config of the stage:

- ``executor: local`` (the default for one worker): the single-process training loop
  (``dtmem.training.loop.run_worker``) runs inside the trial and the trial reports with
  ``tune.report``. Tune reserves the worker's CPUs (``scaling.cpus_per_worker``).
- ``executor: train`` (several workers): the trial fits a Ray Train ``TorchTrainer``
  (``dtmem.training.launch.launch``) whose ``RunConfig`` carries ``TuneReportCallback``; the
  workers' ``ray.train.report`` reach Tune through it (``Tuner(TorchTrainer(...))`` is refused
  by Ray 2.60's Train V2). Tune reserves ``resources.driver_cpus`` for the trial; Ray Train
  reserves the workers' CPUs in a placement group of its own (Train V2 never schedules
  workers into the trial's placement group, so a PlacementGroupFactory with worker bundles
  would reserve them twice and never start). Concurrency is therefore capped at cluster CPUs // (driver_cpus + workers' CPUs).
  Ray Train's own restarts are off (``max_failures=0``, controller limit 0, not Ray's -1 =
  forever); Tune restarts a failed trial (``resources.max_failures``) and the loop resumes
  from the trial's last checkpoint.

What a trial reports, at every training checkpoint: ``step`` (optimiser steps), ``val/loss``
and ``val/loss_action`` (the held-out validation loss: windows of episodes the trial does
not train on, the same windows at every checkpoint) and ``train/loss``. ASHA judges trials
on the validation loss because it exists at every checkpoint, costs a few batches and is
deterministic, so a trial is stopped for being worse, not unlucky; a rollout score needs
tens of episodes per point to be that stable (Meta-World success is 0/1 per episode) and
costs minutes, so rollouts (``evaluation``) run once, on each finished trial's final model,
and give the ``eval/`` scores of the results table and the plots.

Early-stopped trials give their resources back: Tune frees the trial's own reservation; the
Ray Train workers' placement group, created by the trial's Train controller, would outlive
the killed trial (its lifetime is the job's; Ray's cleaner for it needs the dashboard's
state API, which tests and many clusters run without), so the driver removes it when Tune
stops the trial (``_SweepCallback``). Rank 0 records its id in the trial's directory.

MLflow: one run per sweep (stage "sweep") and a nested run per trial (tag
``mlflow.parentRunId``; ``dtmem.trial_id``), holding the trial's config as params, the
training curves (the loop logs them; Train V2 keeps only metrics reported with a
checkpoint), the validation curve and the evaluation. The trial finds its run by trial id,
so a restarted trial continues the same run (and the loop skips steps already logged).
Early-stopped trials' runs end KILLED (tag ``dtmem.trial_status=early_stopped``).

Resume: Tune's state lives in ``<storage_dir>/<name>/tune`` and every trial's checkpoints in
``<storage_dir>/<name>/runs/<trial_id>``, both named deterministically, so after the driver
is killed ``--resume`` restores the experiment: finished trials are not run again (a trial
whose ``sweep_result.json`` exists only re-reports it, for the case where Tune's last
experiment snapshot predates its end), unfinished ones continue from their last checkpoint,
in the same MLflow runs.

Timing (``benchmarks/bench_sweep.py``): ``events.jsonl`` in the sweep directory records the
driver's view (trial scheduled/started/completed) and the trial's (setup, training loop,
evaluation, logging), so a trial's wall time can be split into Ray start-up and scheduling
and the training itself.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dtmem import metrics as M
from dtmem.config.base import ConfigError, apply_overrides, format_validation_error, load_config
from dtmem.config.sweep import EvaluationConfig, SweepConfig, ValidationConfig
from dtmem.config.tracking import TrackingConfig
from tuning.space import (
    Axis,
    apply_values,
    check_paths,
    check_values,
    parse_space,
    tune_param_space,
)

if TYPE_CHECKING:
    from pydantic import BaseModel
    from torch import nn

    from dtmem.batch import Batch
    from dtmem.config.train import TrainConfig
    from dtmem.data.windows import StateStats
    from dtmem.tracking import RunHandle
    from dtmem.training.loop import TrainJob, WorkerContext

__all__ = [
    "CHECKPOINT_METRICS",
    "STAGE",
    "SweepError",
    "SweepPlan",
    "SweepResult",
    "main",
    "plan_sweep",
    "run_sweep",
    "run_trial",
]

STAGE = "sweep"
EVAL_SUCCESS_RATE_MEAN = "eval/success_rate_mean"  # as dtmem.evaluation.EVAL_SUCCESS_RATE_MEAN
STEP = "step"  # optimiser steps: ASHA's time attribute
TRAIN_LOSS = M.TRAIN_LOSS
CHECKPOINT_METRICS: tuple[str, ...] = (M.VAL_LOSS, M.VAL_LOSS_ACTION, TRAIN_LOSS)

TRIAL_TAG = "dtmem.trial_id"
SWEEP_TAG = "dtmem.sweep"
SWEEP_DIR_TAG = "dtmem.sweep_dir"
TRIAL_STATUS_TAG = "dtmem.trial_status"  # finished | early_stopped | failed
PARENT_TAG = "mlflow.parentRunId"

TUNE_DIR = "tune"  # Tune's experiment (storage_path=<sweep dir>, name="tune")
RUNS_DIR = "runs"  # the trials' run directories (checkpoint.dir)
STATE_FILE = "sweep.json"  # the sweep's MLflow run id
EVENTS_FILE = "events.jsonl"
RESULT_FILE = "sweep_result.json"  # in a trial's run dir, written last: the trial is done
FINAL_FILE = "final_metrics.json"  # rank 0's final report (metrics and samples)
STOPPED_MARKER = ".stopped_early"
PG_FILE = ".train_placement_group"
RESULTS_ARTIFACT = "sweep_results.csv"

# Paths the sweep sets itself (a trial's config is the base config with these replaced).
RESERVED: dict[str, str] = {
    "run_name": "each trial is named by its Tune trial id",
    "checkpoint.dir": "trials write under the sweep directory",
    "tracking": "trials log to the sweep's MLflow store: set tracking in the sweep file",
    "registry": "trial models are not registered",
    "scaling": "every trial gets the same resources: set scaling in the base config",
    "data.root": "set it in the base config or overrides",
    "progress": "trials run without a progress display",
}


class SweepError(ValueError):
    """A sweep that cannot run as configured; one line."""


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class TrialSpec:
    """What every trial needs besides its sampled values (picklable: it travels to Tune)."""

    name: str
    stage: str  # "pretrain" | "finetune"
    base: dict[str, Any]  # the base config with the sweep's own fields set, as data
    sweep_dir: str
    tracking: TrackingConfig  # uri resolved
    executor: str  # "local" | "train"
    validation: ValidationConfig
    evaluation: EvaluationConfig | None
    extra_keys: tuple[str, ...]  # eval metrics reported as NaN at checkpoints (fifo only)
    parent_run_id: str | None = None

    @property
    def runs_dir(self) -> Path:
        return Path(self.sweep_dir) / RUNS_DIR


@dataclass(frozen=True)
class SweepPlan:
    """A checked sweep, ready to run."""

    cfg: SweepConfig
    axes: tuple[Axis, ...]
    base_config: TrainConfig  # the validated base stage config
    spec: TrialSpec
    metrics: tuple[str, ...]  # every metric name a trial of this sweep reports
    score: str  # the metric of the plots
    max_t: int  # the most optimiser steps a trial runs

    @property
    def sweep_dir(self) -> Path:
        return Path(self.spec.sweep_dir)

    @property
    def tune_dir(self) -> Path:
        return self.sweep_dir / TUNE_DIR


def _stage_class(stage: str) -> type[TrainConfig]:
    from dtmem.config.train import FinetuneConfig, PretrainConfig

    return PretrainConfig if stage == "pretrain" else FinetuneConfig


def resolve_base(base: str, config_dir: Path | None = None) -> Path:
    """The base config file: an absolute path as is; a relative one looked up next to the
    sweep file (``config_dir``), then in the working directory, then next to the shipped
    sweep files (this package's directory, whose files say ``../pipelines/configs/...``)."""
    path = Path(base).expanduser()
    if path.is_absolute():
        return path
    for root in (config_dir, Path.cwd(), Path(__file__).resolve().parent):
        if root is not None and (root / path).is_file():
            return (root / path).resolve()
    return path


def _load_base(cfg: SweepConfig) -> dict[str, Any]:
    path = resolve_base(cfg.base)
    if not path.is_file():
        raise SweepError(f"base: {cfg.base}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SweepError(f"base: {path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SweepError(f"base: {path}: top level must be a mapping")
    return apply_overrides(data, list(cfg.overrides))


def _eval_metrics(evaluation: EvaluationConfig | None) -> tuple[str, ...]:
    if evaluation is None:
        return ()
    from dtmem.evaluation import resolve_metaworld_tasks
    from dtmem.metrics import eval_metric

    names = [M.EVAL_RETURN_MEAN, EVAL_SUCCESS_RATE_MEAN]
    for task in resolve_metaworld_tasks(evaluation.tasks):
        names += [eval_metric(task, "return_mean"), eval_metric(task, "success_rate")]
    return tuple(names)


def _fixed_fields(
    base: TrainConfig, sweep_dir: Path, tracking: TrackingConfig, executor: str
) -> dict[str, Any]:
    """The fields the sweep sets on every trial (paths made absolute: trials run elsewhere)."""
    from dtmem.data.minari_io import resolve_root

    fixed: dict[str, Any] = {
        "run_name": "trial",  # replaced by the trial id
        "checkpoint.dir": str(sweep_dir / RUNS_DIR),
        "tracking": tracking.model_dump(mode="json"),
        "registry.name": None,
        "progress": False,
        "data.root": str(resolve_root(base.data.root).resolve()),
    }
    if base.data.state_stats_path is not None:
        fixed["data.state_stats_path"] = str(Path(base.data.state_stats_path).resolve())
    pretrained = getattr(base, "pretrained", None)
    if pretrained is not None and not pretrained.startswith(("runs:/", "models:/")):
        fixed["pretrained"] = str(Path(pretrained).expanduser().resolve())
    if executor == "local":
        fixed["scaling.ray"] = False
    return fixed


def plan_sweep(cfg: SweepConfig, check_data: bool = True) -> SweepPlan:
    """Every check that needs no Ray: the base config, the space (paths, forms, every value
    against the base config), the metric, the evaluation tasks and (``check_data``) the
    validation data."""
    from pydantic import ValidationError

    from dtmem.tracking import resolve_tracking_uri

    stage_cls = _stage_class(cfg.stage)
    data = _load_base(cfg)
    axes = parse_space(cfg.space)
    check_paths(axes, stage_cls, RESERVED, "space")
    try:
        base = stage_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"base {cfg.base}")) from None

    modes = [getattr(base, "mode", None)]
    modes += [v for a in axes if a.path == "mode" for v in a.values]
    if "frozen" in modes:
        raise SweepError("finetune mode=frozen trains nothing, so there is nothing to sweep")

    workers = base.scaling.num_workers
    executor = cfg.resources.executor
    if executor == "auto":
        executor = "local" if workers == 1 or not base.scaling.ray else "train"
    if executor == "local" and workers != 1:
        raise SweepError(f"resources.executor=local runs one worker; scaling.num_workers={workers}")
    if executor == "train" and not base.scaling.ray:
        raise SweepError("resources.executor=train needs scaling.ray=true in the base config")

    sweep_dir = Path(cfg.storage_dir).expanduser().resolve() / cfg.name
    uri = resolve_tracking_uri(cfg.tracking.uri)
    tracking = cfg.tracking.model_copy(update={"uri": uri, "run_name": None})
    fixed_data = apply_values(data, _fixed_fields(base, sweep_dir, tracking, executor))
    check_values(axes, fixed_data, stage_cls.model_validate, "space", seed=cfg.seed)

    if cfg.search == "optuna":
        import importlib.util

        if importlib.util.find_spec("optuna") is None:
            raise SweepError(
                "search=optuna needs optuna: pip install 'dtmem[optuna]' (or search: basic)"
            )
        grid = [a.path for a in axes if a.is_grid]
        if grid:
            raise SweepError(f"search=optuna takes no grid axes ({grid[0]}): use choice")

    eval_names = _eval_metrics(cfg.evaluation)
    known = (*CHECKPOINT_METRICS, *eval_names)
    if cfg.metric not in known:
        raise SweepError(
            f"metric {cfg.metric!r}: no trial of this sweep reports it; known: {', '.join(known)}"
        )
    extra: tuple[str, ...] = ()
    if cfg.metric in eval_names:
        if cfg.scheduler.kind == "asha":
            raise SweepError(
                f"metric {cfg.metric!r} is known only when a trial ends; ASHA needs one at "
                "every checkpoint: use val/loss, or scheduler.kind=fifo"
            )
        extra = (cfg.metric,)
    score = cfg.plot.score or (M.EVAL_RETURN_MEAN if cfg.evaluation else cfg.metric)
    if score not in known:
        raise SweepError(f"plot.score {score!r}: no trial reports it; known: {', '.join(known)}")

    max_steps = next((a for a in axes if a.path == "optim.max_steps"), None)
    max_t = int(max_steps.upper_bound()) if max_steps else base.optim.max_steps

    spec = TrialSpec(
        name=cfg.name,
        stage=cfg.stage,
        base=fixed_data,
        sweep_dir=str(sweep_dir),
        tracking=tracking,
        executor=executor,
        validation=cfg.validation,
        evaluation=cfg.evaluation,
        extra_keys=extra,
    )
    if check_data:
        _check_validation_data(base, cfg.validation, fixed_data["data"]["root"])
    return SweepPlan(cfg, tuple(axes), base, spec, known, score, max_t)


def _check_validation_data(base: TrainConfig, vcfg: ValidationConfig, root: str) -> None:
    """Open the validation episodes of the base config and cut one batch (no model)."""
    data = base.data.model_copy(update={"root": root})
    validation_batches(data, vcfg, state_stats=None, limit=1)


# --------------------------------------------------------------------------- validation


def validation_sources(data: Any, vcfg: ValidationConfig) -> list[Any]:
    """The held-out episodes: ``vcfg.datasets`` whole, or the episodes of the training
    datasets that ``data.episode_fraction`` leaves out (same subset rule as training)."""
    import numpy as np

    from dtmem.data.sampler import TaskSource, build_sources

    if vcfg.datasets is not None:
        held = data.model_copy(update={"datasets": vcfg.datasets, "episode_fraction": 1.0})
        return build_sources(held)
    if data.episode_fraction >= 1.0:
        raise SweepError(
            "validation: data.episode_fraction=1 trains on every episode, so none is held out; "
            "set data.episode_fraction < 1 (overrides) or validation.datasets"
        )
    sources = []
    for s in build_sources(data):
        lengths = s.reader.episode_lengths()
        rest = np.setdiff1d(np.flatnonzero(lengths > 0), s.episode_ids).astype(np.int64)
        if rest.size:
            sources.append(TaskSource(s.task_id, s.reader, rest, lengths[rest], 1.0))
    if not sources:
        raise SweepError(
            f"validation: data.episode_fraction={data.episode_fraction} leaves no episode out "
            "of any dataset; lower it or set validation.datasets"
        )
    return sources


def validation_batches(
    data: Any, vcfg: ValidationConfig, state_stats: StateStats | None, limit: int | None = None
) -> list[Batch]:
    """The validation windows, cut once: the first ``vcfg.batches`` batches of one epoch of
    the held-out episodes (seeded, so every checkpoint and every trial with the same data
    sees the same windows)."""
    import itertools

    from dtmem.data.episodes import DataError
    from dtmem.data.sampler import WindowSampler

    sources = validation_sources(data, vcfg)
    try:
        sampler = WindowSampler(
            sources,
            context=data.context,
            batch_size=vcfg.batch_size,
            returns=data.returns,
            return_scale=data.return_scale,
            frame_stack=data.frame_stack,
            state_stats=state_stats if data.normalize_states else None,
            seed=vcfg.seed,
            shuffle_episodes=data.shuffle_episodes,
            cache_mb=data.cache_mb,
        )
        batches = list(itertools.islice(sampler.iter_epoch(), limit or vcfg.batches))
    except DataError as exc:
        raise SweepError(
            f"validation: {exc} (held-out windows; lower validation.batch_size)"
        ) from None
    return batches


def validation_loss(
    model: nn.Module, batches: Sequence[Batch], rank: int = 0, world_size: int = 1
) -> tuple[dict[str, float], list[float]]:
    """Mean losses over ``batches`` (each worker takes every world_size-th batch; the sums are
    all-reduced) with dropout off; returns the means and each batch's total loss."""
    import torch

    from dtmem.model import dt_loss
    from dtmem.training.checkpoint import unwrap

    inner = unwrap(model)
    device = next(inner.parameters()).device
    n = len(batches)
    per_batch = torch.zeros(n, dtype=torch.float64)
    action = torch.zeros(n, dtype=torch.float64)
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            for i in range(rank, n, world_size):
                b = batches[i].to(device)
                out = inner(b.observations, b.returns_to_go, b.actions, b.rewards, b.timesteps)
                parts = dt_loss(out, b)
                per_batch[i] = parts.total.double().cpu()
                action[i] = parts.action.double().cpu()
    finally:
        inner.train(was_training)
    dist = torch.distributed
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        both = torch.stack([per_batch, action]).to(device)  # (2, n); gloo or nccl
        dist.all_reduce(both)
        per_batch, action = both.cpu()[0], both.cpu()[1]
    means = {M.VAL_LOSS: float(per_batch.mean()), M.VAL_LOSS_ACTION: float(action.mean())}
    return means, per_batch.tolist()


# --------------------------------------------------------------------------- trial reporting


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
            _write_json(Path(job.run_dir) / FINAL_FILE, payload)
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
    body of ``dtmem evaluate``'s actors): per-task and mean return and success rate, and
    one row per episode."""
    import numpy as np

    from dtmem.evaluation import (
        EvalWorker,
        ModelPayload,
        TaskRequest,
        check_requests,
        make_units,
        resolve_metaworld_tasks,
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
        for unit in make_units(requests, seed=ecfg.seed, chunk=ecfg.envs):
            by_task[unit.request.task] += worker.run(unit).episodes
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


# --------------------------------------------------------------------------- files


def _write_json(path: Path, payload: Any) -> None:
    """Atomically: a temp file in the same directory, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def log_event(sweep_dir: str | Path, event: str, **fields: Any) -> None:
    """Append one line to the sweep's ``events.jsonl`` (O_APPEND: lines never interleave)."""
    line = json.dumps({"t": time.time(), "event": event, **fields}, default=_json_default)
    path = Path(sweep_dir) / EVENTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_events(sweep_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(sweep_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- MLflow of trials


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def find_trial_run(tracking: TrackingConfig, parent_run_id: str, trial_id: str) -> str | None:
    """The MLflow run of a trial of the sweep run ``parent_run_id``, or None."""
    assert tracking.uri is not None
    client = _client(tracking.uri)
    exp = client.get_experiment_by_name(tracking.experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = "
        f"'{parent_run_id}'",
        max_results=2,
    )
    return runs[0].info.run_id if runs else None


def _trial_run(
    spec: TrialSpec, cfg: BaseModel, trial_id: str, values: Mapping[str, Any], tags: dict[str, str]
) -> RunHandle:
    """The trial's nested MLflow run: found by trial id (a restarted trial continues it) or
    created; config as params and config.yaml, the swept values as tags."""
    from dtmem.tracking import STAGE_TAG, RunHandle, config_params, git_commit, version_tags

    assert spec.tracking.uri is not None and spec.parent_run_id is not None
    client = _client(spec.tracking.uri)
    run_id = find_trial_run(spec.tracking, spec.parent_run_id, trial_id)
    all_tags = {
        STAGE_TAG: spec.stage,
        PARENT_TAG: spec.parent_run_id,
        TRIAL_TAG: trial_id,
        SWEEP_TAG: spec.name,
        **version_tags(),
        **tags,
        **{f"sweep.{k}": str(v) for k, v in values.items()},
    }
    commit = git_commit()
    if commit:
        all_tags["dtmem.git_commit"] = commit
    if run_id is None:
        exp = client.get_experiment_by_name(spec.tracking.experiment)
        run = client.create_run(
            exp.experiment_id, tags=all_tags, run_name=f"{spec.name}-{trial_id}"
        )
        run_id = run.info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
    handle = RunHandle(run_id=run_id, uri=spec.tracking.uri)
    handle.set_tags(all_tags)
    handle.log_params(config_params(cfg))
    handle.log_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config.yaml")
    return handle


def _end_trial_run(uri: str, run_id: str, status: str, trial_status: str) -> None:
    client = _client(uri)
    client.set_tag(run_id, TRIAL_STATUS_TAG, trial_status)
    client.set_terminated(run_id, status=status)


# --------------------------------------------------------------------------- the trial


def trial_config(spec: TrialSpec, values: Mapping[str, Any], trial_id: str) -> TrainConfig:
    """The base config with the trial's values and its name (validated)."""
    from pydantic import ValidationError

    data = apply_values(spec.base, {**values, "run_name": trial_id})
    try:
        return _stage_class(spec.stage).model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"trial {trial_id}")) from None


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """Tune's sampled values as plain Python (numpy scalars -> int/float)."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}


def run_trial(values: dict[str, Any], spec: TrialSpec) -> None:
    """One Tune trial: train the stage's config with ``values`` set, reporting at every
    checkpoint; then evaluate, log and mark the trial done (``RESULT_FILE``)."""
    from ray import tune

    t0 = time.time()
    trial_id = tune.get_context().get_trial_id()
    values = _plain(values)
    cfg = trial_config(spec, values, trial_id)
    run_dir = spec.runs_dir / trial_id
    done = _read_json(run_dir / RESULT_FILE)
    if done is not None:  # finished before the driver died; Tune's snapshot predates it
        log_event(spec.sweep_dir, "trial_replayed", trial_id=trial_id)
        tune.report(done["metrics"])
        return
    log_event(spec.sweep_dir, "trial_begin", trial_id=trial_id, pid=os.getpid())
    plan = _prepare(cfg, spec.stage)
    run = _trial_run(spec, cfg, trial_id, values, plan.tags)
    try:
        _train_and_finish(spec, cfg, plan, run, trial_id, values, t0)
    except BaseException:
        if not (run_dir / STOPPED_MARKER).exists():  # not the driver stopping it
            _end_trial_run(run.uri, run.run_id, "FAILED", "failed")
        raise


def _prepare(cfg: TrainConfig, stage: str) -> Any:
    from dtmem.config.train import FinetuneConfig, PretrainConfig
    from dtmem.training.stage import prepare_finetune, prepare_pretrain

    if stage == "pretrain":
        assert isinstance(cfg, PretrainConfig)
        return prepare_pretrain(cfg)
    assert isinstance(cfg, FinetuneConfig)
    return prepare_finetune(cfg)


def _train_and_finish(
    spec: TrialSpec,
    cfg: TrainConfig,
    plan: Any,
    run: RunHandle,
    trial_id: str,
    values: Mapping[str, Any],
    t0: float,
) -> None:
    from ray import tune

    from dtmem.training.loop import local_context, run_worker
    from dtmem.training.stage import finish, log_model_size

    run_dir = Path(plan.run_dir)
    log_model_size(plan, run)
    batches = validation_batches(cfg.data, spec.validation, plan.state_stats)
    job = plan.job(run)
    (run_dir / FINAL_FILE).unlink(missing_ok=True)  # a failed attempt's
    t_train = time.time()
    log_event(spec.sweep_dir, "train_begin", trial_id=trial_id, from_step=plan.resume_step)
    if spec.executor == "local":
        reporter = TrialReporter(batches, tune.report, spec.extra_keys, spec.evaluation, handle=run)
        ctx = local_context(cfg.scaling.use_gpu)
        run_worker(job, ctx, on_checkpoint=reporter.on_checkpoint)
        reporter.on_end(job, ctx, loop_s=time.time() - t_train)
    else:
        _fit_on_ray_train(spec, cfg, job, batches)
    t_end = time.time()
    log_event(spec.sweep_dir, "train_end", trial_id=trial_id, train_s=t_end - t_train)
    final = _read_json(run_dir / FINAL_FILE)
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
    _write_json(run_dir / RESULT_FILE, payload)  # the trial is done
    _end_trial_run(run.uri, run.run_id, "FINISHED", "finished")
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


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


# --------------------------------------------------------------------------- the driver


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
                _end_trial_run(self.tracking.uri, run_id, "KILLED", "early_stopped")
            release_train_workers(run_dir)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            log_event(self.sweep_dir, "trial_retry", trial_id=trial.trial_id)
            release_train_workers(self._run_dir(trial))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            log_event(self.sweep_dir, "trial_error", trial_id=trial.trial_id)
            release_train_workers(self._run_dir(trial))

    return _SweepCallback


def _resources(plan: SweepPlan) -> tuple[dict[str, float], int]:
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


def _tuner(
    plan: SweepPlan, trial_resources: dict[str, float], concurrency: int, restore: bool
) -> Any:
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
        scheduler: Any = ASHAScheduler(
            time_attr=STEP,
            max_t=plan.max_t + 1,  # ASHA stops a trial that reaches max_t: let it finish
            grace_period=cfg.scheduler.grace_period,
            reduction_factor=cfg.scheduler.reduction_factor,
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
            reuse_actors=False,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(plan.sweep_dir),
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
            callbacks=[callback],
            verbose=1,
        ),
    )


@dataclass(frozen=True)
class SweepResult:
    """What a sweep produced: one row per trial, the best, the MLflow run, the artifacts."""

    name: str
    sweep_dir: Path
    run_id: str  # the sweep's MLflow run
    metric: str
    mode: str
    rows: list[dict[str, Any]]  # trial_id, status, run_id, swept values, step, metrics...
    best: dict[str, Any] | None
    table: Path  # results.csv in the sweep directory (also on the MLflow run)
    plots: list[Path]
    wall_s: float

    def trials(self, status: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == status]


def _check_storage(plan: SweepPlan, resume: bool) -> tuple[str | None, bool]:
    """(the sweep's MLflow run id to continue or None, whether Tune's state can be
    restored); refuses to start a sweep over an existing one or to resume a missing one."""
    from ray import tune

    state = _read_json(plan.sweep_dir / STATE_FILE)
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


@contextmanager
def _ray() -> Iterator[None]:
    """Ray as found ($RAY_ADDRESS, tests), else a local instance shut down afterwards."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init()
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def run_sweep(cfg: SweepConfig, resume: bool = False) -> SweepResult:
    """Run (or, with ``resume``, finish) the sweep; returns one row per trial and the best."""
    from dataclasses import replace

    from dtmem.tracking import check_tracking, start_run

    t0 = time.time()
    plan = plan_sweep(cfg)
    assert plan.spec.tracking.uri is not None
    check_tracking(plan.spec.tracking.uri)
    parent_id, restore = _check_storage(plan, resume)
    with _ray():
        trial_resources, concurrency = _resources(plan)
        tags = {SWEEP_TAG: cfg.name, SWEEP_DIR_TAG: str(plan.sweep_dir)}
        with start_run(
            cfg.tracking,
            stage=STAGE,
            config=cfg,
            tags=tags,
            run_name=cfg.tracking.run_name or cfg.name,
            run_id=parent_id,
        ) as parent:
            if parent_id is None:
                plan.sweep_dir.mkdir(parents=True, exist_ok=True)
                _write_json(plan.sweep_dir / STATE_FILE, {"run_id": parent.run_id})
                parent.log_text(
                    yaml.safe_dump(plan.base_config.model_dump(mode="json"), sort_keys=False),
                    "base_config.yaml",
                )
            log_event(plan.sweep_dir, "sweep_resume" if resume else "sweep_start")
            plan = replace(plan, spec=replace(plan.spec, parent_run_id=parent.run_id))
            grid = _tuner(plan, trial_resources, concurrency, restore).fit()
            rows = collect_rows(plan, grid)
            result = _report(plan, parent, rows, time.time() - t0)
            log_event(plan.sweep_dir, "sweep_end", wall_s=result.wall_s)
    _print_summary(result, plan)
    return result


# --------------------------------------------------------------------------- results


def collect_rows(plan: SweepPlan, grid: Any) -> list[dict[str, Any]]:
    """One row per trial: status (finished, early_stopped, failed, not_started), the swept
    values, the final or last-reported metrics; trials' MLflow runs are brought to their
    final status."""
    spec = plan.spec
    rows = []
    for res in grid:
        trial_id = str(res.metrics.get("trial_id") or Path(res.path).name)
        run_dir = spec.runs_dir / trial_id
        done = _read_json(run_dir / RESULT_FILE)
        values = {a.path: _plain(res.config).get(a.path) for a in plan.axes}
        row: dict[str, Any] = {"trial_id": trial_id}
        if done is not None:
            row["status"] = "finished"
            metrics = done["metrics"]
        else:
            metrics = {k: res.metrics.get(k) for k in (STEP, *plan.metrics)}
            row["status"] = (
                "failed"
                if res.error is not None
                else "early_stopped"
                if metrics[STEP] is not None
                else "not_started"
            )
        row.update(values)
        row[STEP] = metrics.get(STEP)
        row.update({k: metrics.get(k) for k in plan.metrics})
        run_id = done["run_id"] if done else None
        if run_id is None and spec.parent_run_id is not None:
            run_id = find_trial_run(spec.tracking, spec.parent_run_id, trial_id)
        row["run_id"] = run_id
        if done is not None:
            row.update({k: round(v, 3) for k, v in done["timings"].items()})
        elif run_id is not None:  # a trial the driver could not close (killed, errored)
            assert spec.tracking.uri is not None
            status = _client(spec.tracking.uri).get_run(run_id).info.status
            if status == "RUNNING":
                final = "FAILED" if row["status"] == "failed" else "KILLED"
                _end_trial_run(spec.tracking.uri, run_id, final, row["status"])
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"])


def best_row(rows: Sequence[Mapping[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The finished trial with the best finite ``metric`` (None if there is none)."""
    scored = [
        dict(r)
        for r in rows
        if r["status"] == "finished" and isinstance(r.get(metric), int | float)
        if math.isfinite(r[metric])
    ]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda r: r[metric])


def bootstrap_ci(
    values: Sequence[float], resamples: int, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean of ``values``."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)  # (resamples,)
    alpha = (1.0 - level) / 2
    return mean, float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def _samples(plan: SweepPlan, trial_id: str, score: str) -> list[float]:
    """The units of one trial's score, for a bootstrap: its evaluation episodes (eval/ scores;
    every task has the same number of episodes, so their mean is the score) or its
    validation batches (val/loss)."""
    done = _read_json(plan.spec.runs_dir / trial_id / RESULT_FILE) or {}
    parts = score.split("/")
    if parts[0] == "eval":
        key = "success" if parts[-1].startswith("success_rate") else "return"
        episodes = done.get("episodes", [])
        if len(parts) == 3:  # eval/<task>/<name>
            episodes = [e for e in episodes if e["task"] == parts[1]]
        return [float(e[key] or 0.0) for e in episodes]
    if score == M.VAL_LOSS:
        return [float(v) for v in done.get("val_batches", [])]
    return []


def score_points(
    plan: SweepPlan, rows: Sequence[Mapping[str, Any]], x: str, score: str
) -> tuple[list[dict[str, Any]], str]:
    """Per value of ``x``: mean score and 95% CI over the finished trials, and which CI it is:
    bootstrap over seeds (the trials sharing x) when every x has at least 2, else bootstrap
    over each trial's episodes (eval/) or validation batches (val/loss)."""
    finished = [r for r in rows if r["status"] == "finished" and r.get(score) is not None]
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for r in finished:
        groups.setdefault(r[x], []).append(r)
    n_boot = plan.cfg.plot.bootstrap_resamples
    across = bool(groups) and all(len(g) >= 2 for g in groups.values())
    method = (
        "bootstrap over seeds"
        if across
        else (
            "bootstrap over episodes"
            if score.startswith("eval/")
            else "bootstrap over validation batches"
        )
    )
    points = []
    for value in sorted(groups):
        g = groups[value]
        scores = [float(r[score]) for r in g]
        if across:
            mean, low, high = bootstrap_ci(scores, n_boot)
        else:
            mean = sum(scores) / len(scores)
            units = [u for r in g for u in _samples(plan, r["trial_id"], score)]
            _, low, high = bootstrap_ci(units, n_boot) if units else (mean, mean, mean)
        points.append({x: value, "score": mean, "ci_low": low, "ci_high": high, "n": len(g)})
    return points, method


def plot_score(
    points: Sequence[Mapping[str, Any]], x: str, score: str, method: str, path: Path
) -> Path:
    """Score against ``x`` (log2 axis) with 95% CI error bars (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p[x] for p in points]
    ys = [p["score"] for p in points]
    lo = [p["score"] - p["ci_low"] for p in points]
    hi = [p["ci_high"] - p["score"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4)
    if xs and all(isinstance(v, int | float) and v > 0 for v in xs):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(score)
    ax.set_title(f"{score} vs {x} (95% CI: {method})", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_heatmap(
    rows: Sequence[Mapping[str, Any]], a: str, b: str, score: str, mode: str, path: Path
) -> Path:
    """Mean score of the finished trials per (a, b), averaged over the other swept values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    finished = [r for r in rows if r["status"] == "finished" and r.get(score) is not None]
    av = sorted({r[a] for r in finished})
    bv = sorted({r[b] for r in finished})
    grid = np.full((len(av), len(bv)), np.nan)  # (rows: a, cols: b)
    for i, va in enumerate(av):
        for j, vb in enumerate(bv):
            cell = [float(r[score]) for r in finished if r[a] == va and r[b] == vb]
            if cell:
                grid[i, j] = float(np.mean(cell))
    fig, ax = plt.subplots(figsize=(1.2 * len(bv) + 2.5, 0.8 * len(av) + 2), dpi=100)
    image = ax.imshow(grid, cmap="viridis_r" if mode == "min" else "viridis", aspect="auto")
    for i in range(len(av)):
        for j in range(len(bv)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(bv)), [f"{v:g}" if isinstance(v, float) else str(v) for v in bv])
    ax.set_yticks(range(len(av)), [f"{v:g}" if isinstance(v, float) else str(v) for v in av])
    ax.set_xlabel(b)
    ax.set_ylabel(a)
    ax.set_title(f"{score} (mean over other values)", fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    import csv
    import io

    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)
    return path


def _report(
    plan: SweepPlan, parent: RunHandle, rows: list[dict[str, Any]], wall_s: float
) -> SweepResult:
    """The results table, the plots and the summary metrics on the sweep's run."""
    cfg = plan.cfg
    swept = {a.path for a in plan.axes}
    table = _write_csv(rows, plan.sweep_dir / "results.csv")
    parent.log_table(rows, RESULTS_ARTIFACT)
    plots: list[Path] = []
    if cfg.plot.x in swept:
        points, method = score_points(plan, rows, cfg.plot.x, plan.score)
        if points:
            slug = cfg.plot.x.split(".")[-1]
            path = plot_score(
                points, cfg.plot.x, plan.score, method, plan.sweep_dir / f"score_vs_{slug}.png"
            )
            plots.append(path)
            _write_csv(
                [{**p, "ci": method} for p in points], plan.sweep_dir / f"score_vs_{slug}.csv"
            )
            parent.log_table([{**p, "ci": method} for p in points], f"score_vs_{slug}.csv")
    a, b = cfg.plot.heatmap
    if a in swept and b in swept and any(r["status"] == "finished" for r in rows):
        path = plot_heatmap(
            rows,
            a,
            b,
            plan.score,
            cfg.mode,
            plan.sweep_dir / f"heatmap_{a.split('.')[-1]}_{b.split('.')[-1]}.png",
        )
        plots.append(path)
    for p in plots:
        parent.log_artifact(p, "plots")
    best = best_row(rows, cfg.metric, cfg.mode)
    counts = {
        s: sum(r["status"] == s for r in rows) for s in ("finished", "early_stopped", "failed")
    }
    metrics = {
        "sweep/trials": float(len(rows)),
        "sweep/trials_finished": float(counts["finished"]),
        "sweep/trials_early_stopped": float(counts["early_stopped"]),
        "sweep/trials_failed": float(counts["failed"]),
        "sweep/wall_s": wall_s,
    }
    if best is not None:
        metrics["sweep/best_score"] = float(best[cfg.metric])
        parent.set_tags(
            {
                "dtmem.best_trial_id": best["trial_id"],
                "dtmem.best_run_id": str(best["run_id"]),
                "dtmem.sweep_metric": cfg.metric,
            }
        )
    parent.log_metrics(metrics, step=0)
    return SweepResult(
        name=cfg.name,
        sweep_dir=plan.sweep_dir,
        run_id=parent.run_id,
        metric=cfg.metric,
        mode=cfg.mode,
        rows=rows,
        best=best,
        table=table,
        plots=plots,
        wall_s=wall_s,
    )


def _print_summary(result: SweepResult, plan: SweepPlan) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dtmem sweep {result.name}")
    columns = ["trial_id", "status", *[a.path for a in plan.axes], STEP, result.metric]
    if plan.score != result.metric:
        columns.append(plan.score)
    for col in columns:
        table.add_column(col, no_wrap=True)
    for row in result.rows:
        cells = []
        for col in columns:
            v = row.get(col)
            cells.append(f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v))
        table.add_row(*cells)
    console = Console()
    console.print(table)
    if result.best is not None:
        console.print(
            f"best: {result.best['trial_id']} {result.metric}={result.best[result.metric]:.4g} "
            f"(MLflow run {result.best['run_id']})"
        )
    console.print(
        f"{len(result.rows)} trials in {result.wall_s:.1f} s; sweep run {result.run_id}; "
        f"results {result.table}"
    )


def main(config_path: Path, overrides: list[str], resume: bool = False) -> SweepResult:
    """``dtmem sweep CONFIG [--set ...] [--resume]``."""
    cfg = load_config(SweepConfig, config_path, overrides)
    base = resolve_base(cfg.base, Path(config_path).parent)
    return run_sweep(cfg.model_copy(update={"base": str(base)}), resume=resume)


if __name__ == "__main__":  # python -m tuning.sweep CONFIG [--set k=v ...] [--resume]
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tuning.sweep")
    parser.add_argument("config", type=Path)
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    main(args.config, args.overrides, args.resume)
