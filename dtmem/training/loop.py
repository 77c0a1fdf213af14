"""The training loop of one data-parallel worker: the same function runs in the calling
process (``local_context``: one worker, the default) and on every Ray Train worker
(``ray_context``: several workers); the two differ only in how the model is prepared (DDP)
and how workers synchronise.

One optimiser step (``train_step``)::

    loss = action loss (+ return and reward losses on Atari)     # dt_loss, over real steps
    loss.backward(); clip the global gradient norm; AdamW step; schedule step

Per worker the sampler yields its own shard of windows, so the global batch is
``num_workers * data.batch_size`` windows. Every ``log_every`` steps the losses and throughput
are averaged over workers; rank 0 logs them to MLflow (``monitor.MetricSink``, which outlives
a tracking server that goes away) and writes the progress file the driver's progress bar
reads. Every ``checkpoint.every_steps`` steps, and at the end, all workers write a checkpoint
together, then call ``on_checkpoint`` if one is given (a sweep reports there). Between them
the ``hooks`` (``hooks.py``: validation loss on held-out episodes, short rollouts) run on
their own schedules.

Resuming is the normal path: the loop always starts from the run directory's latest
complete checkpoint (weights, optimiser, schedule, data position and RNG) if there is one, so
a restarted worker group, or the whole job started again under the same run name, continues
the same step count and loss curve. Steps that a failed attempt had already logged to MLflow
past the checkpoint are not logged again (the resumed attempt recomputes them from the same
data and RNG state).
"""

from __future__ import annotations

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
from dtmem.training.faults import maybe_fail
from dtmem.training.monitor import Interval, MetricSink, reduce_interval, write_progress
from dtmem.training.optim import build_optimizer, build_scheduler

__all__ = [
    "TrainJob",
    "WorkerContext",
    "build_train_model",
    "local_context",
    "ray_context",
    "run_worker",
    "train_step",
]


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
    resume_step: int = 0  # the step of the checkpoint this attempt starts from (driver's view)


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


@dataclass
class _Training:
    """What one worker trains with, built by ``_setup``."""

    model: nn.Module  # DDP-wrapped on Ray
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: Any  # the worker's WindowSampler shard
    state: dict[str, Any]  # step, loss_history, mlflow_run_id: saved in every checkpoint


def _setup(job: TrainJob, ctx: WorkerContext) -> _Training:
    """Model, optimiser, schedule and data, restored from the latest checkpoint if any."""
    from dtmem.training.data import build_train_sampler

    cfg, run_dir = job.cfg, Path(job.run_dir)
    if ctx.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_incomplete(run_dir)
    model = ctx.prepare_model(build_train_model(job))
    optimizer = build_optimizer(model, cfg.optim)  # raises if nothing is trainable
    scheduler = build_scheduler(optimizer, cfg.optim)
    sampler = build_train_sampler(cfg, ctx.rank, ctx.world_size, job.state_stats)
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
        state.update({k: saved[k] for k in ("step", "loss_history")})
    else:
        torch.manual_seed(cfg.seed + 1 + ctx.rank)  # dropout differs across workers
    ctx.barrier()  # every worker has read the checkpoint before any writes the next one
    return _Training(model, optimizer, scheduler, sampler, state)


def run_worker(
    job: TrainJob,
    ctx: WorkerContext,
    on_checkpoint: Callable[..., None] | None = None,
    hooks: tuple[Callable[..., None], ...] | None = None,
) -> dict[str, Any]:
    """Train from the latest checkpoint of ``job.run_dir`` to ``optim.max_steps``.

    ``on_checkpoint(step=, model=, rank=, world_size=, trainer_state=)`` is called on every
    worker right after each checkpoint is written (every worker at the same steps, so it may
    run collectives); ``model`` is the (DDP-wrapped) model in training, ``trainer_state`` the
    saved one (step, loss history, scheduler). ``hooks`` are called the same way after every
    step, with ``log=`` rank 0's metric logger (default: ``hooks.default_hooks(job)``, the
    validation loss and rollouts the config asks for).

    Returns rank 0's final trainer state (step, loss history); exports the final model to
    ``<run_dir>/final`` (rank 0).
    """
    from dtmem.malloc import keep_freed_memory
    from dtmem.training.hooks import default_hooks

    cfg, run_dir = job.cfg, Path(job.run_dir)
    keep_freed_memory()  # the next step reuses this step's pages (dtmem/malloc.py)
    if ctx.on_ray:  # torch's threads match the CPUs Ray gave this worker (in-process: launch)
        torch.set_num_threads(max(1, round(cfg.scaling.cpus_per_worker)))
    t = _setup(job, ctx)
    hooks = default_hooks(job, ctx) if hooks is None else hooks
    sink = MetricSink(
        job.tracking_uri if ctx.rank == 0 else None, job.run_id, run_dir, t.state["step"]
    )
    autocast = torch.bfloat16 if cfg.scaling.bf16 and ctx.device.type == "cuda" else None
    tokens_per_step = unwrap_spec(t.model).tokens_per_step
    max_steps = cfg.optim.max_steps
    batches: Iterator[Batch] = iter(t.sampler)
    interval = Interval(ctx.device)
    t.model.train()
    while t.state["step"] < max_steps:
        batch = next(batches).to(ctx.device, non_blocking=True)
        lr = t.optimizer.param_groups[0]["lr"]
        parts, grad_norm = train_step(
            t.model, batch, t.optimizer, t.scheduler, grad_clip=cfg.optim.grad_clip,
            autocast_dtype=autocast,
        )  # fmt: skip
        step = t.state["step"] = t.state["step"] + 1
        interval.add(parts, grad_norm, batch.mask.sum() * tokens_per_step)
        if step % cfg.log_every == 0 or step == max_steps:
            values = reduce_interval(interval, ctx, lr)
            t.state["loss_history"].append([step, values[M.TRAIN_LOSS]])
            sink.log(values, step)
            if ctx.rank == 0:
                write_progress(run_dir, step=step, total=max_steps, loss=values[M.TRAIN_LOSS],
                               steps_per_s=values[M.PERF_STEPS_PER_S])  # fmt: skip
            interval = Interval(ctx.device)
        for hook in hooks:
            hook(step=step, model=t.model, log=sink.log)
        if step % cfg.checkpoint.every_steps == 0 or step == max_steps:
            _checkpoint(job, ctx, t, on_checkpoint)
            sink.checkpoint(step)
        maybe_fail(run_dir, step, ctx.rank, ctx.world_size, ctx.on_ray)
    if ctx.rank == 0:
        _export_final(job, unwrap(t.model), t.state["step"])
    ctx.barrier()
    sink.close()
    return t.state


def _checkpoint(
    job: TrainJob, ctx: WorkerContext, t: _Training, on_checkpoint: Callable[..., None] | None
) -> None:
    """Every worker writes its part of the checkpoint at ``t.state["step"]``; then the hook."""
    step = t.state["step"]
    trainer_state = {**t.state, "scheduler": t.scheduler.state_dict()}
    save_checkpoint(
        job.run_dir,
        step,
        model=t.model,
        model_config=job.model_config,
        optimizer=t.optimizer,
        trainer_state=trainer_state,
        sampler_state=t.sampler.state_dict(),
        state_stats=job.state_stats,
        rank=ctx.rank,
        world_size=ctx.world_size,
        keep_last=job.cfg.checkpoint.keep_last,
        barrier=ctx.barrier,
    )
    if on_checkpoint is not None:
        on_checkpoint(
            step=step,
            model=t.model,
            rank=ctx.rank,
            world_size=ctx.world_size,
            trainer_state=trainer_state,
        )


def unwrap_spec(model: nn.Module) -> Any:
    """The ``ModelSpec`` of a (DDP- or peft-wrapped) DecisionTransformer."""
    return base_model(model).spec


def base_model(model: nn.Module) -> Any:
    """The DecisionTransformer inside DDP and peft wrappers (peft's adapters stay in it)."""
    inner = unwrap(model)
    get_base = getattr(inner, "get_base_model", None)
    return get_base() if callable(get_base) else inner


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
