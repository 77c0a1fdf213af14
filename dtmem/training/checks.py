"""The driver's checks before any training compute, each a one-line ``ValueError`` subclass:
the run directory is writable with room for checkpoints; model and data agree (context,
returns, observation shape, action space, enough windows for a batch on every worker); a
checkpoint being resumed has the same architecture and worker count; LoRA leaves only
adapters trainable; a GPU asked for in this process exists; Ray has the CPUs/GPUs asked for
(``launch.check_ray_resources``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn

from dtmem.config.model import ModelConfig
from dtmem.config.train import ScalingConfig, TrainConfig, check_model_fits_data
from dtmem.data.sampler import WindowSampler
from dtmem.data.windows import StateStats
from dtmem.fileio import DiskError, check_writable
from dtmem.model.transformer import ModelSpec
from dtmem.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    read_model_config,
    read_optimizer_state,
    read_trainer_state,
)

__all__ = [
    "MIN_FREE_MB",
    "ModelDataMismatchError",
    "RunDirError",
    "architecture",
    "check_data",
    "check_device",
    "check_model_fits_data_or_raise",
    "check_only_adapters",
    "check_run_dir",
    "first_difference",
    "resume_info",
]

MIN_FREE_MB = 256  # refuse to start with less free space than this under the run directory


class RunDirError(ValueError):
    """The run directory cannot be used."""


class ModelDataMismatchError(ValueError):
    """The model cannot read the data (or the checkpoint does not fit the config)."""


def check_run_dir(run_dir: Path, need_mb: float = MIN_FREE_MB) -> None:
    """Create ``run_dir``; refuse one that is not writable (a probe file, so a read-only
    mount is caught even as root) or whose disk is nearly full."""
    try:
        check_writable(run_dir, min_free_bytes=0)
    except DiskError as exc:
        raise RunDirError(f"checkpoint.dir: {exc}") from None
    free_mb = shutil.disk_usage(run_dir).free / 2**20
    if free_mb < need_mb:
        raise RunDirError(
            f"checkpoint.dir: {run_dir} has {free_mb:.0f} MB free, checkpoints need at least "
            f"{need_mb:.0f} MB"
        )


def check_data(cfg: TrainConfig, spec: ModelSpec, stats: StateStats | None) -> WindowSampler:
    """Open the training data as worker 0 of num_workers would; check shapes and actions."""
    from dtmem.training.data import open_train_data

    sampler = open_train_data(cfg, stats, tuple(spec.obs_shape))
    where = sampler.sources[0].reader.path
    if sampler.action_kind != spec.action_kind:
        raise ModelDataMismatchError(
            f"{where}: {sampler.action_kind} actions, but the model predicts {spec.action_kind} ones"
        )
    if spec.action_kind == "discrete" and sampler.num_actions > spec.num_actions:
        raise ModelDataMismatchError(
            f"{where}: {sampler.num_actions} actions, the model has {spec.num_actions}"
        )
    if spec.action_kind == "continuous" and sampler.act_dim != spec.act_dim:
        raise ModelDataMismatchError(
            f"{where}: actions of size {sampler.act_dim}, the model's act_dim is {spec.act_dim}"
        )
    if cfg.validation.episodes:
        from dtmem.training.hooks import validation_batches

        validation_batches(cfg, sampler.state_stats)  # DataError if they give no batch
    return sampler


def check_model_fits_data_or_raise(model: ModelConfig, cfg: TrainConfig) -> None:
    try:
        check_model_fits_data(model, cfg.data)
    except ValueError as exc:
        raise ModelDataMismatchError(str(exc)) from None


def check_device(scaling: ScalingConfig) -> None:
    """A GPU asked for in this process must be there (Ray Train places GPU workers itself)."""
    if scaling.use_gpu and not scaling.on_ray:
        import torch

        if not torch.cuda.is_available():
            raise RunDirError(
                "scaling.use_gpu: no GPU in this process; set scaling.ray=true to train on a "
                "Ray cluster's GPU worker"
            )


def resume_info(run_dir: Path, model_config: ModelConfig, num_workers: int) -> tuple[int, Any]:
    """(step, saved MLflow run id) of the run directory's latest checkpoint (0, None without
    one), after checking that it fits the config."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return 0, None
    saved = read_model_config(latest)
    if architecture(saved) != architecture(model_config):
        raise CheckpointError(
            f"{latest}: the run's checkpoint has another architecture "
            f"({first_difference(saved, model_config)}); use another run_name"
        )
    state = read_trainer_state(latest)
    read_optimizer_state(latest)  # a foreign or pickled file fails here, before any compute
    if state["manifest"]["world_size"] != num_workers:
        raise CheckpointError(
            f"{latest}: saved by {state['manifest']['world_size']} workers, "
            f"scaling.num_workers={num_workers}: resume with the same number of workers"
        )
    return int(state["step"]), state.get("mlflow_run_id")


def architecture(cfg: ModelConfig) -> dict[str, Any]:
    """Everything that shapes the weights (dropout does not)."""
    return cfg.model_dump(exclude={"dropout"})


def first_difference(a: ModelConfig, b: ModelConfig) -> str:
    from dtmem.config.base import flatten

    fa, fb = flatten(architecture(a)), flatten(architecture(b))
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key) != fb.get(key):
            return f"{key}: {fa.get(key)!r} vs {fb.get(key)!r}"
    return "no difference"


def check_only_adapters(model: nn.Module, train_initial_memory: bool) -> None:
    """LoRA must leave exactly the adapters (and M_0 when asked) trainable."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ModelDataMismatchError("lora: no adapter parameters were created")
    others = [
        n
        for n in names
        if "lora_" not in n and not (train_initial_memory and n.endswith("initial_memory"))
    ]
    if others:
        raise ModelDataMismatchError(f"lora: non-adapter parameters are trainable: {others[0]}")
