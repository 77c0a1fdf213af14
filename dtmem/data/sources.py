"""The datasets of a training mixture as an index: which episodes, how long, how heavy.

Opening a mixture reads each dataset's metadata and nothing else (no episode data): the
sampler reads episodes when a window needs them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dtmem.data.checks import check_env
from dtmem.data.episodes import DataError, ObservationShapeError
from dtmem.data.reader import DatasetReader, open_dataset
from dtmem.data.stats import StateStats, action_bounds, compute_state_stats, with_action_bounds

if TYPE_CHECKING:
    from dtmem.config.data import DataConfig

__all__ = ["TaskSource", "build_sources", "check_compatible", "source_state_stats"]


@dataclass(frozen=True)
class TaskSource:
    """One dataset of the mixture, as an index: which episodes, how long, how heavy."""

    task_id: int
    reader: DatasetReader
    episode_ids: np.ndarray  # (E,) int64, the episodes in use, ascending
    lengths: np.ndarray  # (E,) int64, their step counts T
    weight: float

    @property
    def name(self) -> str:
        return self.reader.dataset_id


def _subset_seed(seed: int, dataset_id: str) -> list[int]:
    return [seed, zlib.crc32(dataset_id.encode()), 0x5EB5E7]


def build_sources(cfg: DataConfig) -> list[TaskSource]:
    """Open every dataset of ``cfg``, check its env, and index its episodes (no episode data read).

    With ``episode_fraction`` < 1 each dataset keeps a fixed subset of its episodes, seeded by
    (seed, dataset id), the same in every epoch and on every worker.
    """
    sources: list[TaskSource] = []
    for task_id, spec in enumerate(cfg.datasets):
        reader = open_dataset(spec.id, cfg.root)
        if spec.env is not None:
            check_env(reader, spec.env)
        lengths = reader.episode_lengths()
        ids = np.flatnonzero(lengths > 0).astype(np.int64)
        if cfg.episode_fraction < 1.0 and ids.size:
            rng = np.random.default_rng(_subset_seed(cfg.seed, spec.id))
            n_keep = max(1, round(cfg.episode_fraction * ids.size))
            ids = np.sort(rng.choice(ids, size=n_keep, replace=False))
        if ids.size == 0:
            raise DataError(f"{reader.path}: no episodes with steps")
        sources.append(TaskSource(task_id, reader, ids, lengths[ids], spec.weight))
    check_compatible(sources)
    return sources


def check_compatible(sources: Sequence[TaskSource]) -> None:
    """Every dataset of a mixture must give windows of the same shapes and dtypes."""
    first = sources[0].reader
    for source in sources[1:]:
        r = source.reader
        if (
            r.obs_shape != first.obs_shape
            or r.observation_space.dtype != first.observation_space.dtype
        ):
            raise ObservationShapeError(
                f"{r.path}: observations {r.observation_space.dtype}{r.obs_shape} differ from "
                f"{first.dataset_id}'s {first.observation_space.dtype}{first.obs_shape}"
            )
        if repr(r.action_space) != repr(first.action_space):
            raise DataError(
                f"{r.path}: action space {r.action_space} differs from {first.dataset_id}'s "
                f"{first.action_space}"
            )


def source_state_stats(sources: Sequence[TaskSource]) -> StateStats:
    """Mean/std of the observations the windows use (obs_0 .. obs_{T-1}) over all sources,
    with the action bounds the windows' actions are scaled from (``stats.action_bounds``)."""

    def arrays() -> Iterator[np.ndarray]:
        for source in sources:
            for episode_id in source.episode_ids:
                obs = source.reader.read_episode(int(episode_id)).observations
                yield obs[:-1].reshape(obs.shape[0] - 1, -1)  # (T, D)

    stats = compute_state_stats(arrays())
    reader = sources[0].reader
    bounds = action_bounds(reader.action_space, str(reader.metadata_file))
    return with_action_bounds(stats, bounds, stats.mean.shape[0]) or stats
