"""The plan of a sweep (``plan_sweep``): every check that needs no Ray (the base config, the
space, the executor, the metric, the evaluation tasks, the validation data), giving the
``TrialSpec`` every trial receives and the ``SweepPlan`` the driver runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import yaml

from dtmem import metrics as M
from dtmem.config.base import ConfigError, apply_overrides, format_validation_error
from dtmem.config.sweep import EvaluationConfig, SweepConfig, ValidationConfig
from dtmem.config.tracking import TrackingConfig
from dtmem.config.train import FinetuneConfig, PretrainConfig
from dtmem.sweep.base import (
    CHECKPOINT_METRICS,
    EVAL_SUCCESS_RATE_MEAN,
    RUNS_DIR,
    TUNE_DIR,
    SweepError,
)
from dtmem.sweep.space import (
    Axis,
    apply_values,
    check_paths,
    check_values,
    parse_space,
    short_names,
    trial_label,
)
from dtmem.sweep.validation import validation_batches

if TYPE_CHECKING:
    from dtmem.config.train import TrainConfig
    from dtmem.training.plan import TrainPlan

__all__ = [
    "RESERVED",
    "STAGES",
    "SweepPlan",
    "SweptStage",
    "TrialSpec",
    "plan_sweep",
    "resolve_base",
    "score_direction",
]

C = TypeVar("C", PretrainConfig, FinetuneConfig)

# Paths the sweep sets itself (a trial's config is the base config with these replaced).
RESERVED: dict[str, str] = {
    "run_name": "each trial is named by its Tune trial id",
    "checkpoint.dir": "trials write under the sweep directory",
    "tracking": "trials log to the sweep's MLflow store: set tracking in the sweep file",
    "registry": "trial models are not registered",
    "scaling": "every trial gets the same resources: set scaling in the base config",
    "data.root": "set it in the base config or overrides",
    "progress": "trials run without a progress display",
    "validation": "trials report the sweep's own held-out loss: set validation in the sweep file",
}

# The shipped sweep files (``tuning/*.yaml``), which name their base configs relative to
# their own directory.
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "tuning"


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
    names: dict[str, str]  # swept path -> its name in trial labels (``slots``, ``lora.rank``)
    threads: int  # torch threads of an in-process trial: the CPUs Tune reserves for it
    parent_run_id: str | None = None

    def label(self, values: Mapping[str, Any]) -> str:
        """The trial's name: what it varies (``slots=64,seed=1``)."""
        return trial_label(values, self.names)

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
    score: str  # the metric of the plots, which also picks the best trial
    score_mode: str  # "min" | "max": which end of ``score`` is best
    max_t: int  # the most optimiser steps a trial runs

    @property
    def sweep_dir(self) -> Path:
        return Path(self.spec.sweep_dir)

    @property
    def tune_dir(self) -> Path:
        return self.sweep_dir / TUNE_DIR


@dataclass(frozen=True)
class SweptStage(Generic[C]):
    """A stage a sweep can run: its config class and the stage's own checks
    (``dtmem.training.plan.prepare_*``), kept together so a trial's config reaches the
    matching ``prepare`` with its type known."""

    config: type[C]
    prepare: Callable[[C], TrainPlan]

    def validate(self, data: dict[str, Any]) -> C:
        return self.config.model_validate(data)


def _prepare_pretrain(cfg: PretrainConfig) -> TrainPlan:
    from dtmem.training.plan import prepare_pretrain  # torch: imported in the trial only

    return prepare_pretrain(cfg)


def _prepare_finetune(cfg: FinetuneConfig) -> TrainPlan:
    from dtmem.training.plan import prepare_finetune

    return prepare_finetune(cfg)


STAGES: dict[str, SweptStage[Any]] = {
    "pretrain": SweptStage(PretrainConfig, _prepare_pretrain),
    "finetune": SweptStage(FinetuneConfig, _prepare_finetune),
}


def resolve_base(base: str, config_dir: Path | None = None) -> Path:
    """The base config file: an absolute path as is; a relative one looked up next to the
    sweep file (``config_dir``), then in the working directory, then next to the shipped
    sweep files (``SHIPPED_DIR``, whose files say ``../pipelines/configs/...``)."""
    path = Path(base).expanduser()
    if path.is_absolute():
        return path
    for root in (config_dir, Path.cwd(), SHIPPED_DIR):
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
    # local: the loop in the trial's own process; train: always Ray Train, even for one worker
    fixed["scaling.ray"] = executor == "train"
    return fixed


def plan_sweep(cfg: SweepConfig, check_data: bool = True) -> SweepPlan:
    """Every check that needs no Ray: the base config, the space (paths, forms, every value
    against the base config), the metric, the evaluation tasks and (``check_data``) the
    validation data."""
    from pydantic import ValidationError

    from dtmem.tracking import resolve_tracking_uri

    stage_cls = STAGES[cfg.stage].config
    data = _load_base(cfg)
    axes = parse_space(cfg.space)
    check_paths(axes, stage_cls, RESERVED, "space")
    try:
        base = stage_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"base {cfg.base}")) from None

    if base.validation.episodes:
        raise SweepError(
            f"base: validation.episodes={base.validation.episodes}: a sweep's trials report "
            "its own held-out loss (the sweep file's validation); set it to 0"
        )
    modes = [getattr(base, "mode", None)]
    modes += [v for a in axes if a.path == "mode" for v in a.values]
    if "frozen" in modes:
        raise SweepError("finetune mode=frozen trains nothing, so there is nothing to sweep")

    workers = base.scaling.num_workers
    executor = cfg.resources.executor
    if executor == "auto":  # one worker trains in the trial's own process: no Ray Train
        executor = "local" if workers == 1 or base.scaling.ray is False else "train"
    if executor == "local" and workers != 1:
        raise SweepError(f"resources.executor=local runs one worker; scaling.num_workers={workers}")
    if executor == "train" and base.scaling.ray is False:
        raise SweepError("resources.executor=train needs scaling.ray not false in the base config")

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
    score_mode = cfg.mode if score == cfg.metric else score_direction(score)

    max_steps = next((a for a in axes if a.path == "optim.max_steps"), None)
    max_t = int(max_steps.upper_bound()) if max_steps else base.optim.max_steps
    if cfg.scheduler.kind == "asha" and cfg.scheduler.grace_period >= max_t:
        raise SweepError(
            f"scheduler.grace_period={cfg.scheduler.grace_period}: trials run {max_t} steps, "
            "so ASHA could never stop one before its end; lower it, or scheduler.kind=fifo"
        )

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
        names=short_names([a.path for a in axes]),
        threads=max(1, int(base.scaling.cpus_per_worker)),
    )
    if check_data:
        _check_validation_data(base, cfg.validation, fixed_data["data"]["root"])
    return SweepPlan(cfg, tuple(axes), base, spec, known, score, score_mode, max_t)


def score_direction(metric: str) -> str:
    """Which end of a reported metric is best: losses ``min``, ``eval/`` returns and
    success rates ``max``."""
    return "min" if metric.split("/")[-1].startswith("loss") else "max"


def _check_validation_data(base: TrainConfig, vcfg: ValidationConfig, root: str) -> None:
    """Open the validation episodes of the base config and cut one batch (no model)."""
    data = base.data.model_copy(update={"root": root})
    validation_batches(data, vcfg, state_stats=None, limit=1)
