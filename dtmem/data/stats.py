"""The dataset statistics that travel with a model: how training windows were transformed, so
that acting can do the same to observations and undo it on actions.

States (vector observations only), standardised when the config asks for it:

    s' = (s - mean) / std                       per dimension, over the training observations

Actions of a continuous space whose bounds reach outside the tanh head's range [-1, 1]
(Pendulum-v1: [-2, 2]) are mapped affinely onto it for training, and back when acting:

    a' = 2 (a - low) / (high - low) - 1         (training: the dataset's space -> [-1, 1])
    a  = low + (a' + 1) (high - low) / 2        (acting: ``to_env_action``, clipped to the space)

A space already inside [-1, 1] (Meta-World) is left as it is; an unbounded one is refused,
because nothing says what range the head should cover. Both transforms are saved together as
one ``StateStats`` (``state_stats.json`` beside the model's weights).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dtmem.data.episodes import DataError
from dtmem.fileio import write_json_atomic

__all__ = [
    "ActionBounds",
    "StateStats",
    "action_bounds",
    "check_action_bounds",
    "compute_state_stats",
    "load_state_stats",
    "normalize_states",
    "save_state_stats",
    "scale_actions",
    "to_env_action",
    "with_action_bounds",
]

ActionBounds = tuple[np.ndarray, np.ndarray]  # (low, high), each (A,) float64


@dataclass(frozen=True)
class StateStats:
    """Per-dimension mean and std of vector observations, and the action bounds scaled from.

    ``count`` is the number of observations mean and std were computed over; 0 means states
    are not standardised (mean 0, std 1, the identity), which is how statistics look that
    only carry action bounds. ``action_low``/``action_high`` are None when actions were used
    as they are.
    """

    mean: np.ndarray  # (D,) float64
    std: np.ndarray  # (D,) float64; dimensions with std < MIN_STD are stored as 1
    count: int
    action_low: np.ndarray | None = None  # (A,) float64
    action_high: np.ndarray | None = None  # (A,) float64

    MIN_STD = 1e-6

    @property
    def normalizes_states(self) -> bool:
        return self.count > 0

    @property
    def bounds(self) -> ActionBounds | None:
        if self.action_low is None or self.action_high is None:
            return None
        return self.action_low, self.action_high


# ---------------------------------------------------------------------------------------------
# States


def compute_state_stats(observation_arrays: Iterable[np.ndarray]) -> StateStats:
    """Mean and std over the rows of every array.  Each array (n_i, D) -> stats over sum n_i.

    Streams (Chan et al.'s pairwise update in float64), so the arrays can come from a lazy
    reader one episode at a time. A dimension whose std is below 1e-6 (a constant feature, such
    as Meta-World's zero padding) gets std 1: it is centred, never blown up.
    """
    count = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    for array in observation_arrays:
        x = np.asarray(array, dtype=np.float64)
        n = x.shape[0]
        if n == 0:
            continue
        x = x.reshape(n, -1)  # (n, D)
        batch_mean = x.mean(axis=0)
        batch_m2 = ((x - batch_mean) ** 2).sum(axis=0)
        if mean is None or m2 is None:
            count, mean, m2 = n, batch_mean, batch_m2
            continue
        if batch_mean.shape != mean.shape:
            raise ValueError(f"observation width {batch_mean.shape} != {mean.shape}")
        delta = batch_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + batch_m2 + delta**2 * (count * n / total)
        count = total
    if mean is None or m2 is None:
        raise ValueError("no observations to compute statistics from")
    std = np.sqrt(m2 / count)
    std = np.where(std < StateStats.MIN_STD, 1.0, std)
    return StateStats(mean=mean, std=std, count=count)


def normalize_states(observations: np.ndarray, stats: StateStats) -> np.ndarray:
    """(x - mean) / std.  observations (..., D) -> (..., D) float32."""
    return ((np.asarray(observations, dtype=np.float64) - stats.mean) / stats.std).astype(
        np.float32
    )


# ---------------------------------------------------------------------------------------------
# Actions


def action_bounds(space: Any, where: str) -> ActionBounds | None:
    """The bounds to scale a dataset's actions from, or None when they need no scaling.

    None for discrete spaces and for Box spaces inside [-1, 1]; raises ``DataError`` (one
    line naming ``where``) for a continuous space with an infinite bound.
    """
    import gymnasium as gym

    if not isinstance(space, gym.spaces.Box):
        return None
    low = np.asarray(space.low, dtype=np.float64).reshape(-1)  # (A,)
    high = np.asarray(space.high, dtype=np.float64).reshape(-1)  # (A,)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise DataError(
            f"{where}: action_space {space} is unbounded; the model's tanh head predicts "
            "[-1, 1], so a continuous dataset must declare finite action bounds"
        )
    if (low >= -1).all() and (high <= 1).all():
        return None
    return low, high


def _half_width(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.where(high > low, (high - low) / 2, 1.0)  # a degenerate dimension maps to 0


def scale_actions(actions: np.ndarray, stats: StateStats | None) -> np.ndarray:
    """Dataset actions into the head's range.  (..., A) -> (..., A) float32 in [-1, 1]."""
    a = np.asarray(actions, dtype=np.float32)
    if stats is None or stats.bounds is None:
        return a
    low, high = stats.bounds
    return ((a - low) / _half_width(low, high) - 1.0).astype(np.float32)


def to_env_action(action: np.ndarray, stats: StateStats | None) -> np.ndarray:
    """The model's action in the env's range: the inverse of ``scale_actions``, clipped to it.

    action (..., A) as the head predicts it -> (..., A) float32 in [low, high]; returned as
    given when the training data's actions were not scaled (discrete ones among them).
    """
    if stats is None or stats.bounds is None:
        return action
    low, high = stats.bounds
    a = np.asarray(action, dtype=np.float64)
    return np.clip(low + (a + 1.0) * _half_width(low, high), low, high).astype(np.float32)


def with_action_bounds(
    stats: StateStats | None, bounds: ActionBounds | None, obs_width: int
) -> StateStats | None:
    """``stats`` carrying ``bounds``: identity state statistics of ``obs_width`` when ``stats``
    is None and there are bounds to carry; None when there is nothing to carry."""
    if bounds is None:
        return None if stats is None else replace(stats, action_low=None, action_high=None)
    if stats is None:
        stats = StateStats(mean=np.zeros(obs_width), std=np.ones(obs_width), count=0)
    return replace(stats, action_low=bounds[0], action_high=bounds[1])


def check_action_bounds(stats: StateStats, bounds: ActionBounds | None, where: str) -> None:
    """Raise ``DataError`` unless statistics a model was trained with scale actions as
    ``bounds`` (a dataset's) do; the model's actions would otherwise mean something else."""
    mine = stats.bounds
    same = (mine is None and bounds is None) or (
        mine is not None
        and bounds is not None
        and mine[0].shape == bounds[0].shape
        and np.allclose(mine[0], bounds[0])
        and np.allclose(mine[1], bounds[1])
    )
    if not same:

        def show(b: ActionBounds | None) -> str:
            return "[-1, 1] as they are" if b is None else f"[{b[0].tolist()}, {b[1].tolist()}]"

        raise DataError(
            f"{where}: actions in {show(bounds)}, but the given statistics (the model's, or "
            f"data.state_stats_path) scale actions from {show(mine)}"
        )


# ---------------------------------------------------------------------------------------------
# File


def save_state_stats(stats: StateStats, path: str | os.PathLike[str]) -> None:
    """Write the stats as a small JSON file, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "mean": stats.mean.tolist(),
        "std": stats.std.tolist(),
        "count": stats.count,
    }
    if stats.bounds is not None:
        payload["action_low"] = stats.bounds[0].tolist()
        payload["action_high"] = stats.bounds[1].tolist()
    write_json_atomic(path, payload)


def load_state_stats(path: str | os.PathLike[str]) -> StateStats:
    """Read stats written by ``save_state_stats``; a bad file raises a one-line DataError."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
        mean = np.asarray(payload["mean"], dtype=np.float64)
        std = np.asarray(payload["std"], dtype=np.float64)
        count = int(payload["count"])
        low = payload.get("action_low")
        high = payload.get("action_high")
        bounds = None
        if low is not None or high is not None:
            bounds = (np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64))
    except FileNotFoundError:
        raise DataError(f"{path}: no such state-statistics file") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a state-statistics file ({exc})") from None
    if mean.ndim != 1 or mean.shape != std.shape or not (std > 0).all():
        raise DataError(f"{path}: mean/std must be equal-length 1-D arrays with std > 0")
    if bounds is not None and not _valid_bounds(*bounds):
        raise DataError(
            f"{path}: action_low/action_high must be equal-length finite 1-D arrays, low <= high"
        )
    if bounds is None:
        return StateStats(mean=mean, std=std, count=count)
    return StateStats(mean, std, count, action_low=bounds[0], action_high=bounds[1])


def _valid_bounds(low: np.ndarray, high: np.ndarray) -> bool:
    return bool(
        low.ndim == 1
        and low.shape == high.shape
        and np.isfinite(low).all()
        and np.isfinite(high).all()
        and (low <= high).all()
    )
