"""Sharded, lazy, resumable multi-task sampler: Minari datasets in, ``Batch`` windows out.

Memory: only an index (episode id and length per episode, ``dtmem.data.sources``) is held;
episodes are read when a window needs them and kept in a small LRU cache bounded in bytes.
Arrow episodes are memory-mapped, so an Atari window reads only its own frames' pages.

Which windows a worker yields in an epoch is ``dtmem.data.plan.plan_epoch``: a function of the
index and (seed, epoch), the same on every worker. ``state_dict()`` is (epoch, batches yielded
in it): a resumed sampler rebuilds the epoch's plan from the index and continues with the next
batch.

What a window holds: observations (standardised vector states when asked, raw uint8 frames),
actions (continuous ones scaled into [-1, 1] when the dataset's space reaches outside it, see
``dtmem.data.stats``), return-to-go (scaled, or MDT's bins) and rewards (raw, or MDT's
classes). ``sampler.state_stats`` is what a model trained on these windows must carry.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dtmem.batch import Batch
from dtmem.data.checks import check_observation_shape, window_obs_shape
from dtmem.data.episodes import DataError, DatasetFormatError, ObservationShapeError
from dtmem.data.plan import EpochPlan, plan_epoch
from dtmem.data.sources import TaskSource, build_sources, check_compatible, source_state_stats
from dtmem.data.stats import (
    StateStats,
    action_bounds,
    check_action_bounds,
    load_state_stats,
    normalize_states,
    save_state_stats,
    scale_actions,
    with_action_bounds,
)
from dtmem.data.store import DatasetInfo
from dtmem.data.windows import (
    atari_return_bins,
    atari_reward_classes,
    continuous_returns_to_go,
    stack_frames,
)

if TYPE_CHECKING:
    from dtmem.config.data import DataConfig

__all__ = [
    "EpochPlan",
    "TaskSource",
    "WindowSampler",
    "build_sampler",
    "build_sources",
    "plan_epoch",
    "source_state_stats",
]


# ---------------------------------------------------------------------------------------------
# Episode cache


@dataclass(frozen=True)
class _Prepared:
    """An episode in the form windows copy from."""

    observations: np.ndarray  # (T+1, *obs_shape): float32 (normalised) or raw uint8 frames
    actions: np.ndarray  # (T,) int64 or (T, act_dim) float32
    returns_to_go: np.ndarray  # (T,) float32 scaled, or int64 bins
    rewards: np.ndarray  # (T,) float32 raw, or int64 classes

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes for a in (self.observations, self.actions, self.returns_to_go, self.rewards)
        )


class _EpisodeCache:
    """LRU of prepared episodes, bounded by their total bytes (at least one is kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[int, int], _Prepared] = OrderedDict()
        self.bytes = 0
        self.peak_bytes = 0
        self.loads = 0
        self.hits = 0

    def get(self, key: tuple[int, int]) -> _Prepared | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return item

    def put(self, key: tuple[int, int], item: _Prepared) -> None:
        self.loads += 1
        self._items[key] = item
        self.bytes += item.nbytes
        while self.bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes
        self.peak_bytes = max(self.peak_bytes, self.bytes)


# ---------------------------------------------------------------------------------------------
# Sampler


def _action_layout(action_space: Any) -> tuple[str, int, int]:
    """(action_kind, num_actions, act_dim) of a dataset's action space."""
    import gymnasium as gym

    if isinstance(action_space, gym.spaces.Discrete):
        return "discrete", int(action_space.n), 0
    return "continuous", 0, int(np.prod(action_space.shape or (1,)))


class WindowSampler:
    """Iterator of ``Batch`` windows over a mixture of datasets, sharded over workers.

    ``iter(sampler)`` runs forever, epoch after epoch, from the current position;
    ``iter_epoch()`` stops at the end of the current epoch. One iterator at a time: both
    advance the sampler's own position, which ``state_dict()`` saves.
    """

    def __init__(
        self,
        sources: Sequence[TaskSource],
        *,
        context: int,
        batch_size: int,
        returns: str = "continuous",
        return_scale: float = 1.0,
        frame_stack: int = 1,
        state_stats: StateStats | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_episodes: int = 8,
        cache_mb: float = 1024.0,
        index_seconds: float = 0.0,
    ) -> None:
        if not sources:
            raise ValueError("no datasets")
        if returns not in ("continuous", "atari_bins"):
            raise ValueError(f"returns must be 'continuous' or 'atari_bins', got {returns!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        check_compatible(sources)
        self.sources = list(sources)
        self.context = context
        self.batch_size = batch_size
        self.returns = returns
        self.return_scale = return_scale
        self.frame_stack = frame_stack
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle_episodes = shuffle_episodes
        self.index_seconds = index_seconds

        reader = self.sources[0].reader
        self.is_image = reader.observation_space.dtype == np.uint8 and len(reader.obs_shape) >= 2
        self.obs_shape = window_obs_shape(reader.obs_shape, frame_stack)
        self.obs_dtype = np.dtype(np.uint8) if self.is_image else np.dtype(np.float32)
        self.action_kind, self.num_actions, self.act_dim = _action_layout(reader.action_space)
        self._normalize = state_stats if state_stats and state_stats.normalizes_states else None
        # what a model trained on these windows carries: state normalisation, action bounds
        self.state_stats = self._dataset_stats(state_stats)
        self._lengths = [s.lengths for s in self.sources]
        self._weights = [s.weight for s in self.sources]
        self._cache = _EpisodeCache(int(cache_mb * 2**20))
        self._plan: tuple[int, EpochPlan] | None = None
        self.epoch = 0
        self.batch_index = 0  # batches of ``epoch`` already yielded

    def _dataset_stats(self, given: StateStats | None) -> StateStats | None:
        """``given`` checked against the data, with the dataset's action bounds."""
        reader = self.sources[0].reader
        width = int(np.prod(reader.obs_shape))
        bounds = action_bounds(reader.action_space, str(reader.metadata_file))
        if given is not None:
            if self.is_image:
                raise DataError(f"{reader.path}: image observations are never normalised")
            if given.mean.shape != (width,):
                raise ObservationShapeError(
                    f"{reader.path}: state statistics of width {given.mean.shape[0]} do "
                    f"not fit observations {reader.obs_shape}"
                )
            check_action_bounds(given, bounds, str(reader.metadata_file))
        elif bounds is not None and self.is_image:
            raise DataError(
                f"{reader.metadata_file}: action_space {reader.action_space} reaches outside "
                "[-1, 1]; scaling it is supported for vector observations only"
            )
        return with_action_bounds(given, bounds, width)

    # -- describing -------------------------------------------------------------------

    def dataset_infos(self) -> list[DatasetInfo]:
        return [s.reader.info for s in self.sources]

    @property
    def cache_stats(self) -> dict[str, int]:
        c = self._cache
        return {"bytes": c.bytes, "peak_bytes": c.peak_bytes, "loads": c.loads, "hits": c.hits}

    def fingerprint(self) -> str:
        """Identifies the index and windowing; a saved position only fits the same one."""
        sha = hashlib.sha256()
        for s in self.sources:
            sha.update(f"{s.name}|{s.weight}|".encode())
            sha.update(s.episode_ids.astype(np.int64).tobytes())
            sha.update(s.lengths.astype(np.int64).tobytes())
        sha.update(f"{self.context}|{self.batch_size}|{self.shuffle_episodes}".encode())
        return sha.hexdigest()[:16]

    # -- plan -------------------------------------------------------------------------

    def plan(self, epoch: int) -> EpochPlan:
        """This worker's windows for ``epoch`` (the last one is cached)."""
        if self._plan is None or self._plan[0] != epoch:
            plan = plan_epoch(
                self._lengths,
                self._weights,
                epoch=epoch,
                rank=self.rank,
                world_size=self.world_size,
                context=self.context,
                batch_size=self.batch_size,
                seed=self.seed,
                group=self.shuffle_episodes,
            )
            if plan.num_batches == 0:
                raise DataError(
                    f"{self.sources[0].reader.path}: too little data for one batch of "
                    f"{self.batch_size} windows per worker on {self.world_size} workers"
                )
            self._plan = (epoch, plan)
        return self._plan[1]

    def batches_in_epoch(self, epoch: int | None = None) -> int:
        return self.plan(self.epoch if epoch is None else epoch).num_batches

    # -- iteration --------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield from self.iter_epoch()

    def iter_epoch(self) -> Iterator[Batch]:
        """The rest of the current epoch's batches; afterwards the position is the next epoch."""
        plan = self.plan(self.epoch)
        while self.batch_index < plan.num_batches:
            lo = self.batch_index * self.batch_size
            batch = self._collate(plan, lo, lo + self.batch_size)
            self.batch_index += 1
            yield batch
        self.epoch += 1
        self.batch_index = 0

    def _prepared(self, task: int, position: int) -> _Prepared:
        source = self.sources[task]
        episode_id = int(source.episode_ids[position])
        key = (task, episode_id)
        item = self._cache.get(key)
        if item is not None:
            return item
        ep = source.reader.read_episode(episode_id)  # checked for NaN/inf
        if ep.num_steps != int(source.lengths[position]):
            raise DatasetFormatError(
                f"{source.reader.episode_path(episode_id)}: {ep.num_steps} steps, but the "
                f"dataset's metadata says {int(source.lengths[position])}"
            )
        if self.returns == "atari_bins":
            rtg = atari_return_bins(ep.rewards)
            rewards = atari_reward_classes(ep.rewards)
        else:
            rtg = continuous_returns_to_go(ep.rewards, self.return_scale)
            rewards = ep.rewards.astype(np.float32, copy=False)
        item = _Prepared(
            self._observations(ep.observations), self._actions(ep.actions), rtg, rewards
        )
        self._cache.put(key, item)
        return item

    def _observations(self, observations: np.ndarray) -> np.ndarray:
        """(T+1, *obs_shape): uint8 frames as they are (a memory-mapped view for arrow),
        vector states standardised or cast to float32."""
        if self.is_image:
            return observations
        if self._normalize is not None:
            flat = observations.reshape(observations.shape[0], -1)  # (T+1, D)
            return normalize_states(flat, self._normalize).reshape(observations.shape)
        return observations.astype(np.float32, copy=False)

    def _actions(self, actions: np.ndarray) -> np.ndarray:
        """(T,) int64 or (T, act_dim) float32, scaled into [-1, 1] if the dataset's are not."""
        if self.action_kind == "discrete":
            return actions.astype(np.int64, copy=False)
        flat = actions.reshape(actions.shape[0], -1)  # (T, act_dim)
        return scale_actions(flat, self.state_stats)

    def _collate(self, plan: EpochPlan, lo: int, hi: int) -> Batch:
        B, K = hi - lo, self.context
        obs = np.zeros((B, K, *self.obs_shape), dtype=self.obs_dtype)
        actions: np.ndarray
        if self.action_kind == "discrete":
            actions = np.zeros((B, K), dtype=np.int64)
        else:
            actions = np.zeros((B, K, self.act_dim), dtype=np.float32)
        atari = self.returns == "atari_bins"
        rtg = np.zeros((B, K), dtype=np.int64 if atari else np.float32)
        rewards = np.zeros((B, K), dtype=np.int64 if atari else np.float32)
        timesteps = np.zeros((B, K), dtype=np.int64)
        mask = np.zeros((B, K), dtype=bool)
        task_id = np.zeros(B, dtype=np.int64)
        for b, j in enumerate(range(lo, hi)):
            task = int(plan.task[j])
            ep = self._prepared(task, int(plan.episode[j]))
            s, L = int(plan.start[j]), int(plan.length[j])
            if self.frame_stack > 1:
                obs[b, :L] = stack_frames(ep.observations, s, L, self.frame_stack)
            else:
                obs[b, :L] = ep.observations[s : s + L]
            actions[b, :L] = ep.actions[s : s + L]
            rtg[b, :L] = ep.returns_to_go[s : s + L]
            rewards[b, :L] = ep.rewards[s : s + L]
            timesteps[b, :L] = np.arange(s, s + L)
            mask[b, :L] = True
            task_id[b] = self.sources[task].task_id
        return Batch(
            observations=torch.from_numpy(obs),
            actions=torch.from_numpy(actions),
            returns_to_go=torch.from_numpy(rtg),
            rewards=torch.from_numpy(rewards),
            timesteps=torch.from_numpy(timesteps),
            mask=torch.from_numpy(mask),
            task_id=torch.from_numpy(task_id),
        )

    # -- resume -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The data position: epoch and batches already yielded in it, plus what it fits."""
        return {
            "epoch": self.epoch,
            "batch_index": self.batch_index,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "fingerprint": self.fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; refuses one saved for other data or workers."""
        for key in ("seed", "rank", "world_size", "fingerprint"):
            mine = self.fingerprint() if key == "fingerprint" else getattr(self, key)
            if state.get(key) != mine:
                raise DataError(
                    f"sampler state: {key} {state.get(key)!r} does not match this sampler's "
                    f"{mine!r} (the data, windowing or worker layout changed)"
                )
        self.epoch = int(state["epoch"])
        self.batch_index = int(state["batch_index"])


def build_sampler(
    cfg: DataConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    state_stats: StateStats | None = None,
    expected_obs_shape: tuple[int, ...] | None = None,
    sources: Sequence[TaskSource] | None = None,
) -> WindowSampler:
    """The sampler ``cfg`` describes, for worker ``rank`` of ``world_size`` (over ``sources``
    when given: e.g. training's, less its held-out episodes).

    Checks every dataset's env (``DatasetSpec.env``) and, if given, that windows have
    ``expected_obs_shape``. ``state_stats`` are a model's (resuming or fine-tuning it): the
    data must fit them, states standardised as they say and actions scaled from the same
    bounds. Without them, when ``normalize_states``: ``cfg.state_stats_path`` if it exists,
    else computed over the training episodes (and written to ``state_stats_path`` when set).
    The time spent building the index is ``sampler.index_seconds``.
    """
    t0 = time.perf_counter()
    sources = list(sources) if sources is not None else build_sources(cfg)
    index_seconds = time.perf_counter() - t0
    if expected_obs_shape is not None:
        for source in sources:
            check_observation_shape(source.reader, expected_obs_shape, cfg.frame_stack)
    if state_stats is not None and state_stats.normalizes_states != cfg.normalize_states:
        raise DataError(
            f"data.normalize_states={cfg.normalize_states}, but the model's statistics "
            f"{'standardise' if state_stats.normalizes_states else 'do not standardise'} states"
        )
    if cfg.normalize_states and state_stats is None:
        state_stats = _state_normalization(cfg, sources)
    return WindowSampler(
        sources,
        context=cfg.context,
        batch_size=cfg.batch_size,
        returns=cfg.returns,
        return_scale=cfg.return_scale,
        frame_stack=cfg.frame_stack,
        state_stats=state_stats,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        shuffle_episodes=cfg.shuffle_episodes,
        cache_mb=cfg.cache_mb,
        index_seconds=index_seconds,
    )


def _state_normalization(cfg: DataConfig, sources: Sequence[TaskSource]) -> StateStats:
    """Mean and std from ``cfg.state_stats_path`` if it exists, else computed over the
    sources (and written there when set), with the data's own action bounds attached."""
    reader = sources[0].reader
    if reader.observation_space.dtype == np.uint8 and len(reader.obs_shape) >= 2:
        raise DataError(f"{reader.path}: normalize_states applies to vector observations only")
    path = Path(cfg.state_stats_path) if cfg.state_stats_path else None
    if path is not None and path.exists():
        stats = load_state_stats(path)
    else:
        stats = source_state_stats(sources)
        if path is not None:
            save_state_stats(stats, path)
    bounds = action_bounds(reader.action_space, str(reader.metadata_file))
    return with_action_bounds(stats, bounds, stats.mean.shape[0]) or stats
