"""The episode recorder and the worker that owns envs and policies. No Ray.

``record_episodes`` runs the one episode loop (``dtmem.rollout.run_episodes``, the same as
evaluation's) with a behaviour policy and an ``EpisodeRecorder``: episodes started in plan
order on whichever slot is free, each recorded whole as an ``Episode``. ``CollectWorker``
keeps the envs and policies of its last tasks and runs ``CollectChunk``s, returning each
chunk's episodes with where its time went (``ChunkResult``); the driver runs it on the pool
shared with evaluation (``dtmem.actor_pool``).

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

import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dtmem.collect.policies import BehaviourPolicy, EpisodePlan, make_policy
from dtmem.data.episodes import Episode
from dtmem.envs import EnvCache, EnvSpec, Suite, VectorEnv, VectorStep
from dtmem.rollout import EpisodeStart, EpisodeStats, run_episodes

if TYPE_CHECKING:
    import gymnasium as gym

    from dtmem.config.collect import PolicyConfig

__all__ = [
    "ChunkResult",
    "ChunkTiming",
    "CollectChunk",
    "CollectWorker",
    "EpisodeRecorder",
    "EpisodeResult",
    "dataset_spaces",
    "record_episodes",
]


@dataclass(frozen=True)
class EpisodeResult:
    """One recorded episode and its plan; ``success`` is None without a success signal."""

    plan: EpisodePlan
    episode: Episode
    episode_return: float
    success: bool | None


class EpisodeRecorder:
    """The loop's ``Recorder`` for collection: every transition of every episode, kept
    whole and returned as ``EpisodeResult``s in plan order (``results``).

    ``frame`` maps one env observation to the stored one (Atari: the newest frame of the
    stack). ``autoreset``: the env's observation on a terminal step already belongs to a new
    episode, so the final stored observation is zeros.
    """

    def __init__(
        self,
        plans: Sequence[EpisodePlan],
        num_envs: int,
        *,
        frame: Callable[[np.ndarray], np.ndarray] = lambda o: o,
        autoreset: bool = False,
    ) -> None:
        self.plans = plans
        self.frame = frame
        self.autoreset = autoreset
        self.results: list[EpisodeResult | None] = [None] * len(plans)
        self._episode = [-1] * num_envs
        self._bufs: list[dict[str, list[Any]]] = [{} for _ in range(num_envs)]

    def start(self, slot: int, episode: int, observation: np.ndarray) -> None:
        self._episode[slot] = episode
        self._bufs[slot] = {
            "obs": [np.array(self.frame(observation))],  # a copy: the loop reuses its rows
            "act": [],
            "rew": [],
            "term": [],
            "trunc": [],
            "success": [False],
        }

    def record(
        self, slots: np.ndarray, actions: np.ndarray, step: VectorStep, truncated: np.ndarray
    ) -> None:
        for i in slots.tolist():
            b = self._bufs[i]
            b["act"].append(actions[i])
            b["rew"].append(step.rewards[i])
            if step.success is not None:
                b["success"].append(bool(step.success[i]))
            final = np.array(self.frame(step.observations[i]))
            if self.autoreset and (step.terminated[i] or step.truncated[i]):
                final = np.zeros_like(final)
            b["obs"].append(final)
            b["term"].append(bool(step.terminated[i]))
            b["trunc"].append(bool(truncated[i]))

    def finish(self, slot: int, stats: EpisodeStats) -> None:
        e = self._episode[slot]
        self.results[e] = _finish(self.plans[e], self._bufs[slot], stats.success)


def record_episodes(
    env: VectorEnv,
    policy: BehaviourPolicy,
    plans: Sequence[EpisodePlan],
    *,
    max_steps: int | None = None,
    frame: Callable[[np.ndarray], np.ndarray] = lambda o: o,
    autoreset: bool = False,
) -> list[EpisodeResult]:
    """Run every plan to its end with the one episode loop (``dtmem.rollout.run_episodes``)
    and record it whole; returns the episodes in plan order.

    Episode ``plan`` resets its env with ``plan.env_seed`` and the policy with the plan. An
    episode ends when the env terminates or truncates it, or after ``max_steps`` actions
    (truncated). ``frame`` and ``autoreset``: see ``EpisodeRecorder``.
    """
    recorder = EpisodeRecorder(plans, env.num_envs, frame=frame, autoreset=autoreset)
    starts = [EpisodeStart(p.env_seed, p) for p in plans]
    run_episodes(policy, env, starts, max_steps=max_steps, recorder=recorder)
    assert all(r is not None for r in recorder.results)
    return [r for r in recorder.results if r is not None]


def _finish(plan: EpisodePlan, b: dict[str, list[Any]], success: bool | None) -> EpisodeResult:
    rewards = np.asarray(b["rew"], dtype=np.float64)
    infos = {}
    if success is not None:
        infos["success"] = np.asarray(b["success"], dtype=bool).reshape(-1, 1)  # (T+1, 1)
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


@dataclass(frozen=True)
class CollectChunk:
    """A work unit: consecutive episodes of one task, by their plans."""

    task: str
    plans: tuple[EpisodePlan, ...]

    @property
    def affinity(self) -> str:
        return self.task


@dataclass(frozen=True)
class ChunkTiming:
    """Where a chunk's time went in its worker. Stamps are ``time.time()`` so that the
    driver can set them beside its own clock (same machine; across nodes, up to their clock
    skew); durations are wall seconds."""

    worker: str  # which worker ran it (unique per worker process)
    ready_at: float  # when the worker had started: process, imports, ``__init__``
    began: float  # when it began this chunk
    env_seconds: float  # getting the task's envs and policy (building them if not held)
    episodes_seconds: float  # running the episodes
    cpu_seconds: float  # CPU time of the worker's process over the chunk (below the wall
    # seconds when the machine runs more than it has cores)
    built_env: bool  # whether the envs were built for this chunk


@dataclass(frozen=True)
class ChunkResult:
    """A chunk's episodes in plan order, and its timing."""

    episodes: list[EpisodeResult]
    timing: ChunkTiming


class CollectWorker:
    """Records chunks of episodes; the body of a collection actor (``dtmem.actor_pool``).

    Keeps the envs (``EnvCache``) and the policy of the last two tasks, so a worker moving
    along the task list builds each task's envs once; a chunk smaller than
    ``envs_per_actor`` runs on as many envs as it has episodes where the env allows it.
    """

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
        self.envs = EnvCache(keep=2)
        self._policies: OrderedDict[str, BehaviourPolicy] = OrderedDict()
        self.worker_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.ready_at = time.time()

    def _policy(self, task: str, spec: EnvSpec) -> BehaviourPolicy:
        if task not in self._policies:
            self._policies[task] = make_policy(self.policy_cfg, spec, self.envs_per_actor, task)
            while len(self._policies) > 2:
                self._policies.popitem(last=False)
        self._policies.move_to_end(task)
        return self._policies[task]

    def run(self, chunk: CollectChunk) -> ChunkResult:
        began, builds = time.time(), self.envs.builds
        t0, cpu = time.perf_counter(), time.process_time()
        n = max(1, min(self.envs_per_actor, len(chunk.plans)))
        env = self.envs.get(self.suite, chunk.task, n, seed=self.env_seed)
        policy = self._policy(chunk.task, env.spec)
        t1 = time.perf_counter()
        atari = self.suite == "atari"
        episodes = record_episodes(
            env,
            policy,
            chunk.plans,
            max_steps=self.max_steps,
            frame=_newest_frame if atari else (lambda o: o),
            autoreset=atari,
        )
        timing = ChunkTiming(self.worker_id, self.ready_at, began, t1 - t0, time.perf_counter() - t1,
                             time.process_time() - cpu, self.envs.builds > builds)  # fmt: skip
        return ChunkResult(episodes, timing)

    def close(self) -> None:
        self.envs.close()
        self._policies.clear()
