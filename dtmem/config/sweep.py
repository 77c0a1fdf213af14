"""Config of ``dtmem sweep``: a Ray Tune sweep over any fields of a pretraining or fine-tuning
config, named by dotted path (``model.memory.slots``, ``lora.rank``). One YAML file per sweep
in ``tuning/``; the search space itself is checked by ``dtmem.sweep.space`` against the stage's
config (the paths, the value types) before any trial starts."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from dtmem.config.base import FrozenConfig, SafeName
from dtmem.config.data import DatasetSpec
from dtmem.config.tracking import TrackingConfig

__all__ = [
    "EvaluationConfig",
    "PlotConfig",
    "SchedulerConfig",
    "SweepConfig",
    "TrialResourcesConfig",
    "ValidationConfig",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class SchedulerConfig(FrozenConfig):
    """Early stopping of weak trials (Tune's ASHA), on the sweep's metric at each checkpoint."""

    kind: Literal["asha", "fifo"] = Field(
        "asha", description="'asha': asynchronous successive halving; 'fifo': every trial runs"
    )
    grace_period: int = Field(
        1,
        ge=1,
        description="optimiser steps a trial runs before ASHA may stop it (first rung); "
        "rungs are at grace_period * reduction_factor^k before the trial's last step, judged "
        "at the first checkpoint at or after each; a trial that reaches its last step finishes",
    )
    reduction_factor: float = Field(
        2.0, gt=1, description="ASHA keeps the best 1/reduction_factor of trials at each rung"
    )


class ValidationConfig(FrozenConfig):
    """The held-out validation loss every trial reports at each checkpoint (ASHA's signal)."""

    datasets: tuple[DatasetSpec, ...] | None = Field(
        None,
        description="held-out datasets (read under data.root); null: the episodes of the "
        "training datasets that data.episode_fraction leaves out (it must be < 1)",
    )
    batches: int = Field(8, ge=1, description="at most this many validation batches")
    batch_size: int = Field(16, ge=1, description="windows per validation batch")
    seed: int = Field(
        0, description="seed of the validation windows (the same at every checkpoint)"
    )

    @model_validator(mode="after")
    def _check(self) -> ValidationConfig:
        if self.datasets is not None and not self.datasets:
            raise ValueError("datasets: give at least one, or null for the left-out episodes")
        return self


class EvaluationConfig(FrozenConfig):
    """Rollouts of each finished trial's final model on Meta-World tasks (in the trial)."""

    tasks: Literal["ml45_train", "ml45_test"] | tuple[str, ...] = Field(
        ...,
        description="'ml45_train' or 'ml45_test' (ML45's 45 train / 5 held-out tasks), or a "
        "list of Meta-World task names",
    )
    episodes: int = Field(10, ge=1, description="episodes per task")
    target_return: float = Field(
        ..., allow_inf_nan=False, description="return-to-go at the first step (raw reward units)"
    )
    max_steps: int = Field(500, ge=1, description="agent steps after which an episode is cut")
    envs: int = Field(4, ge=1, description="envs stepped together (one batched model call)")
    seed: int = Field(0, ge=0, description="base seed of the episodes (the same for every trial)")

    @model_validator(mode="after")
    def _check_tasks(self) -> EvaluationConfig:
        if isinstance(self.tasks, tuple) and not self.tasks:
            raise ValueError("tasks: give at least one task, or ml45_train / ml45_test")
        return self


class TrialResourcesConfig(FrozenConfig):
    """How a trial trains and what Ray reserves for it."""

    executor: Literal["auto", "local", "train"] = Field(
        "auto",
        description="'local': the training function runs inside the Tune trial (one worker); "
        "'train': the trial builds and fits a Ray Train TorchTrainer (scaling.num_workers "
        "workers); 'auto': local when the stage has one worker, else train",
    )
    driver_cpus: float = Field(
        1.0,
        gt=0,
        description="CPUs Tune reserves for the trial itself when it drives a Ray Train run "
        "(its workers' CPUs come on top, reserved by Ray Train)",
    )
    max_concurrent_trials: int = Field(
        1,
        ge=1,
        description="trials run at once (lowered to what the cluster's CPUs/GPUs can hold)",
    )
    max_failures: int = Field(
        1,
        ge=0,
        description="Tune restarts a failed trial this many times; it resumes from its last "
        "checkpoint (Ray Train's own restarts are off inside a sweep)",
    )
    reuse_actors: bool = Field(
        True,
        description="in-process trials (executor local) run one after another in the same "
        "Tune actor, whose process and imports stay warm; false: a fresh process per trial "
        "(Ray Train trials always start afresh)",
    )


class PlotConfig(FrozenConfig):
    """The summary plots on the sweep's MLflow run."""

    score: str | None = Field(
        None,
        description="the metric plotted; null: eval/return_mean with an evaluation, else the "
        "sweep's metric",
    )
    x: str = Field(
        "model.memory.slots",
        description="swept path on the x axis of the score plot (log2 scale); no plot if it is "
        "not swept",
    )
    heatmap: tuple[str, str] = Field(
        ("lora.rank", "lora.alpha"),
        description="two swept paths (rows, columns) of the score heatmap; none if not swept",
    )
    bootstrap_resamples: int = Field(
        2000, ge=100, description="resamples of a bootstrap confidence interval"
    )


class SweepConfig(FrozenConfig):
    """``dtmem sweep``: Ray Tune trials of one stage config, each with some fields replaced."""

    name: SafeName = Field(
        ...,
        description="the sweep's name: its directory <storage_dir>/<name> (Tune state, trial "
        "checkpoints, results) and its MLflow run; run it again with --resume",
    )
    stage: Literal["pretrain", "finetune"] = Field(..., description="the stage each trial runs")
    base: str = Field(
        ...,
        min_length=1,
        description="the stage's YAML config; a relative path is looked up next to this "
        "file, then in the working directory, then next to the shipped tuning/*.yaml",
    )
    overrides: tuple[str, ...] = Field(
        (), description="dotted.key=value overrides of the base config, for every trial"
    )
    space: dict[str, dict[str, Any]] = Field(
        ...,
        description="dotted config path -> one of {grid: [..]}, {choice: [..]}, "
        "{uniform: [low, high]}, {loguniform: [low, high]}, {randint: [low, high)}",
    )
    search: Literal["basic", "optuna"] = Field(
        "basic",
        description="'basic': every grid combination x num_samples random draws (Tune's "
        "variant generator); 'optuna': TPE (pip install 'dtmem[optuna]'; no grid axes)",
    )
    num_samples: int = Field(
        1, ge=1, description="random draws (basic: per grid combination; optuna: trials)"
    )
    seed: int = Field(0, description="seed of the random search")
    metric: str = Field(
        "val/loss",
        description="what ASHA and the best trial are judged on: val/loss, val/loss_action, "
        "train/loss (each checkpoint) or an eval/ metric (end of trial, with evaluation)",
    )
    mode: Literal["min", "max"] = Field("min", description="minimise or maximise the metric")
    scheduler: SchedulerConfig = Field(
        default_factory=SchedulerConfig, description="early stopping of weak trials"
    )
    validation: ValidationConfig = Field(
        default_factory=ValidationConfig, description="the held-out validation loss"
    )
    evaluation: EvaluationConfig | None = Field(
        None, description="rollouts of each finished trial's model; null: none"
    )
    resources: TrialResourcesConfig = Field(
        default_factory=TrialResourcesConfig, description="trial executor and reservations"
    )
    storage_dir: str = Field("sweeps", description="root of sweep directories")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="MLflow for the sweep's run and every trial's (nested) run",
    )
    plot: PlotConfig = Field(default_factory=PlotConfig, description="summary plots")

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits, '_', '-', '.'")
        if not self.space:
            raise ValueError("space: empty; sweep at least one field")
        return self
