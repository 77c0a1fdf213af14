"""Configs of the training stages: pretraining (``dtmem pretrain``) and fine-tuning
(``dtmem finetune``). One YAML file per experiment; ``pipelines/configs/`` holds the smoke,
Atari and Meta-World ones."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from dtmem.config.base import FrozenConfig, SafeName
from dtmem.config.data import DataConfig
from dtmem.config.model import LoRAConfig, ModelConfig, check_lora_fits_model
from dtmem.config.tracking import TrackingConfig

__all__ = [
    "CheckpointConfig",
    "EvalCurveConfig",
    "FailureConfig",
    "FinetuneConfig",
    "HeldOutConfig",
    "OptimConfig",
    "PretrainConfig",
    "RegistryConfig",
    "ScalingConfig",
    "TrainConfig",
    "check_model_fits_data",
]

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class OptimConfig(FrozenConfig):
    """AdamW with linear warm-up and gradient clipping."""

    lr: float = Field(3e-4, gt=0, description="peak learning rate, reached after warm-up")
    weight_decay: float = Field(
        0.1, ge=0, description="AdamW weight decay, on matrices only (not biases, norms, M_0)"
    )
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW (beta1, beta2)")
    warmup_steps: int = Field(
        100, ge=0, description="linear warm-up from 0 to lr over this many optimiser steps"
    )
    decay: Literal["none", "cosine"] = Field(
        "none",
        description="after warm-up: 'none' keeps lr (the DT recipe), 'cosine' decays it to "
        "min_lr_ratio*lr at max_steps",
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor, as a fraction of lr")
    grad_clip: float = Field(1.0, gt=0, description="clip the global gradient norm to this")
    max_steps: int = Field(..., gt=0, description="optimiser steps in the whole run")

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas {self.betas}: each must be in [0, 1)")
        return self


class ScalingConfig(FrozenConfig):
    """Data-parallel workers: one worker trains in this process; several run on Ray Train
    (one process per worker, DDP)."""

    num_workers: int = Field(1, ge=1, description="data-parallel workers (Ray Train actors)")
    use_gpu: bool = Field(False, description="one GPU per worker, NCCL; false: CPU with gloo")
    cpus_per_worker: float = Field(
        1.0,
        gt=0,
        description="CPUs of each worker: torch's threads (in this process too), and what Ray "
        "reserves for a Ray Train worker",
    )
    bf16: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU)")
    ray: bool | None = Field(
        None,
        description="null: Ray Train when num_workers > 1, this process for one worker (no Ray "
        "start-up); true: always Ray Train (e.g. one GPU worker on a cluster); false: this "
        "process (num_workers must be 1)",
    )

    @property
    def on_ray(self) -> bool:
        """Whether training runs on Ray Train workers (else in the calling process)."""
        return self.ray if self.ray is not None else self.num_workers > 1

    @model_validator(mode="after")
    def _check(self) -> ScalingConfig:
        if self.ray is False and self.num_workers != 1:
            raise ValueError(f"ray=false runs one process: num_workers={self.num_workers}")
        return self


class CheckpointConfig(FrozenConfig):
    """Training checkpoints: weights, optimiser, scheduler, data position, RNG; atomic."""

    every_steps: int = Field(500, gt=0, description="write a checkpoint every this many steps")
    keep_last: int = Field(3, ge=1, description="keep this many most recent checkpoints")
    dir: str = Field(
        "checkpoints",
        description="root of run directories (<dir>/<run_name>/step_N); with several "
        "nodes it must be shared storage",
    )


class FailureConfig(FrozenConfig):
    """How often Ray Train restarts the workers after a failure (from the last checkpoint)."""

    max_failures: int = Field(
        3, ge=0, description="worker-group restarts after a worker failure; 0 fails at once"
    )
    controller_failures: int = Field(
        0, ge=0, description="Ray Train controller restarts (Ray's default -1 retries forever)"
    )


class RegistryConfig(FrozenConfig):
    """Where the final model goes in the MLflow model registry."""

    name: str | None = Field(
        None, description="registered model name; null does not register the model"
    )
    alias: str = Field(
        "current",
        min_length=1,
        description="alias set on the new version (models:/<name>@<alias>); not 'latest' "
        "nor v<number>, which MLflow reserves",
    )

    @model_validator(mode="after")
    def _check(self) -> RegistryConfig:
        # MLflow's own rules, checked here so that a name it refuses fails before training,
        # not at registration after it
        name = self.name
        if name is not None and (
            not name.strip() or "/" in name or ":" in name or name == "." or name.startswith("..")
        ):
            raise ValueError(
                f"name {name!r}: MLflow refuses a model name that is blank, holds '/' or ':', "
                "is '.' or starts with '..'"
            )
        if not re.fullmatch(r"[\w-]+", self.alias):
            raise ValueError(
                f"alias {self.alias!r}: use letters, digits, '_' and '-' (MLflow's rule)"
            )
        if self.alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", self.alias):
            raise ValueError(f"alias {self.alias!r} is reserved by MLflow")
        return self


class HeldOutConfig(FrozenConfig):
    """Episodes kept out of training whose loss is logged as ``val/loss``."""

    episodes: int = Field(
        0,
        ge=0,
        description="episodes of each dataset held out (a fixed seeded choice, never "
        "trained on); 0: no validation loss",
    )
    every_steps: int = Field(100, gt=0, description="log val/loss every this many steps")
    batches: int = Field(4, gt=0, description="validation batches (the same windows each time)")


class EvalCurveConfig(FrozenConfig):
    """Short rollouts of the model being trained, in the training process (rank 0), logged as
    curves: ``eval/<task>/return_mean`` and ``success_rate`` per dataset env."""

    every_steps: int | None = Field(
        None, gt=0, description="roll out every this many steps (and at the end); null: never"
    )
    episodes: int = Field(2, gt=0, description="episodes per task and evaluation")
    max_steps: int = Field(100, gt=0, description="agent steps per episode at most")
    target_return: float | None = Field(
        None, description="return to condition on (continuous returns); null: Atari sampling"
    )


class TrainConfig(FrozenConfig):
    """What pretraining and fine-tuning share."""

    data: DataConfig = Field(..., description="training windows (datasets, context, batch)")
    optim: OptimConfig = Field(..., description="optimiser and schedule")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="workers and devices")
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="checkpoint cadence and location"
    )
    failure: FailureConfig = Field(
        default_factory=FailureConfig, description="recovery from worker failures"
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow")
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig, description="model registry entry of the final model"
    )
    log_every: int = Field(10, gt=0, description="log metrics every this many steps")
    seed: int = Field(0, description="seed of the model init and dropout (data: data.seed)")
    run_name: SafeName | None = Field(
        None,
        description="names the run (checkpoint directory and MLflow run); starting a stage "
        "again with the same name resumes it, or, once it has finished, reports it and "
        "leaves it alone (another name trains anew); null: '<stage>-<date>-<time>'",
    )
    progress: bool = Field(True, description="show a progress bar on the driver while training")
    verbose: bool = Field(
        False, description="let Ray's and MLflow's own log lines through to the terminal"
    )
    validation: HeldOutConfig = Field(
        default_factory=lambda: HeldOutConfig(),
        description="validation loss on episodes held out of training",
    )
    eval_curve: EvalCurveConfig = Field(
        default_factory=lambda: EvalCurveConfig(),
        description="short rollouts in the training process every few steps (off by default)",
    )

    @model_validator(mode="after")
    def _check_common(self) -> TrainConfig:
        curve = self.eval_curve
        if curve.every_steps is not None:
            if self.data.returns == "continuous" and curve.target_return is None:
                raise ValueError("eval_curve.target_return: continuous returns need a target")
            if any(d.env is None for d in self.data.datasets):
                raise ValueError("eval_curve: every dataset needs its env (data.datasets.N.env)")
        if self.run_name is not None and not _RUN_NAME.match(self.run_name):
            raise ValueError(
                f"run_name {self.run_name!r}: use letters, digits, '_', '-', '.' (a directory name)"
            )
        return self


class PretrainConfig(TrainConfig):
    """``dtmem pretrain``: a DT-Mem (or plain DT) trained from scratch on a task mixture."""

    model: ModelConfig = Field(..., description="the architecture")

    @model_validator(mode="after")
    def _check_model_data(self) -> PretrainConfig:
        check_model_fits_data(self.model, self.data)
        return self


class FinetuneConfig(TrainConfig):
    """``dtmem finetune``: adapt a pretrained model to a held-out task."""

    pretrained: str = Field(
        ...,
        min_length=1,
        description="the pretrained model: a checkpoint directory, runs:/<run_id>, "
        "models:/<name>@<alias> or models:/<name>/<version>",
    )
    mode: Literal["lora", "full", "frozen"] = Field(
        "lora",
        description="'lora': train LoRA adapters on the memory only; 'full': every weight; "
        "'frozen': no training (zero-shot), the model is only packaged and logged",
    )
    lora: LoRAConfig = Field(default_factory=LoRAConfig, description="adapters ('lora' mode)")
    model: ModelConfig | None = Field(
        None,
        description="null takes the architecture from the checkpoint; given, it must match "
        "the checkpoint's (dropout may differ)",
    )

    @model_validator(mode="after")
    def _check_model_data(self) -> FinetuneConfig:
        if self.model is not None:
            check_model_fits_data(self.model, self.data)
            if self.mode == "lora":
                check_lora_fits_model(self.lora, self.model)
        return self


def check_model_fits_data(model: ModelConfig, data: DataConfig) -> None:
    """Model and data must agree on the window (static part; shapes are checked on the data)."""
    if data.context != model.context:
        raise ValueError(f"data.context={data.context} differs from model.context={model.context}")
    if data.returns != model.returns:
        raise ValueError(
            f"data.returns={data.returns!r} differs from model.returns={model.returns!r}"
        )
    if data.returns == "continuous" and data.return_scale != model.return_scale:
        raise ValueError(
            f"data.return_scale={data.return_scale} differs from "
            f"model.return_scale={model.return_scale}"
        )
