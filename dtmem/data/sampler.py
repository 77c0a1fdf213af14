"""Sharded, lazy, resumable multi-task sampler: Minari datasets in, ``Batch`` windows out.

Memory: only an index (episode id and length per episode) is held; episodes are read when a
window needs them and kept in a small LRU cache bounded in bytes. Arrow episodes are
memory-mapped, so an Atari window reads only its own frames' pages.

Epoch e on worker `rank` of `world_size` (everything below is a function of the index and
(seed, e), so every worker computes the same partition and the same number of batches):

1. Each dataset (task) i is permuted with a generator seeded by (seed, e, i, pass); worker r
   takes episodes perm[r::world_size], so no episode goes to two workers in an epoch.
2. Each episode is cut into windows that cover its steps once: a random phase p in
   [0, min(K, T)), windows [0, p), [p, p+K), [p+K, p+2K), ... (``windows.window_starts``;
   the short first window [0, p) is right-padded like an episode's last one).
   Windows are shuffled within groups of ``shuffle_episodes`` consecutive episodes, so only
   a few episodes per task are open at a time.
3. Task i contributes round(weight_i * N_i) windows, N_i being its windows in one pass; with
   all weights 1 every step of every episode is visited exactly once per epoch. A weight
   above 1 continues into a further, freshly permuted pass (each pass is disjoint across
   workers, so such a task's episodes are seen about ``weight`` times per epoch).
4. The tasks' windows are interleaved in a random order seeded by (seed, e, rank).
5. Every worker yields the same number of batches: min over workers of its windows //
   batch_size (the few windows left over on a worker are skipped this epoch).

``state_dict()`` is (epoch, batches yielded in it): a resumed sampler rebuilds the epoch's
plan from the index and continues with the next batch.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dtmem.batch import Batch
from dtmem.data.episodes import DataError, ObservationShapeError
from dtmem.data.minari_io import (
    DatasetInfo,
    DatasetReader,
    check_env,
    check_observation_shape,
    open_dataset,
    window_obs_shape,
)
from dtmem.data.windows import (
    StateStats,
    atari_return_bins,
    atari_reward_classes,
    compute_state_stats,
    continuous_returns_to_go,
    load_state_stats,
    normalize_states,
    save_state_stats,
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
# Index


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
    _check_compatible(sources)
    return sources


def _check_compatible(sources: Sequence[TaskSource]) -> None:
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
    """Mean/std of the observations the windows use (obs_0 .. obs_{T-1}) over all sources."""

    def arrays() -> Iterator[np.ndarray]:
        for source in sources:
            for episode_id in source.episode_ids:
                obs = source.reader.read_episode(int(episode_id)).observations
                yield obs[:-1].reshape(obs.shape[0] - 1, -1)  # (T, D)

    return compute_state_stats(arrays())


# ---------------------------------------------------------------------------------------------
# Epoch plan


@dataclass(frozen=True)
class EpochPlan:
    """The windows one worker yields in one epoch, in order; length num_batches * batch_size."""

    task: np.ndarray  # (N,) int64, index into the sources
    episode: np.ndarray  # (N,) int64, position in that source's episode_ids
    start: np.ndarray  # (N,) int64, first step of the window
    length: np.ndarray  # (N,) int64, its number of steps L <= K
    num_batches: int


def _pass_windows(
    lengths: np.ndarray, context: int, seed: int, epoch: int, task: int, pass_: int
) -> tuple[np.ndarray, np.ndarray]:
    """Permutation and per-episode phases of one pass over a task, the same on every worker."""
    rng = np.random.default_rng([seed, epoch, task, pass_])
    perm = rng.permutation(lengths.size)  # (E,)
    T = lengths[perm]
    phase = rng.integers(0, np.minimum(context, T))  # (E,) in [0, min(K, T))
    return perm, phase


def _window_counts(T: np.ndarray, phase: np.ndarray, context: int) -> np.ndarray:
    """Windows per episode of ``window_starts``: ceil((T - p) / K) + (p > 0)."""
    return -(-(T - phase) // context) + (phase > 0)


def _shard_windows(
    perm: np.ndarray,
    phase: np.ndarray,
    lengths: np.ndarray,
    context: int,
    group: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All windows of a shard's episodes, shuffled within groups of ``group`` episodes.

    perm (e,) episode positions in pass order, phase (e,) -> episode, start, length (n,) each.
    """
    T = lengths[perm]
    n_w = _window_counts(T, phase, context)  # (e,)
    total = int(n_w.sum())
    ep = np.repeat(perm, n_w)  # (n,)
    k = np.arange(total) - np.repeat(np.cumsum(n_w) - n_w, n_w)  # window index in its episode
    p = np.repeat(phase, n_w)
    lead = p > 0
    # windows [0, p), [p, p+K), ... when p > 0; [0, K), [K, 2K), ... when p == 0
    start = np.where(lead, np.where(k == 0, 0, p + (k - 1) * context), k * context)
    end = np.where(lead & (k == 0), p, np.minimum(start + context, np.repeat(T, n_w)))
    grp = np.repeat(np.arange(perm.size) // group, n_w)
    order = np.lexsort((rng.random(total), grp))  # by group, random within a group
    return ep[order], start[order], (end - start)[order]


def plan_epoch(
    lengths: Sequence[np.ndarray],
    weights: Sequence[float],
    *,
    epoch: int,
    rank: int,
    world_size: int,
    context: int,
    batch_size: int,
    seed: int,
    group: int,
) -> EpochPlan:
    """Worker ``rank``'s windows for ``epoch`` (see the module docstring for the rules).

    lengths[i] (E_i,) are the step counts of task i's episodes; the plan refers to episodes by
    their position in that array.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    n_tasks = len(lengths)
    # windows each task gives each worker in its first pass: known on every worker
    first_pass = [_pass_windows(lengths[i], context, seed, epoch, i, 0) for i in range(n_tasks)]
    want = np.zeros((n_tasks, world_size), dtype=np.int64)
    for i, (perm, phase) in enumerate(first_pass):
        n_w = _window_counts(lengths[i][perm], phase, context)
        for r in range(world_size):
            want[i, r] = round(weights[i] * int(n_w[r::world_size].sum()))
    num_batches = int(want.sum(axis=0).min()) // batch_size
    n_total = num_batches * batch_size

    episodes: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    window_lengths: list[np.ndarray] = []
    for i in range(n_tasks):
        need = int(want[i, rank])
        got = 0
        pass_ = 0
        ep_parts: list[np.ndarray] = []
        st_parts: list[np.ndarray] = []
        len_parts: list[np.ndarray] = []
        while got < need:
            perm, phase = (
                first_pass[i]
                if pass_ == 0
                else _pass_windows(lengths[i], context, seed, epoch, i, pass_)
            )
            rng = np.random.default_rng([seed, epoch, i, pass_, rank, 1])
            ep, st, ln = _shard_windows(
                perm[rank::world_size], phase[rank::world_size], lengths[i], context, group, rng
            )
            if ep.size == 0:
                break
            ep_parts.append(ep)
            st_parts.append(st)
            len_parts.append(ln)
            got += ep.size
            pass_ += 1
        episodes.append(_concat(ep_parts)[:need])
        starts.append(_concat(st_parts)[:need])
        window_lengths.append(_concat(len_parts)[:need])

    counts = np.array([e.size for e in episodes], dtype=np.int64)
    slots = np.repeat(np.arange(n_tasks), counts)  # task of each slot
    np.random.default_rng([seed, epoch, rank, 2]).shuffle(slots)
    # the k-th slot of task i takes task i's k-th window
    offsets = np.cumsum(counts) - counts
    occurrence = np.empty(slots.size, dtype=np.int64)
    occurrence[np.argsort(slots, kind="stable")] = np.arange(slots.size) - np.repeat(
        offsets, counts
    )
    flat = offsets[slots] + occurrence
    return EpochPlan(
        task=slots[:n_total].astype(np.int64),
        episode=_concat(episodes)[flat][:n_total],
        start=_concat(starts)[flat][:n_total],
        length=_concat(window_lengths)[flat][:n_total],
        num_batches=num_batches,
    )


def _concat(parts: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


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
        import gymnasium as gym

        if not sources:
            raise ValueError("no datasets")
        if returns not in ("continuous", "atari_bins"):
            raise ValueError(f"returns must be 'continuous' or 'atari_bins', got {returns!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        _check_compatible(sources)
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
        obs_space = reader.observation_space
        self.is_image = obs_space.dtype == np.uint8 and len(reader.obs_shape) >= 2
        if state_stats is not None:
            if self.is_image:
                raise DataError(f"{reader.path}: image observations are never normalised")
            if state_stats.mean.shape != (int(np.prod(reader.obs_shape)),):
                raise ObservationShapeError(
                    f"{reader.path}: state statistics of width {state_stats.mean.shape[0]} do "
                    f"not fit observations {reader.obs_shape}"
                )
        self.state_stats = state_stats
        self.obs_shape = window_obs_shape(reader.obs_shape, frame_stack)
        self.obs_dtype = np.dtype(np.uint8) if self.is_image else np.dtype(np.float32)
        action_space = reader.action_space
        if isinstance(action_space, gym.spaces.Discrete):
            self.action_kind = "discrete"
            self.num_actions = int(action_space.n)
            self.act_dim = 0
        else:
            self.action_kind = "continuous"
            self.num_actions = 0
            self.act_dim = int(np.prod(action_space.shape or (1,)))
        self._lengths = [s.lengths for s in self.sources]
        self._weights = [s.weight for s in self.sources]
        self._cache = _EpisodeCache(int(cache_mb * 2**20))
        self._plan: tuple[int, EpochPlan] | None = None
        self.epoch = 0
        self.batch_index = 0  # batches of ``epoch`` already yielded

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
        if self.returns == "atari_bins":
            rtg = atari_return_bins(ep.rewards)
            rewards = atari_reward_classes(ep.rewards)
        else:
            rtg = continuous_returns_to_go(ep.rewards, self.return_scale)
            rewards = ep.rewards.astype(np.float32, copy=False)
        if self.is_image:
            obs = ep.observations  # uint8, kept as is (a memory-mapped view for arrow)
        elif self.state_stats is not None:
            flat = ep.observations.reshape(ep.observations.shape[0], -1)  # (T+1, D)
            obs = normalize_states(flat, self.state_stats).reshape(ep.observations.shape)
        else:
            obs = ep.observations.astype(np.float32, copy=False)
        actions: np.ndarray
        if self.action_kind == "discrete":
            actions = ep.actions.astype(np.int64, copy=False)
        else:
            actions = ep.actions.astype(np.float32, copy=False).reshape(ep.num_steps, -1)
        item = _Prepared(obs, actions, rtg, rewards)
        self._cache.put(key, item)
        return item

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
) -> WindowSampler:
    """The sampler ``cfg`` describes, for worker ``rank`` of ``world_size``.

    Checks every dataset's env (``DatasetSpec.env``) and, if given, that windows have
    ``expected_obs_shape``. State statistics (when ``normalize_states``): ``state_stats`` if
    given, else ``cfg.state_stats_path`` if it exists, else computed over the training
    episodes (and written to ``state_stats_path`` when set). The time spent building the
    index is ``sampler.index_seconds``.
    """
    t0 = time.perf_counter()
    sources = build_sources(cfg)
    index_seconds = time.perf_counter() - t0
    reader = sources[0].reader
    if expected_obs_shape is not None:
        for source in sources:
            check_observation_shape(source.reader, expected_obs_shape, cfg.frame_stack)
    if cfg.normalize_states and state_stats is None:
        if reader.observation_space.dtype == np.uint8 and len(reader.obs_shape) >= 2:
            raise DataError(f"{reader.path}: normalize_states applies to vector observations only")
        path = Path(cfg.state_stats_path) if cfg.state_stats_path else None
        if path is not None and path.exists():
            state_stats = load_state_stats(path)
        else:
            state_stats = source_state_stats(sources)
            if path is not None:
                save_state_stats(state_stats, path)
    return WindowSampler(
        sources,
        context=cfg.context,
        batch_size=cfg.batch_size,
        returns=cfg.returns,
        return_scale=cfg.return_scale,
        frame_stack=cfg.frame_stack,
        state_stats=state_stats if cfg.normalize_states else None,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        shuffle_episodes=cfg.shuffle_episodes,
        cache_mb=cfg.cache_mb,
        index_seconds=index_seconds,
    )
