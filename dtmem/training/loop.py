"""The training loop of one data-parallel worker: the same function runs in this process
(``local_context``) and on every Ray Train worker (``ray_context``); the two differ only in
how the model is prepared (DDP) and how workers synchronise.

One optimiser step (``train_step``)::

    loss = action loss (+ return and reward losses on Atari)     # dt_loss, over real steps
    loss.backward(); clip the global gradient norm; AdamW step; schedule step

Per worker the sampler yields its own shard of windows (``build_sampler(rank, world_size)``),
so the global batch is ``num_workers * data.batch_size`` windows. Every ``log_every`` steps the
losses and throughput are averaged over workers and rank 0 logs them to MLflow (Train V2
keeps only metrics reported with a checkpoint, so they go to MLflow directly); every
``checkpoint.every_steps`` steps, and at the end, all workers write a checkpoint together,
then call ``on_checkpoint`` if one is given (a sweep reports its validation loss there).

Resuming: the loop starts from the run directory's latest complete checkpoint (weights,
optimiser, schedule, data position and RNG), so a restarted worker group, or the whole job
started again under the same run name, continues the same step count and loss curve. Steps
that a failed attempt had already logged to MLflow past the checkpoint are not logged again
(the resumed attempt recomputes them from the same data and RNG state).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dtmem import metrics as M
from dtmem.batch import Batch
from dtmem.config.model import LoRAConfig, ModelConfig
from dtmem.config.train import TrainConfig
from dtmem.data.windows import StateStats
from dtmem.model import LossParts, build_model, dt_loss
from dtmem.training.checkpoint import (
    FINAL_ADAPTER,
    FINAL_MODEL,
    MODEL_FILE,
    clean_incomplete,
    export_model,
    latest_checkpoint,
    load_training_state,
    load_weights,
    save_checkpoint,
    unwrap,
)
from dtmem.training.optim import build_optimizer, build_scheduler

__all__ = [
    "SimulatedFailure",
    "TrainJob",
    "WorkerContext",
    "build_train_model",
    "local_context",
    "ray_context",
    "run_worker",
    "train_step",
]


class SimulatedFailure(RuntimeError):
    """Raised by ``fail_at_step`` when training runs in-process (tests of resumption)."""


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs, validated by the driver (picklable: it travels to Ray)."""

    stage: str  # "pretrain" or "finetune"
    cfg: TrainConfig  # the stage's validated config
    model_config: ModelConfig  # the architecture (fine-tuning: the checkpoint's)
    run_dir: str  # training checkpoints and the final export
    state_stats: StateStats | None = None  # observation normalisation (computed once)
    init_from: str | None = None  # a model directory to start from (fine-tuning)
    lora: LoRAConfig | None = None  # adapters on the memory; None trains every weight
    tracking_uri: str | None = None  # MLflow, logged by rank 0 when run_id is set
    run_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # goes into the exported meta.json


@dataclass
class WorkerContext:
    """Rank, device and the two collective operations the loop needs."""

    rank: int
    world_size: int
    device: torch.device
    on_ray: bool

    @property
    def distributed(self) -> bool:
        return (
            self.world_size > 1
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        )

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """DDP on the worker's device under Ray (Ray's prepare_model); else just moved."""
        if self.on_ray:
            import ray.train.torch

            return ray.train.torch.prepare_model(model)
        return model.to(self.device)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            torch.distributed.all_reduce(t)
        return t

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        """Max over workers; ``t`` must be on the CPU with gloo, on the device with NCCL."""
        if self.distributed:
            t = t.to(self.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t


def local_context(use_gpu: bool = False) -> WorkerContext:
    """One worker in this process."""
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    return WorkerContext(rank=0, world_size=1, device=device, on_ray=False)


def ray_context() -> WorkerContext:
    """This Ray Train worker's rank and device."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    return WorkerContext(
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        device=ray.train.torch.get_device(),
        on_ray=True,
    )


# --------------------------------------------------------------------------- model


def build_train_model(job: TrainJob) -> nn.Module:
    """The module to train: a fresh model (seeded), or the pretrained one, with LoRA adapters
    on its memory when ``job.lora`` is set (then only the adapters are trainable)."""
    torch.manual_seed(job.cfg.seed)
    model = build_model(job.model_config)
    if job.init_from is not None:  # the driver checked that these weights fit model_config
        load_weights(model, Path(job.init_from) / MODEL_FILE)
    if job.lora is not None:
        from dtmem.model.lora import apply_lora_config

        lc = job.lora
        model = apply_lora_config(model, lc)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    return model.train()


# --------------------------------------------------------------------------- one step


def train_step(
    model: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    grad_clip: float,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[LossParts, torch.Tensor]:
    """One optimiser step on ``batch`` (already on the model's device).

    Returns the detached loss parts and the gradient norm before clipping (no host sync).
    """
    device_type = batch.mask.device.type
    with torch.autocast(
        device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
    ):
        out = model(
            batch.observations, batch.returns_to_go, batch.actions, batch.rewards, batch.timesteps
        )
        parts = dt_loss(out, batch)
    optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()
    detached = LossParts(
        total=parts.total.detach(),
        action=parts.action.detach(),
        returns=parts.returns.detach(),
        reward=parts.reward.detach(),
    )
    return detached, grad_norm.detach()


# --------------------------------------------------------------------------- the loop


class _Interval:
    """Sums over the steps since the last log (on device; read at log time only)."""

    def __init__(self, device: torch.device) -> None:
        # total, action, return, reward, grad_norm, steps, tokens
        self.sums = torch.zeros(7, dtype=torch.float64, device=device)
        self.t0 = time.perf_counter()

    def add(self, parts: LossParts, grad_norm: torch.Tensor, tokens: torch.Tensor) -> None:
        self.sums += torch.stack(
            [
                parts.total.double(),
                parts.action.double(),
                parts.returns.double(),
                parts.reward.double(),
                grad_norm.double(),
                torch.ones((), dtype=torch.float64, device=self.sums.device),
                tokens.double(),
            ]
        )


class _MetricSink:
    """Rank 0's MLflow logging; steps already logged by a failed attempt are skipped."""

    def __init__(self, job: TrainJob, rank: int) -> None:
        self.handle = None
        self.logged_up_to = 0
        if rank == 0 and job.run_id is not None and job.tracking_uri is not None:
            from dtmem.tracking import attach

            self.handle = attach(job.tracking_uri, job.run_id)
            history = self.handle.metric_history(M.TRAIN_LOSS)
            self.logged_up_to = max((s for s, _ in history), default=0)

    def log(self, values: dict[str, float], step: int) -> None:
        if self.handle is not None and step > self.logged_up_to:
            self.handle.log_metrics(values, step=step)


def _maybe_fail(job: TrainJob, ctx: WorkerContext, step: int) -> None:
    """``fail_at_step`` (testing): the last worker fails once at that step."""
    at = job.cfg.fail_at_step
    if at is None or step != at or ctx.rank != ctx.world_size - 1:
        return
    marker = Path(job.run_dir) / ".failed_once"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"step {step}\n")
    if ctx.on_ray:
        os._exit(1)  # a hard crash of this worker process: Ray restarts the group
    raise SimulatedFailure(f"fail_at_step: simulated failure at step {step}")


def run_worker(
    job: TrainJob, ctx: WorkerContext, on_checkpoint: Callable[..., None] | None = None
) -> dict[str, Any]:
    """Train from the latest checkpoint of ``job.run_dir`` to ``optim.max_steps``.

    ``on_checkpoint(step=, model=, rank=, world_size=, trainer_state=)`` is called on every
    worker right after each checkpoint is written (every worker at the same steps, so it may
    run collectives); ``model`` is the (DDP-wrapped) model in training, ``trainer_state`` the
    saved one (step, loss history, scheduler).

    Returns rank 0's final trainer state (step, loss history); exports the final model to
    ``<run_dir>/final`` (rank 0).
    """
    from dtmem.data.sampler import build_sampler
    from dtmem.training.report import Progress

    cfg = job.cfg
    run_dir = Path(job.run_dir)
    if ctx.rank == 0:
        clean_incomplete(run_dir)
    model = build_train_model(job)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise RuntimeError("no trainable parameters")
    model = ctx.prepare_model(model)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim)
    sampler = build_sampler(
        cfg.data, rank=ctx.rank, world_size=ctx.world_size, state_stats=job.state_stats
    )
    state: dict[str, Any] = {"step": 0, "loss_history": [], "mlflow_run_id": job.run_id}
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        saved, sampler_state = load_training_state(
            latest,
            model=model,
            optimizer=optimizer,
            rank=ctx.rank,
            world_size=ctx.world_size,
            device=ctx.device,
        )
        scheduler.load_state_dict(saved["scheduler"])
        sampler.load_state_dict(sampler_state)
        state = {k: saved[k] for k in ("step", "loss_history")}
        state["mlflow_run_id"] = job.run_id
    else:
        torch.manual_seed(cfg.seed + 1 + ctx.rank)  # dropout differs across workers
    ctx.barrier()  # every worker has read the checkpoint before any writes the next one

    autocast = torch.bfloat16 if cfg.scaling.bf16 and ctx.device.type == "cuda" else None
    tokens_per_step = unwrap_spec(model).tokens_per_step
    sink = _MetricSink(job, ctx.rank)
    max_steps = cfg.optim.max_steps
    progress = Progress(
        total=max_steps,
        start=state["step"],
        enabled=cfg.progress and ctx.rank == 0,
        stream=sys.__stdout__ if ctx.on_ray else None,
    )
    batches: Iterator[Batch] = iter(sampler)
    interval = _Interval(ctx.device)
    model.train()
    while state["step"] < max_steps:
        batch = next(batches).to(ctx.device, non_blocking=True)
        lr = optimizer.param_groups[0]["lr"]
        parts, grad_norm = train_step(
            model,
            batch,
            optimizer,
            scheduler,
            grad_clip=cfg.optim.grad_clip,
            autocast_dtype=autocast,
        )
        state["step"] += 1
        step = state["step"]
        interval.add(parts, grad_norm, batch.mask.sum() * tokens_per_step)
        if step % cfg.log_every == 0 or step == max_steps:
            values = _reduce(interval, ctx, lr)
            state["loss_history"].append([step, values[M.TRAIN_LOSS]])
            sink.log(values, step)
            progress.update(step, values[M.TRAIN_LOSS], values[M.PERF_STEPS_PER_S])
            interval = _Interval(ctx.device)
        if step % cfg.checkpoint.every_steps == 0 or step == max_steps:
            trainer_state = {**state, "scheduler": scheduler.state_dict()}
            save_checkpoint(
                run_dir,
                step,
                model=model,
                model_config=job.model_config,
                optimizer=optimizer,
                trainer_state=trainer_state,
                sampler_state=sampler.state_dict(),
                state_stats=job.state_stats,
                rank=ctx.rank,
                world_size=ctx.world_size,
                keep_last=cfg.checkpoint.keep_last,
                barrier=ctx.barrier,
            )
            if on_checkpoint is not None:
                on_checkpoint(
                    step=step,
                    model=model,
                    rank=ctx.rank,
                    world_size=ctx.world_size,
                    trainer_state=trainer_state,
                )
        _maybe_fail(job, ctx, step)
    progress.close()
    if ctx.rank == 0:
        _export_final(job, unwrap(model), state["step"])
    ctx.barrier()
    return state


def unwrap_spec(model: nn.Module) -> Any:
    """The ``ModelSpec`` of a (DDP- or peft-wrapped) DecisionTransformer."""
    inner = unwrap(model)
    get_base = getattr(inner, "get_base_model", None)
    base = get_base() if callable(get_base) else inner
    return base.spec


def _reduce(interval: _Interval, ctx: WorkerContext, lr: float) -> dict[str, float]:
    """Mean losses over the interval's steps and workers; throughput of all workers."""
    sums = ctx.all_reduce_sum(interval.sums.clone()).tolist()
    rss = ctx.all_reduce_max(torch.tensor([_peak_rss_mb()], dtype=torch.float64))
    seconds = max(time.perf_counter() - interval.t0, 1e-9)
    steps = sums[5] / ctx.world_size  # optimiser steps in the interval
    n = sums[5]  # (worker, step) pairs
    return {
        M.TRAIN_LOSS: sums[0] / n,
        M.TRAIN_LOSS_ACTION: sums[1] / n,
        M.TRAIN_LOSS_RETURN: sums[2] / n,
        M.TRAIN_LOSS_REWARD: sums[3] / n,
        M.TRAIN_GRAD_NORM: sums[4] / n,
        M.TRAIN_LR: lr,
        M.PERF_STEPS_PER_S: steps / seconds,
        M.PERF_TOKENS_PER_S: sums[6] / seconds,
        M.PERF_PEAK_RSS_MB: float(rss.item()),
    }


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _export_final(job: TrainJob, model: nn.Module, step: int) -> None:
    """``final/model`` (plain weights; LoRA merged into a copy) and ``final/adapter``."""
    import copy

    run_dir = Path(job.run_dir)
    meta = {**job.meta, "stage": job.stage, "step": step, "run_id": job.run_id}
    plain = model
    if job.lora is not None:
        from dtmem.model.lora import merge_adapter, save_adapter

        save_adapter(model, run_dir / FINAL_ADAPTER)
        plain = merge_adapter(copy.deepcopy(model).cpu())
    export_model(
        run_dir / FINAL_MODEL,
        model=plain,
        model_config=job.model_config,
        state_stats=job.state_stats,
        meta=meta,
    )
