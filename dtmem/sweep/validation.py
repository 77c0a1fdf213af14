"""The held-out validation loss a trial reports at every checkpoint: the windows of episodes
the trial does not train on, cut once (the same windows at every checkpoint and in every
trial with the same data), and the loss of a model on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dtmem import metrics as M
from dtmem.config.sweep import ValidationConfig
from dtmem.sweep.base import SweepError

if TYPE_CHECKING:
    from torch import nn

    from dtmem.batch import Batch
    from dtmem.data.windows import StateStats

__all__ = [
    "validation_batches",
    "validation_loss",
    "validation_sources",
]


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
