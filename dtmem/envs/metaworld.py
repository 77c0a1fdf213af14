"""Meta-World 3.1 evaluation envs, scripted experts and the ML45 task split.

Each task is built as MT1 (``gym.make("Meta-World/MT1", env_name=task, seed=seed)``): the
goal is part of the 39-dim observation, episodes are truncated at 500 steps, and every reset
draws one of the task's 50 goals. The first build of a (task, seed) caches its goals on disk,
so later builds, in any process, skip the 0.65 s of sampling them (dtmem.envs.goal_cache).
Building the ML45 benchmark takes 60-80 s, so nothing here builds it; the task names below
are checked against ``metaworld.env_dict.ML45_V3`` in the tests. Nothing here ever renders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dtmem.envs import EnvSpec, VectorStep

if TYPE_CHECKING:
    import gymnasium as gym

__all__ = [
    "ACTION_DIM",
    "EVAL_EPISODES",
    "ML45_TEST_TASKS",
    "ML45_TRAIN_TASKS",
    "OBSERVATION_DIM",
    "MetaWorldVector",
    "UnknownTaskError",
    "all_tasks",
    "check_task",
    "expert_policy",
    "make_metaworld_env",
]

# ML45's split, in metaworld's order (metaworld.env_dict.ML45_V3).
ML45_TRAIN_TASKS: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "button-press-topdown-v3", "button-press-topdown-wall-v3",
    "button-press-v3", "button-press-wall-v3", "coffee-button-v3", "coffee-pull-v3",
    "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-open-v3",
    "drawer-close-v3", "drawer-open-v3", "faucet-open-v3", "faucet-close-v3", "hammer-v3",
    "handle-press-side-v3", "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3",
    "lever-pull-v3", "pick-place-wall-v3", "pick-out-of-hole-v3", "push-back-v3",
    "pick-place-v3", "plate-slide-v3", "plate-slide-side-v3", "plate-slide-back-v3",
    "plate-slide-back-side-v3", "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3",
    "stick-push-v3", "stick-pull-v3", "push-wall-v3", "push-v3", "reach-wall-v3", "reach-v3",
    "shelf-place-v3", "sweep-into-v3", "sweep-v3", "window-open-v3", "window-close-v3",
)  # fmt: skip
ML45_TEST_TASKS: tuple[str, ...] = (
    "bin-picking-v3", "box-close-v3", "hand-insert-v3", "door-lock-v3", "door-unlock-v3",
)  # fmt: skip
OBSERVATION_DIM, ACTION_DIM = 39, 4
EVAL_EPISODES = 20  # success rate over 20 episodes per task (spec section 4)


class UnknownTaskError(ValueError):
    """A task name that is not a Meta-World v3 environment."""


def all_tasks() -> tuple[str, ...]:
    """Every Meta-World v3 task name (imports metaworld)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return tuple(ALL_V3_ENVIRONMENTS)


def check_task(task: str) -> str:
    """``task`` if it is a Meta-World v3 task, else UnknownTaskError listing the valid ones."""
    if task in ML45_TRAIN_TASKS or task in ML45_TEST_TASKS:
        return task
    valid = all_tasks()
    if task not in valid:
        raise UnknownTaskError(f"unknown Meta-World task {task!r}; valid tasks: {', '.join(valid)}")
    return task


def expert_policy(task: str) -> Callable[[np.ndarray], np.ndarray]:
    """Metaworld's scripted expert for ``task``: obs (39,) -> action (4,) float32 in [-1, 1]."""
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[check_task(task)]()  # type: ignore[abstract]

    def act(obs: np.ndarray) -> np.ndarray:
        return np.clip(policy.get_action(obs), -1.0, 1.0).astype(np.float32)

    return act


def _build_mt1(task: str, seed: int) -> gym.Env[Any, Any]:
    """The env ``gym.make("Meta-World/MT1", env_name=task, seed=seed)`` makes (same 50 goals,
    same wrappers; ``env.spec`` is left unset), with the goals from the goal cache when a
    build of ``task`` and ``seed`` has cached them (dtmem.envs.goal_cache)."""
    import gymnasium as gym
    import metaworld
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    from dtmem.envs import goal_cache

    tasks = goal_cache.load_goals(task, seed)
    if tasks is None:
        tasks = metaworld.MT1(task, seed=seed).train_tasks  # samples the 50 goals
        goal_cache.save_goals(task, seed, tasks)
    # What make_mt_envs (gym.make's entry point) does with MT1's tasks, then gym.make's wrapper.
    env = metaworld._init_each_env(
        env_cls=ALL_V3_ENVIRONMENTS[task],
        tasks=tasks,
        seed=seed,
        num_tasks=1,
    )
    return gym.wrappers.OrderEnforcing(env)


def _make_copies(task: str, num_envs: int, seed: int) -> list[gym.Env[Any, Any]]:
    """``num_envs`` MT1 envs of ``task`` sharing one set of 50 goals (from ``seed``).

    The first is built as ``gym.make`` would (``_build_mt1``); the others reuse its goal
    list through metaworld's own env factory, because building the goals again costs 0.5 s
    per copy.
    """
    import metaworld

    first = _build_mt1(task, seed)
    tasks = first.get_wrapper_attr("tasks")
    env_cls = type(first.unwrapped)
    rest = [
        metaworld._init_each_env(env_cls=env_cls, tasks=tasks, seed=seed)  # type: ignore[arg-type]
        for _ in range(num_envs - 1)
    ]
    return [first, *rest]


def _seeded_reset(env: gym.Env[Any, Any], seed: int | None) -> np.ndarray:
    """Reset to a goal and start state that depend on ``seed`` alone (None: the env's own
    generator decides).

    Metaworld's RandomTaskSelectWrapper draws the goal from the env's generator *before*
    passing the seed down, so ``env.reset(seed=s)`` alone depends on the env's history;
    seeding the generator first makes the goal a function of ``s``.
    """
    if seed is not None:
        env.np_random = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    return np.asarray(obs, dtype=np.float32)


class MetaWorldVector:
    """Meta-World envs stepped in turn, as a ``VectorEnv``: slot i runs task ``tasks[i]``
    (copies of one task share its 50 goals, drawn from ``seed``). Several tasks side by side
    let one batched policy call act for all of them (they share the observation and action
    spaces); each slot's episodes depend only on its task, ``seed`` and its reset seed.

    Observations are float32 (39,), actions float32 (4,) in [-1, 1], episodes 500 steps.
    """

    def __init__(self, tasks: Sequence[str], *, seed: int = 0) -> None:
        if len(tasks) < 1:
            raise ValueError("a Meta-World vector env needs at least one task slot")
        copies = {
            t: _make_copies(check_task(t), tasks.count(t), seed) for t in dict.fromkeys(tasks)
        }
        self._envs = [copies[t].pop(0) for t in tasks]  # slot order; each copy used once
        names = tuple(dict.fromkeys(tasks))
        self._spec = EnvSpec(
            name="+".join(names),
            observation_shape=(OBSERVATION_DIM,),
            action_kind="continuous",
            num_actions=0,
            act_dim=ACTION_DIM,
            max_episode_steps=int(self._envs[0].unwrapped.max_path_length),  # type: ignore[attr-defined]
        )

    @property
    def spec(self) -> EnvSpec:
        return self._spec

    @property
    def num_envs(self) -> int:
        return len(self._envs)

    def reset(self, seeds: list[int]) -> np.ndarray:
        """(N, 39) float32; env i reset with ``seeds[i]`` (which picks its goal)."""
        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        return np.stack([_seeded_reset(env, s) for env, s in zip(self._envs, seeds, strict=True)])

    def reset_at(self, index: int, seed: int | None) -> np.ndarray:
        return _seeded_reset(self._envs[index], seed)

    def step(self, actions: np.ndarray) -> VectorStep:
        """actions (N, 4) -> the step of every env; ``success`` is ``info["success"]``."""
        actions = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, ACTION_DIM)
        obs, rew, term, trunc, succ = [], [], [], [], []
        for env, a in zip(self._envs, actions, strict=True):
            o, r, te, tr, info = env.step(a)
            obs.append(o)
            rew.append(r)
            term.append(te)
            trunc.append(tr)
            succ.append(bool(info["success"]))
        return VectorStep(
            observations=np.asarray(obs, dtype=np.float32),
            rewards=np.asarray(rew, dtype=np.float64),
            terminated=np.asarray(term, dtype=bool),
            truncated=np.asarray(trunc, dtype=bool),
            success=np.asarray(succ, dtype=bool),
        )

    def head(self, num_envs: int) -> MetaWorldVector:
        """A view of the first ``num_envs`` copies (shared, not closed by the view's user):
        a smaller chunk of episodes runs without building envs again."""
        if not 1 <= num_envs <= self.num_envs:
            raise ValueError(f"head({num_envs}) of {self.num_envs} envs")
        view = object.__new__(MetaWorldVector)
        view._envs, view._spec = self._envs[:num_envs], self._spec
        return view

    def close(self) -> None:
        for env in self._envs:
            env.close()


def make_metaworld_env(task: str, num_envs: int = 1, *, seed: int = 0) -> MetaWorldVector:
    """``num_envs`` copies of ``task`` (MT1, goals drawn from ``seed``) for batched evaluation."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    return MetaWorldVector([task] * num_envs, seed=seed)
