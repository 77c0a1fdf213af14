"""The training data of a stage: each dataset's episodes, less the ones held out for the
validation loss (``validation.episodes`` per dataset, a fixed seeded choice that every worker
and every resumed attempt makes the same way), as a sampler shard per worker.

The state statistics (``data.normalize_states``) are settled once by the driver over the
training episodes only (``open_train_data``, kept in ``TrainPlan.state_stats``) and passed
to every worker.
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from dtmem.data.episodes import DataError

if TYPE_CHECKING:
    from dtmem.config.data import DataConfig
    from dtmem.config.train import TrainConfig
    from dtmem.data.sampler import WindowSampler
    from dtmem.data.sources import TaskSource
    from dtmem.data.stats import StateStats

__all__ = ["build_train_sampler", "open_train_data", "split_sources"]


def split_sources(data: DataConfig, held_out: int) -> tuple[list[TaskSource], list[TaskSource]]:
    """(training, held-out) episodes of every dataset of ``data``; ``held_out`` episodes per
    dataset are chosen with a generator seeded by (data.seed, dataset id)."""
    from dtmem.data.sources import build_sources

    sources = build_sources(data)
    if held_out == 0:
        return sources, []
    train, val = [], []
    for s in sources:
        n = s.episode_ids.size
        if n <= held_out:
            raise DataError(
                f"{s.reader.path}: validation.episodes={held_out} would leave no episode to "
                f"train on (it has {n} in use)"
            )
        rng = np.random.default_rng([data.seed, zlib.crc32(s.name.encode()), 0x7A1])
        held = np.zeros(n, bool)
        held[rng.choice(n, size=held_out, replace=False)] = True
        train.append(replace(s, episode_ids=s.episode_ids[~held], lengths=s.lengths[~held]))
        val.append(replace(s, episode_ids=s.episode_ids[held], lengths=s.lengths[held]))
    return train, val


def build_train_sampler(
    cfg: TrainConfig, rank: int, world_size: int, state_stats: StateStats | None
) -> WindowSampler:
    """Worker ``rank``'s shard of the training episodes."""
    from dtmem.data.sampler import build_sampler

    train, _ = split_sources(cfg.data, cfg.validation.episodes)
    return build_sampler(
        cfg.data, rank=rank, world_size=world_size, state_stats=state_stats, sources=train
    )


def open_train_data(
    cfg: TrainConfig, state_stats: StateStats | None, obs_shape: tuple[int, ...]
) -> WindowSampler:
    """The driver's look at the data, before any compute: worker 0's shard, with every
    dataset's env and observation shape checked and the state statistics settled (a
    model's, given; else computed over the training episodes). Raises ``DataError`` when a
    worker would get no full batch."""
    from dtmem.data.sampler import build_sampler

    train, _ = split_sources(cfg.data, cfg.validation.episodes)
    sampler = build_sampler(
        cfg.data,
        rank=0,
        world_size=cfg.scaling.num_workers,
        state_stats=state_stats,
        expected_obs_shape=obs_shape,
        sources=train,
    )
    sampler.batches_in_epoch(0)
    return sampler
