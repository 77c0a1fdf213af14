"""Atari reference scores, normalised scores and their aggregate across games.

The table (``dtmem/data_files/atari_reference_scores.csv``; provenance in the ``.md`` beside
it) has, for all 57 games:

- ``random`` and ``human``: deepmind/dqn_zoo ``dqn_zoo/atari_data.py`` ``_ATARI_DATA`` at
  commit f87bb1f (the "human_at30" set, as MDT's PyTorch port etaoxing/multigame-dt also
  uses; not Nature 2015's 5-minute human scores).
- ``dqn``: the DQN agent that generated DQN Replay, google/dopamine
  ``baselines/atari/data/<game>.json``, agent "DQN", mean of the 5 runs at the last
  iteration (198). Empty for Defender and Surround (not in DQN Replay).

Normalisation:

    human-normalised = (score - random) / (human - random)
    DQN-normalised   = (score - lo) / (hi - lo),  lo, hi = min, max(random, dqn)

The min/max bounds follow Agarwal et al. as Atari-PB implements them, because DQN scores
below random on Asteroids and PrivateEye; on MontezumaRevenge dqn == random and the
DQN-normalised score is undefined (as on Defender and Surround): those raise.

Aggregate (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice"): the
interquartile mean (IQM) of the per-game scores, with a stratified bootstrap confidence
interval that resamples episodes within each game.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar

import numpy as np

from dtmem.envs.atari import canonical_game

__all__ = [
    "ReferenceScore",
    "ScoreInterval",
    "UndefinedNormalizationError",
    "dqn_normalized_score",
    "human_normalized_score",
    "iqm",
    "iqm_bootstrap_ci",
    "reference_scores",
    "top_k_mean",
]

S = TypeVar("S", float, np.ndarray)


class UndefinedNormalizationError(ValueError):
    """A normalised score that the reference table cannot define for this game."""


@dataclass(frozen=True)
class ReferenceScore:
    """One row of the table: raw game scores of a random agent, a human, and DQN (or None)."""

    game: str
    random: float
    human: float
    dqn: float | None


@functools.cache
def reference_scores() -> Mapping[str, ReferenceScore]:
    """game (ALE v5 name, e.g. ``"MsPacman"``) -> its reference scores; all 57 games."""
    text = resources.files("dtmem.data_files").joinpath("atari_reference_scores.csv").read_text()
    table = {}
    for row in csv.DictReader(text.splitlines()):
        dqn = row["dqn"].strip()
        table[row["game"]] = ReferenceScore(
            game=row["game"],
            random=float(row["random"]),
            human=float(row["human"]),
            dqn=float(dqn) if dqn else None,
        )
    return table


def human_normalized_score(game: str, score: S) -> S:
    """(score - random) / (human - random): 0 for a random agent, 1 for a human."""
    ref = reference_scores()[canonical_game(game)]
    return (score - ref.random) / (ref.human - ref.random)


def dqn_normalized_score(game: str, score: S) -> S:
    """(score - lo) / (hi - lo) with lo, hi = min, max(random, dqn): 0 random, 1 DQN (where
    DQN beats random). Raises UndefinedNormalizationError where the table has no DQN score or
    DQN equals random (MontezumaRevenge)."""
    ref = reference_scores()[canonical_game(game)]
    if ref.dqn is None:
        raise UndefinedNormalizationError(f"{ref.game}: no DQN reference score (not in DQN Replay)")
    lo, hi = min(ref.random, ref.dqn), max(ref.random, ref.dqn)
    if hi == lo:
        raise UndefinedNormalizationError(
            f"{ref.game}: DQN score equals the random score ({lo}), so DQN-normalised is undefined"
        )
    return (score - lo) / (hi - lo)


def _trimmed(sorted_values: np.ndarray) -> np.ndarray:
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
    return float(_trimmed(x).mean())


def top_k_mean(values: Sequence[float] | np.ndarray, k: int = 3) -> float:
    """Mean of the k largest values (MDT reports the top 3 of 16 episodes)."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size < k:
        raise ValueError(f"top-{k} mean of {x.size} values")
    return float(x[-k:].mean())


@dataclass(frozen=True)
class ScoreInterval:
    """A point estimate and its bootstrap confidence interval [low, high]."""

    point: float
    low: float
    high: float


def iqm_bootstrap_ci(
    scores_by_game: Mapping[str, Sequence[float] | np.ndarray],
    *,
    num_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ScoreInterval:
    """IQM across games of each game's mean episode score, with a stratified bootstrap CI.

    ``scores_by_game``: game -> its per-episode (normalised) scores, n_g >= 1 of them.
    Each of ``num_resamples`` replicates resamples every game's episodes with replacement
    (stratified: games are kept, episodes are drawn within each), takes each game's mean and
    the IQM across games; the interval is the percentile interval of the replicates.
    """
    if not scores_by_game:
        raise ValueError("no games to aggregate")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    per_game = [np.asarray(v, dtype=np.float64).ravel() for v in scores_by_game.values()]
    for game, x in zip(scores_by_game, per_game, strict=True):
        if x.size == 0:
            raise ValueError(f"{game}: no episode scores")
    point = iqm([x.mean() for x in per_game])
    means = np.empty((num_resamples, len(per_game)))  # (R, G)
    for g, x in enumerate(per_game):
        idx = rng.integers(0, x.size, size=(num_resamples, x.size))  # (R, n_g)
        means[:, g] = x[idx].mean(axis=1)
    replicates = _trimmed(np.sort(means, axis=1)).mean(axis=1)  # (R,)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return ScoreInterval(point=point, low=float(low), high=float(high))
