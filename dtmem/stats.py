"""Aggregate scores across tasks with a stratified bootstrap confidence interval.

Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice" (rliable): a study
gives, for each task t, scores x_{t,1..n_t} from n_t independent runs (seeds, or episodes).
The aggregate over tasks is

    mean: (1/T) sum_t (1/n_t) sum_i x_{t,i}              (rliable ``aggregate_mean``)
    IQM:  the mean of the middle 50% of all x_{t,i}       (rliable ``aggregate_iqm``:
          ``scipy.stats.trim_mean(x, 0.25)`` over the pooled scores)

and its 95% interval is the percentile interval of the aggregate over replicates that
resample the runs WITHIN each task, with replacement (tasks are strata, never resampled:
rliable's ``StratifiedBootstrap`` with ``task_bootstrap=False``).

Draws follow rliable's layout: replicate r draws an index for every (run, task) cell of an
(n, T) table in one ``randint(0, n, (n, T))`` call of a legacy ``numpy.random.RandomState``
(rliable uses ``np.random.choice`` on the global one, which is the same stream), so with the
same seed and equal run counts the intervals equal rliable's exactly. Tasks with unequal run
counts (a missing seed) are drawn task by task; rliable cannot take them at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "ScoreInterval",
    "Statistic",
    "as_strata",
    "iqm",
    "percentile_interval",
    "stratified_bootstrap_ci",
    "stratified_resamples",
    "trimmed",
]

Statistic = Literal["mean", "iqm"]


@dataclass(frozen=True)
class ScoreInterval:
    """A point estimate and its bootstrap confidence interval [low, high]."""

    point: float
    low: float
    high: float


def trimmed(sorted_values: np.ndarray) -> np.ndarray:
    """The middle half of values sorted along the last axis: drop floor(n/4) from each end
    (``scipy.stats.trim_mean(x, 0.25)``, which rliable's IQM uses)."""
    n = sorted_values.shape[-1]
    cut = int(0.25 * n)
    return sorted_values[..., cut : n - cut]


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of the values (all flattened)."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size == 0:
        raise ValueError("iqm of no values")
    return float(trimmed(x).mean())


def as_strata(scores_by_task: Mapping[str, Sequence[float] | np.ndarray]) -> list[np.ndarray]:
    """Each task's scores as a flat float64 array; no tasks, or a task without scores, raise."""
    if not scores_by_task:
        raise ValueError("no tasks to aggregate")
    strata = [np.asarray(v, dtype=np.float64).ravel() for v in scores_by_task.values()]
    for task, x in zip(scores_by_task, strata, strict=True):
        if x.size == 0:
            raise ValueError(f"{task}: no scores")
    return strata


def stratified_resamples(
    strata: Sequence[np.ndarray], num_resamples: int, seed: int
) -> list[np.ndarray]:
    """For each stratum x_t (n_t,), its ``num_resamples`` resamples with replacement, (R, n_t).

    Equal sizes n: one legacy ``RandomState(seed).randint(0, n, (R, n, T))`` draw, rliable's
    layout (replicate r, run i, task t); unequal sizes: one ``(R, n_t)`` draw per stratum.
    """
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    rs = np.random.RandomState(seed)
    sizes = {x.size for x in strata}
    if len(sizes) == 1:
        (n,) = sizes
        table = np.stack(strata, axis=1)  # (n, T)
        idx = rs.randint(0, n, size=(num_resamples, n, len(strata)))  # (R, n, T)
        drawn = np.take_along_axis(table[None], idx, axis=1)  # (R, n, T)
        return [drawn[:, :, t] for t in range(len(strata))]
    return [x[rs.randint(0, x.size, size=(num_resamples, x.size))] for x in strata]


def percentile_interval(
    point: float, replicates: np.ndarray, confidence: float = 0.95
) -> ScoreInterval:
    """The percentile interval of ``replicates`` (R,) (linear interpolation, as arch's
    ``conf_int(method="percentile")``) around ``point``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return ScoreInterval(point=point, low=float(low), high=float(high))


def _aggregate(strata: Sequence[np.ndarray], statistic: Statistic) -> np.ndarray:
    """The aggregate of each replicate, (R,), from strata (R, n_t)."""
    if statistic == "mean":
        return np.stack([x.mean(axis=1) for x in strata], axis=1).mean(axis=1)
    if statistic == "iqm":
        pooled = np.sort(np.concatenate(strata, axis=1), axis=1)  # (R, sum n_t)
        return trimmed(pooled).mean(axis=1)
    raise ValueError(f"statistic must be 'mean' or 'iqm', got {statistic!r}")


def stratified_bootstrap_ci(
    scores_by_task: Mapping[str, Sequence[float] | np.ndarray],
    statistic: Statistic = "mean",
    *,
    num_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ScoreInterval:
    """The aggregate of ``scores_by_task`` (task -> its runs' scores) and its stratified
    bootstrap percentile interval; see the module docstring for the definitions."""
    strata = as_strata(scores_by_task)
    point = float(_aggregate([x[None] for x in strata], statistic)[0])
    replicates = _aggregate(stratified_resamples(strata, num_resamples, seed), statistic)
    return percentile_interval(point, replicates, confidence)
