"""The episode recorder, the worker that owns envs and policies, and its Ray actor.

``record_episodes`` is a plain loop (no Ray): a behaviour policy in a vector env, episodes
started in plan order on whichever slot is free, each recorded whole as an ``Episode``.
``CollectWorker`` keeps the envs and policy of the task it is working on and runs plans for
it; ``remote_worker`` wraps it as a Ray actor, the only Ray code here.

What is stored per step (the dataset format, ``dataset_spaces``):

    Meta-World  observations (T+1, 39) float32, actions (T, 4) float32 in [-1, 1],
                infos["success"] (T+1, 1) bool: row 0 False (reset), row t+1 the env's
                info["success"] after action t
    Atari       observations (T+1, 84, 84) uint8, the newest frame of the env's 4-frame
                stack (training stacks frames again), actions (T,) int64 in the full 18-set;
                when the game ends the native env has already reset, so the final
                observation is a zero frame, as in the DQN Replay importer (windows never
                read it)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dtmem.collect.policies import BehaviourPolicy, EpisodePlan, make_policy
from dtmem.data.episodes import Episode
from dtmem.envs import VectorEnv

if TYPE_CHECKING:
    import gymnasium as gym

    from dtmem.config.collect import PolicyConfig

__all__ = [
    "CollectWorker",
    "EpisodeResult",
    "dataset_spaces",
    "env_id",
    "make_env",
    "record_episodes",
    "remote_worker",
]

Suite = Literal["metaworld", "atari"]


@dataclass(frozen=True)
class EpisodeResult:
    """One recorded episode and its plan; ``success`` is None without a success signal."""

    plan: EpisodePlan
    episode: Episode
    episode_return: float
    success: bool | None


def record_episodes(
    env: VectorEnv,
    policy: BehaviourPolicy,
    plans: Sequence[EpisodePlan],
    *,
    max_steps: int | None = None,
    frame: Callable[[np.ndarray], np.ndarray] = lambda o: o,
    autoreset: bool = False,
) -> list[EpisodeResult]:
    """Run every plan to its end on the env's slots; returns the episodes in plan order.

    Timing: at step t the policy sees s_t and picks a_t; the env answers r_t, s_{t+1}.
    An episode ends when the env terminates or truncates it, or after ``max_steps`` actions
    (truncated). ``frame`` maps one env observation to the stored one (Atari: the newest
    frame of the stack). ``autoreset``: the env's observation on a terminal step already
    belongs to a new episode, so the final stored observation is zeros. Slots with no plan
    left are still stepped (action 0) and reset when they end, to stay steppable.
    """
    n = env.num_envs
    if not plans:
        return []
    first = [plans[i].env_seed if i < len(plans) else i for i in range(n)]
    obs = env.reset(first)
    plan_of = np.full(n, -1, dtype=np.int64)  # index into plans of each slot; -1 idle
    bufs: list[dict[str, list[Any]]] = [{} for _ in range(n)]

    def start(slot: int, p: int, first_obs: np.ndarray) -> None:
        plan_of[slot] = p
        policy.reset(slot, plans[p])
        bufs[slot] = {
            "obs": [np.array(frame(first_obs))],  # a copy: ``obs`` rows are overwritten
            "act": [],
            "rew": [],
            "term": [],
            "trunc": [],
            "success": [False],
        }

    started = min(n, len(plans))
    for i in range(started):
        start(i, i, obs[i])
    results: list[EpisodeResult | None] = [None] * len(plans)

    while (plan_of >= 0).any():
        active = plan_of >= 0
        actions = policy.act(obs, active)
        step = env.step(actions)
        obs = step.observations.copy()
        for i in np.flatnonzero(active).tolist():
            b = bufs[i]
            b["act"].append(actions[i])
            b["rew"].append(step.rewards[i])
            if step.success is not None:
                b["success"].append(bool(step.success[i]))
            env_ended = bool(step.terminated[i] or step.truncated[i])
            capped = max_steps is not None and len(b["act"]) >= max_steps
            final = np.array(frame(obs[i]))
            if env_ended and autoreset:
                final = np.zeros_like(final)
            b["obs"].append(final)
            b["term"].append(bool(step.terminated[i]))
            b["trunc"].append(bool(step.truncated[i]) or (capped and not step.terminated[i]))
            if not (env_ended or capped):
                continue
            p = int(plan_of[i])
            results[p] = _finish(plans[p], b, with_success=step.success is not None)
            if started < len(plans):
                obs[i] = env.reset_at(i, plans[started].env_seed)
                start(i, started, obs[i])
                started += 1
            else:
                plan_of[i] = -1
                obs[i] = env.reset_at(i, i)
        for i in np.flatnonzero(~active & (step.terminated | step.truncated)).tolist():
            obs[i] = env.reset_at(i, i)  # idle, but keep it steppable
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def _finish(plan: EpisodePlan, b: dict[str, list[Any]], *, with_success: bool) -> EpisodeResult:
    rewards = np.asarray(b["rew"], dtype=np.float64)
    infos = {}
    success = None
    if with_success:
        flags = np.asarray(b["success"], dtype=bool).reshape(-1, 1)  # (T+1, 1)
        infos["success"] = flags
        success = bool(flags.any())
    episode = Episode(
        observations=np.stack(b["obs"]),  # (T+1, *obs)
        actions=np.stack(b["act"]),  # (T,) or (T, A)
        rewards=rewards.astype(np.float32),
        terminations=np.asarray(b["term"], dtype=bool),
        truncations=np.asarray(b["trunc"], dtype=bool),
        infos=infos,
    )
    return EpisodeResult(plan, episode, float(rewards.sum()), success)


# --- suites: envs and the stored format -----------------------------------------------------


def make_env(suite: Suite, task: str, num_envs: int, *, seed: int) -> VectorEnv:
    """``num_envs`` copies of ``task``. Meta-World: MT1 with goals from ``seed``."""
    if suite == "metaworld":
        from dtmem.envs.metaworld import make_metaworld_env

        return make_metaworld_env(task, num_envs, seed=seed)
    from dtmem.envs.atari import make_atari_env

    return make_atari_env(task, num_envs, num_threads=1)


def env_id(suite: Suite, task: str) -> str:
    """The id recorded in the dataset: ``Meta-World/reach-v3`` or ``ALE/Breakout-v5``."""
    return f"Meta-World/{task}" if suite == "metaworld" else f"ALE/{task}-v5"


def dataset_spaces(suite: Suite) -> tuple[gym.spaces.Box, gym.spaces.Space[Any]]:
    """(observation space, action space) of the stored data."""
    import gymnasium as gym

    if suite == "metaworld":
        from dtmem.envs.metaworld import ACTION_DIM, OBSERVATION_DIM

        obs = gym.spaces.Box(-np.inf, np.inf, (OBSERVATION_DIM,), np.float32)
        return obs, gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
    from dtmem.envs.atari import NUM_FULL_ACTIONS

    frames = gym.spaces.Box(0, 255, (84, 84), np.uint8)
    return frames, gym.spaces.Discrete(NUM_FULL_ACTIONS)


def _newest_frame(stack: np.ndarray) -> np.ndarray:
    return stack[-1]  # (4, 84, 84) -> (84, 84)


# --- the worker and its actor ------------------------------------------------------------------


class CollectWorker:
    """Owns ``envs_per_actor`` envs and a policy per task (the last two tasks are kept, so a
    worker moving along the task list builds each task's envs once) and records plans."""

    def __init__(
        self,
        suite: Suite,
        policy: PolicyConfig,
        *,
        envs_per_actor: int,
        max_steps: int | None,
        env_seed: int,
        torch_threads: int = 1,
    ) -> None:
        self.suite = suite
        self.policy_cfg = policy
        self.envs_per_actor = envs_per_actor
        self.max_steps = max_steps
        self.env_seed = env_seed
        if policy.kind in ("rllib", "epsilon_greedy"):
            import torch

            torch.set_num_threads(max(1, torch_threads))
        self._cache: OrderedDict[str, tuple[VectorEnv, BehaviourPolicy]] = OrderedDict()

    def _get(self, task: str) -> tuple[VectorEnv, BehaviourPolicy]:
        if task not in self._cache:
            env = make_env(self.suite, task, self.envs_per_actor, seed=self.env_seed)
            policy = make_policy(self.policy_cfg, env.spec, self.envs_per_actor, task)
            self._cache[task] = (env, policy)
            while len(self._cache) > 2:
                _, (old, _) = self._cache.popitem(last=False)
                old.close()
        self._cache.move_to_end(task)
        return self._cache[task]

    def run(self, task: str, plans: Sequence[EpisodePlan]) -> list[EpisodeResult]:
        env, policy = self._get(task)
        atari = self.suite == "atari"
        return record_episodes(
            env,
            policy,
            plans,
            max_steps=self.max_steps,
            frame=_newest_frame if atari else (lambda o: o),
            autoreset=atari,
        )

    def close(self) -> None:
        for env, _ in self._cache.values():
            env.close()
        self._cache.clear()


def remote_worker(num_cpus: float) -> Any:
    """``CollectWorker`` as a Ray actor class reserving ``num_cpus``."""
    import ray

    return ray.remote(num_cpus=num_cpus)(CollectWorker)
