"""What the loop does besides training, each on its own schedule: the validation loss on
held-out episodes (``ValidationLoss``, every worker takes a share) and short rollouts of the
model being trained (``RolloutCurve``, rank 0, with evaluation's own episode loop), both
logged as curves with the optimiser step.

A hook is called after every step as ``hook(step=, model=, log=)``: ``model`` is the
(DDP- or peft-wrapped) model in training, ``log(values, step)`` rank 0's metric logger.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from dtmem import metrics as M
from dtmem.data.episodes import DataError
from dtmem.model import dt_loss
from dtmem.training.checkpoint import unwrap

if TYPE_CHECKING:
    from torch import nn

    from dtmem.batch import Batch
    from dtmem.config.train import TrainConfig
    from dtmem.data.windows import StateStats
    from dtmem.training.loop import TrainJob, WorkerContext

__all__ = ["RolloutCurve", "ValidationLoss", "default_hooks", "validation_batches"]

Hook = Callable[..., None]


def default_hooks(job: TrainJob, ctx: WorkerContext) -> tuple[Hook, ...]:
    """The hooks ``job.cfg`` asks for (``validation``, ``eval_curve``)."""
    cfg = job.cfg
    hooks: list[Hook] = []
    if cfg.validation.episodes:
        batches = validation_batches(cfg, job.state_stats)
        hooks.append(ValidationLoss(batches, cfg.validation.every_steps, cfg.optim.max_steps, ctx))
    if cfg.eval_curve.every_steps is not None and ctx.rank == 0:
        hooks.append(RolloutCurve(cfg, job.state_stats))
    return tuple(hooks)


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def validation_batches(cfg: TrainConfig, state_stats: StateStats | None) -> list[Batch]:
    """The first ``validation.batches`` batches of one epoch of the held-out episodes: the
    same windows at every call (a fixed seed), on every worker."""
    from dtmem.data.sampler import build_sampler
    from dtmem.training.data import split_sources

    _, held = split_sources(cfg.data, cfg.validation.episodes)
    sampler = build_sampler(cfg.data, state_stats=state_stats, sources=held)
    batches = list(itertools.islice(sampler.iter_epoch(), cfg.validation.batches))
    if not batches:
        raise DataError(
            f"validation.episodes={cfg.validation.episodes}: the held-out episodes give no "
            f"full batch of {cfg.data.batch_size} windows; hold out more episodes"
        )
    return batches


class ValidationLoss:
    """``val/loss`` and ``val/loss_action``: mean losses over the validation batches, with
    dropout off; worker r takes batches r, r + world_size, ...; the sums are all-reduced."""

    def __init__(self, batches: list[Batch], every: int, last: int, ctx: WorkerContext):
        self.batches, self.every, self.last, self.ctx = batches, every, last, ctx

    def __call__(self, *, step: int, model: nn.Module, log: Callable[..., None]) -> None:
        if _due(step, self.every, self.last):
            log(self.losses(model), step)

    @torch.no_grad()
    def losses(self, model: nn.Module) -> dict[str, float]:
        inner = unwrap(model)
        ctx = self.ctx
        sums = torch.zeros(3, dtype=torch.float64)  # total, action, batches
        inner.eval()
        try:
            for b in self.batches[ctx.rank :: ctx.world_size]:
                b = b.to(ctx.device)
                out = inner(b.observations, b.returns_to_go, b.actions, b.rewards, b.timesteps)
                parts = dt_loss(out, b)
                sums += torch.tensor([parts.total.item(), parts.action.item(), 1.0])
        finally:
            inner.train()
        sums = ctx.all_reduce_sum(sums.to(ctx.device)).cpu()
        return {M.VAL_LOSS: float(sums[0] / sums[2]), M.VAL_LOSS_ACTION: float(sums[1] / sums[2])}


class RolloutCurve:
    """Every ``eval_curve.every_steps`` steps (and at the last), ``eval_curve.episodes``
    episodes of every dataset's env with the model being trained, in this process:
    ``eval/<task>/return_mean`` and ``success_rate``, and their means over tasks. The envs
    are built once and kept."""

    def __init__(self, cfg: TrainConfig, state_stats: StateStats | None) -> None:
        self.curve = cfg.eval_curve
        self.tasks = [str(d.env) for d in cfg.data.datasets]
        self.last = cfg.optim.max_steps
        self.state_stats = state_stats
        self.seed = cfg.seed
        self.envs: dict[str, Any] = {}

    def __call__(self, *, step: int, model: nn.Module, log: Callable[..., None]) -> None:
        every = self.curve.every_steps
        if every is not None and _due(step, every, self.last):
            log(self.scores(model), step)

    def scores(self, model: nn.Module) -> dict[str, float]:
        from dtmem.dt_policy import DTPolicy
        from dtmem.envs import make_env
        from dtmem.rollout import rollout
        from dtmem.training.loop import base_model

        dt = base_model(model)
        suite: Literal["atari", "metaworld"] = (
            "atari" if dt.spec.action_kind == "discrete" else "metaworld"
        )
        out: dict[str, float] = {}
        returns, successes = [], []
        try:
            for task in self.tasks:
                if task not in self.envs:
                    self.envs[task] = make_env(suite, task, self.curve.episodes, seed=self.seed)
                env = self.envs[task]
                policy = DTPolicy(dt, env, state_stats=self.state_stats, seed=self.seed)
                episodes = rollout(
                    policy,
                    env,
                    self.curve.target_return,
                    num_episodes=self.curve.episodes,
                    seed=self.seed,
                    max_steps=self.curve.max_steps,
                )
                ret = float(np.mean([e.episode_return for e in episodes]))
                success = float(np.mean([bool(e.success) for e in episodes]))
                out[M.eval_metric(task, "return_mean")] = ret
                out[M.eval_metric(task, "success_rate")] = success
                returns.append(ret)
                successes.append(success)
        finally:
            dt.train()  # DTPolicy put it in eval mode
        out[M.EVAL_RETURN_MEAN] = float(np.mean(returns))
        out[M.EVAL_SUCCESS_RATE_MEAN] = float(np.mean(successes))
        return out
