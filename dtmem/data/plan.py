"""Which windows each worker yields in an epoch: a pure function of the index and the seed.

Epoch e on worker `rank` of `world_size` (everything below is a function of the episode
lengths and (seed, e), so every worker computes the same partition and the same number of
batches):

1. Each dataset (task) i is permuted with a generator seeded by (seed, e, i, pass); worker r
   takes episodes perm[r::world_size], so no episode goes to two workers in an epoch.
2. Each episode is cut into windows that cover its steps once: a random phase p in
   [0, min(K, T)), windows [0, p), [p, p+K), [p+K, p+2K), ... (``windows.window_starts``;
   the short first window [0, p) is right-padded like an episode's last one).
   Windows are shuffled within groups of ``group`` consecutive episodes, so only a few
   episodes per task are open at a time.
3. Task i contributes round(weight_i * N_i) windows, N_i being its windows in one pass; with
   all weights 1 every step of every episode is visited exactly once per epoch. A weight
   above 1 continues into a further, freshly permuted pass (each pass is disjoint across
   workers, so such a task's episodes are seen about ``weight`` times per epoch).
4. The tasks' windows are interleaved in a random order seeded by (seed, e, rank).
5. Every worker yields the same number of batches: min over workers of its windows //
   batch_size (the few windows left over on a worker are skipped this epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["EpochPlan", "plan_epoch"]


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
    first_pass = [_pass_windows(lengths[i], context, seed, epoch, i, 0) for i in range(n_tasks)]
    want = _windows_wanted(lengths, weights, first_pass, context, world_size)  # (tasks, workers)
    num_batches = int(want.sum(axis=0).min()) // batch_size
    per_task = [
        _task_windows(
            lengths[i], int(want[i, rank]), first_pass[i],
            seed=seed, epoch=epoch, task=i, rank=rank, world_size=world_size,
            context=context, group=group,
        )
        for i in range(n_tasks)
    ]  # fmt: skip
    return _interleave(per_task, num_batches * batch_size, num_batches, seed, epoch, rank)


def _windows_wanted(
    lengths: Sequence[np.ndarray],
    weights: Sequence[float],
    first_pass: Sequence[tuple[np.ndarray, np.ndarray]],
    context: int,
    world_size: int,
) -> np.ndarray:
    """(tasks, workers) int64: round(weight_i * windows task i gives worker r in its first
    pass), known on every worker."""
    want = np.zeros((len(lengths), world_size), dtype=np.int64)
    for i, (perm, phase) in enumerate(first_pass):
        n_w = _window_counts(lengths[i][perm], phase, context)
        for r in range(world_size):
            want[i, r] = round(weights[i] * int(n_w[r::world_size].sum()))
    return want


def _task_windows(
    lengths: np.ndarray,
    need: int,
    first_pass: tuple[np.ndarray, np.ndarray],
    *,
    seed: int,
    epoch: int,
    task: int,
    rank: int,
    world_size: int,
    context: int,
    group: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``need`` windows of one task on worker ``rank``: its shard of pass 0, then of
    further freshly permuted passes.  -> episode, start, length, (need,) each (fewer if the
    worker's shard is empty)."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    got, pass_ = 0, 0
    while got < need:
        perm, phase = (
            first_pass if pass_ == 0 else _pass_windows(lengths, context, seed, epoch, task, pass_)
        )
        rng = np.random.default_rng([seed, epoch, task, pass_, rank, 1])
        shard = _shard_windows(
            perm[rank::world_size], phase[rank::world_size], lengths, context, group, rng
        )
        if shard[0].size == 0:
            break
        parts.append(shard)
        got += shard[0].size
        pass_ += 1
    ep, st, ln = (_concat([part[k] for part in parts])[:need] for k in range(3))
    return ep, st, ln


def _interleave(
    per_task: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    n_total: int,
    num_batches: int,
    seed: int,
    epoch: int,
    rank: int,
) -> EpochPlan:
    """The tasks' windows in a random order seeded by (seed, epoch, rank), each task's in its
    own order, cut to ``n_total``."""
    counts = np.array([ep.size for ep, _, _ in per_task], dtype=np.int64)
    slots = np.repeat(np.arange(len(per_task)), counts)  # task of each slot
    np.random.default_rng([seed, epoch, rank, 2]).shuffle(slots)
    # the k-th slot of task i takes task i's k-th window
    offsets = np.cumsum(counts) - counts
    occurrence = np.empty(slots.size, dtype=np.int64)
    occurrence[np.argsort(slots, kind="stable")] = np.arange(slots.size) - np.repeat(
        offsets, counts
    )
    flat = offsets[slots] + occurrence
    episode, start, length = (_concat([t[k] for t in per_task])[flat] for k in range(3))
    return EpochPlan(
        task=slots[:n_total].astype(np.int64),
        episode=episode[:n_total],
        start=start[:n_total],
        length=length[:n_total],
        num_batches=num_batches,
    )


def _concat(parts: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
