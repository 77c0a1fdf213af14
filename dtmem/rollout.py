"""The one episode loop: a policy in a vector env, a list of episodes to run. No Ray.

Evaluation (``DTPolicy``, per-episode statistics) and collection (a behaviour policy, every
transition recorded) both run it; they differ only in the policy and in the ``Recorder``.

Timing convention: at step t the policy sees s_t and picks a_t; the env answers with r_t and
s_{t+1}. Episode ``e`` of the list runs on whichever env slot is free first, reset with its
own seed; the policy is told ``reset(slot, condition)`` (a target return, or a collection
plan) before its first step. When every episode has started, a slot whose episode ends goes
idle: it is still stepped (the vector env steps all its copies) and reset unseeded whenever
it ends, but the policy is told it is inactive and nothing of it is counted or recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from dtmem.envs import VectorEnv, VectorStep

__all__ = [
    "EpisodeStart",
    "EpisodeStats",
    "FunctionPolicy",
    "Policy",
    "Recorder",
    "rollout",
    "run_episodes",
]

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)


@dataclass(frozen=True)
class EpisodeStats:
    """One finished episode: ``episode`` is its index in the request, ``seed`` its env seed;
    ``success`` is None for envs without a success signal (Atari); ``truncated`` means a
    time limit (the env's own or ``max_steps``) ended it rather than the game."""

    episode: int
    seed: int
    episode_return: float
    length: int
    success: bool | None
    truncated: bool


@dataclass(frozen=True)
class EpisodeStart(Generic[C]):
    """An episode to run: its env seed and what the policy is reset with."""

    seed: int
    condition: C


class Policy(Protocol[C_contra]):
    """What the loop drives: one slot per env of the vector env."""

    def reset(self, index: int, condition: C_contra) -> None:
        """Slot ``index`` starts a new episode with ``condition`` (a target return, None for
        the policy's own choice, or a collection plan)."""
        ...

    def act(self, observations: np.ndarray, active: np.ndarray) -> np.ndarray:
        """observations (N, *obs_shape), active (N,) bool -> actions (N,) or (N, act_dim);
        rows of inactive envs are ignored (any value)."""
        ...

    def observe(self, rewards: np.ndarray) -> None:
        """The rewards (N,) of the step just taken with the last ``act``'s actions."""
        ...


class Recorder(Protocol):
    """What is kept of each episode besides its statistics (collection: every transition)."""

    def start(self, slot: int, episode: int, observation: np.ndarray) -> None:
        """Episode ``episode`` starts on ``slot`` with its first observation."""
        ...

    def record(
        self, slots: np.ndarray, actions: np.ndarray, step: VectorStep, truncated: np.ndarray
    ) -> None:
        """One step of the active ``slots``: the actions taken (N, ...), the env's answer
        (before any reset) and, per slot, whether a time limit ended the episode (N,)."""
        ...

    def finish(self, slot: int, stats: EpisodeStats) -> None:
        """The episode on ``slot`` ended; ``stats`` are its statistics."""
        ...


def run_episodes(
    policy: Policy[C],
    env: VectorEnv,
    episodes: Sequence[EpisodeStart[C]],
    *,
    max_steps: int | None = None,
    recorder: Recorder | None = None,
) -> list[EpisodeStats]:
    """Run every episode of ``episodes`` to its end; returns their statistics in list order.

    ``max_steps`` caps an episode's agent steps (Atari: 5000), marking it truncated.
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    n, total = env.num_envs, len(episodes)
    if total == 0:
        return []
    obs = env.reset([episodes[i].seed if i < total else i for i in range(n)])
    episode_of = np.full(n, -1, dtype=np.int64)  # episode each slot runs; -1: idle
    ep_return = np.zeros(n)
    ep_length = np.zeros(n, dtype=np.int64)
    ep_success = np.zeros(n, dtype=bool)
    results: list[EpisodeStats | None] = [None] * total

    def start(slot: int, e: int, first: np.ndarray) -> None:
        episode_of[slot] = e
        policy.reset(slot, episodes[e].condition)
        if recorder is not None:
            recorder.start(slot, e, first)

    started = min(n, total)
    for i in range(started):
        start(i, i, obs[i])

    while (episode_of >= 0).any():
        active = episode_of >= 0
        actions = policy.act(obs, active)
        step = env.step(actions)
        policy.observe(step.rewards)
        ep_return += np.where(active, step.rewards, 0.0)
        ep_length += active
        if step.success is not None:
            ep_success |= step.success & active
        timed_out = ep_length >= max_steps if max_steps is not None else np.zeros(n, bool)
        truncated = step.truncated | (timed_out & ~step.terminated)
        if recorder is not None:
            recorder.record(np.flatnonzero(active), actions, step, truncated)
        done = active & (step.terminated | step.truncated | timed_out)
        obs = step.observations.copy()
        idle: list[int] = []  # slots that ended with no episode left for them
        for i in np.flatnonzero(done).tolist():
            e = int(episode_of[i])
            results[e] = stats = EpisodeStats(
                episode=e,
                seed=episodes[e].seed,
                episode_return=float(ep_return[i]),
                length=int(ep_length[i]),
                success=bool(ep_success[i]) if step.success is not None else None,
                truncated=bool(not step.terminated[i]),
            )
            if recorder is not None:
                recorder.finish(i, stats)
            ep_return[i], ep_length[i], ep_success[i] = 0.0, 0, False
            if started < total:
                obs[i] = env.reset_at(i, episodes[started].seed)
                start(i, started, obs[i])
                started += 1
            else:
                episode_of[i] = -1
                idle.append(i)
        idle += np.flatnonzero(~active & (step.terminated | step.truncated)).tolist()
        if (episode_of >= 0).any():  # the env steps on: keep the idle slots steppable
            for i in idle:
                obs[i] = env.reset_at(i, None)
    assert all(s is not None for s in results)
    return [s for s in results if s is not None]


def rollout(
    policy: Policy[float | None],
    env: VectorEnv,
    target: float | None,
    *,
    num_episodes: int,
    seed: int = 0,
    max_steps: int | None = None,
) -> list[EpisodeStats]:
    """Evaluation's call of the loop: ``num_episodes`` episodes, episode e with env seed
    ``seed + e``, every one conditioned on ``target`` (None: the policy's own choice)."""
    from dtmem.dt_policy import check_target

    check_target(target)
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    starts = [EpisodeStart(seed + e, target) for e in range(num_episodes)]
    return run_episodes(policy, env, starts, max_steps=max_steps)


class FunctionPolicy:
    """A stateless per-observation function as a ``Policy`` (e.g. a Meta-World expert)."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.fn = fn

    def reset(self, index: int, condition: Any) -> None:
        pass

    def act(self, observations: np.ndarray, active: np.ndarray) -> np.ndarray:
        out = [
            np.asarray(self.fn(o)) if a else None for o, a in zip(observations, active, strict=True)
        ]
        first = next(x for x in out if x is not None)
        return np.stack([x if x is not None else np.zeros_like(first) for x in out])

    def observe(self, rewards: np.ndarray) -> None:
        pass
