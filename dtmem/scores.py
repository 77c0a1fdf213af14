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
interval that resamples episodes within each game (the machinery is ``dtmem.stats``).
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
from dtmem.stats import (
    ScoreInterval,
    as_strata,
    iqm,
    percentile_interval,
    stratified_resamples,
    trimmed,
)

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


def top_k_mean(values: Sequence[float] | np.ndarray, k: int = 3) -> float:
    """Mean of the k largest values (MDT reports the top 3 of 16 episodes)."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size < k:
        raise ValueError(f"top-{k} mean of {x.size} values")
    return float(x[-k:].mean())


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
    per_game = as_strata(scores_by_game)
    point = iqm([x.mean() for x in per_game])
    resampled = stratified_resamples(per_game, num_resamples, seed)  # G x (R, n_g)
    means = np.stack([x.mean(axis=1) for x in resampled], axis=1)  # (R, G)
    replicates = trimmed(np.sort(means, axis=1)).mean(axis=1)  # (R,)
    return percentile_interval(point, replicates, confidence)
