"""A 1-nearest-neighbour baseline: play the action of the nearest demonstrated state.

Fitted on the fine-tuning demonstrations of a held-out task (the same episodes a fine-tune
reads: ``demonstrations_from_config`` uses the fine-tune's ``DataConfig``), it answers, at
step t, with the action a_j of the demonstrated state s_j closest to the standardised s_t:

    j* = argmin_j || (s_t - mu) / sigma - (s_j - mu) / sigma ||_2,     a_t = a_{j*}

mu and sigma are the per-dimension mean and std of the demonstrated states
(``dtmem.data.stats.compute_state_stats``: a constant dimension gets sigma = 1). The search
is exact (``torch.cdist`` without the matrix-multiply shortcut, whose cancellation can pick
the wrong neighbour), batched over the envs and chunked over the demonstrations so the
distance matrix stays bounded; ties go to the earliest demonstrated step.

``NearestNeighbourPolicy`` has the call shape of ``dtmem.dt_policy.DTPolicy`` (the
``dtmem.rollout.Policy`` protocol), so the evaluation's episode loop runs it unchanged; it
ignores the target return (it conditions on nothing). No Ray, no model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dtmem.data.episodes import Episode
from dtmem.data.stats import StateStats, compute_state_stats, normalize_states

if TYPE_CHECKING:
    import torch

    from dtmem.config.data import DataConfig
    from dtmem.envs import VectorEnv

__all__ = [
    "Demonstrations",
    "NearestNeighbourPolicy",
    "demonstrations_from_config",
    "fit_demonstrations",
    "nearest",
]


@dataclass(frozen=True)
class Demonstrations:
    """The (state, action) pairs the baseline looks up, and the states' statistics."""

    states: np.ndarray  # (M, D) float32, standardised with ``stats``
    actions: np.ndarray  # (M, A) float32 continuous, or (M,) int64 discrete: env actions
    stats: StateStats

    @property
    def obs_dim(self) -> int:
        return int(self.states.shape[1])


def fit_demonstrations(episodes: Iterable[Episode]) -> Demonstrations:
    """Every step (s_t, a_t), t < T, of every episode; states standardised over them all."""
    states, actions = [], []
    for episode in episodes:
        T = episode.num_steps
        states.append(episode.observations[:T].reshape(T, -1))  # (T, D): s_0 .. s_{T-1}
        actions.append(episode.actions[:T])
    if not states:
        raise ValueError("no demonstrations to fit the nearest-neighbour baseline on")
    raw = np.concatenate(states)  # (M, D)
    stats = compute_state_stats([raw])
    acts = np.concatenate(actions)
    discrete = np.issubdtype(acts.dtype, np.integer)
    acts = acts.astype(np.int64) if discrete else acts.reshape(len(acts), -1).astype(np.float32)
    return Demonstrations(normalize_states(raw, stats), acts, stats)


def demonstrations_from_config(cfg: DataConfig) -> Demonstrations:
    """The episodes a fine-tune with data config ``cfg`` trains on (same datasets, same
    ``episode_fraction`` subset), read with the project's dataset readers."""
    from dtmem.data.sources import build_sources

    def episodes() -> Iterable[Episode]:
        for source in build_sources(cfg):
            for episode_id in source.episode_ids:
                yield source.reader.read_episode(int(episode_id))

    return fit_demonstrations(episodes())


def nearest(queries: torch.Tensor, keys: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Index of each query's nearest key in Euclidean distance, exact, first on ties.

    queries (n, D), keys (M, D) -> (n,) int64. Keys are scanned in chunks of ``chunk`` rows,
    so memory is O(n * chunk) whatever M is.
    """
    import torch

    if keys.shape[0] == 0:
        raise ValueError("no keys to search")
    best_d = torch.full((queries.shape[0],), float("inf"), dtype=queries.dtype)
    best_i = torch.zeros(queries.shape[0], dtype=torch.int64)
    for start in range(0, keys.shape[0], chunk):
        d = torch.cdist(
            queries, keys[start : start + chunk], compute_mode="donot_use_mm_for_euclid_dist"
        )  # (n, m)
        d_min, i_min = d.min(dim=1)  # first minimum within the chunk
        better = d_min < best_d  # strict: an earlier chunk keeps a tie
        best_d = torch.where(better, d_min, best_d)
        best_i = torch.where(better, i_min + start, best_i)
    return best_i


class NearestNeighbourPolicy:
    """``Demonstrations`` as a ``dtmem.rollout.Policy`` for ``env.num_envs`` envs at once."""

    def __init__(self, demos: Demonstrations, env: VectorEnv, *, chunk: int = 16384) -> None:
        import torch

        spec = env.spec
        if int(np.prod(spec.observation_shape)) != demos.obs_dim:
            raise ValueError(
                f"{spec.name}: observations of {spec.observation_shape} but the "
                f"demonstrations' states have {demos.obs_dim} dims"
            )
        discrete = demos.actions.ndim == 1
        if discrete != (spec.action_kind == "discrete") or (
            not discrete and demos.actions.shape[1] != spec.act_dim
        ):
            raise ValueError(
                f"{spec.name}: {spec.action_kind} actions (act_dim {spec.act_dim}) but the "
                f"demonstrations' actions have shape {demos.actions.shape[1:]}"
            )
        self.demos = demos
        self.chunk = chunk
        self.keys = torch.from_numpy(np.ascontiguousarray(demos.states))  # (M, D)

    def reset(self, index: int, condition: Any) -> None:
        """Nothing to reset: the baseline has no state and ignores the target return."""

    def act(self, observations: np.ndarray, active: np.ndarray) -> np.ndarray:
        """observations (N, *obs_shape) -> the nearest demonstrated actions (N, A) or (N,);
        rows of inactive envs repeat the first demonstrated action."""
        import torch

        N = observations.shape[0]
        out = np.repeat(self.demos.actions[:1], N, axis=0)  # (N, A) or (N,)
        rows = np.flatnonzero(active)
        if rows.size:
            q = normalize_states(observations[rows].reshape(rows.size, -1), self.demos.stats)
            idx = nearest(torch.from_numpy(q), self.keys, self.chunk).numpy()
            out[rows] = self.demos.actions[idx]
        return out

    def observe(self, rewards: np.ndarray) -> None:
        """Rewards change nothing."""
