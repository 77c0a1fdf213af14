"""Evaluation environments: Atari (``dtmem.envs.atari``) and Meta-World (``dtmem.envs.metaworld``).

This module stays light (no ale_py, metaworld or gymnasium import) so that the CLI can name
games and tasks without loading an emulator or MuJoCo. Both env modules build a vector of
``num_envs`` copies of one game or task with the small interface the rollout needs,
``VectorEnv``: explicit per-env seeded resets (no hidden auto-reset), one batched step.
``make_env`` builds either suite's vector env (the one place that picks the module), and
``env_spec`` / ``env_id`` describe one without building it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, get_args

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "SUITES",
    "EnvCache",
    "EnvSpec",
    "Suite",
    "VectorEnv",
    "VectorStep",
    "env_id",
    "env_spec",
    "make_env",
    "make_mixed_env",
    "step_randomly",
]

Suite = Literal["atari", "metaworld"]
SUITES: tuple[str, ...] = get_args(Suite)


@dataclass(frozen=True)
class EnvSpec:
    """What a policy must match to act in an env.

    name:              the game (``"Pong"``) or task (``"reach-v3"``)
    observation_shape: one env's observation, e.g. (4, 84, 84) uint8 or (39,) float32
    action_kind:       "discrete" (index into ``num_actions``) or "continuous" (``act_dim``)
    num_actions:       discrete actions (0 when continuous)
    act_dim:           continuous action size (0 when discrete)
    max_episode_steps: the env's own time limit in agent steps (None: the game decides)
    """

    name: str
    observation_shape: tuple[int, ...]
    action_kind: Literal["discrete", "continuous"]
    num_actions: int
    act_dim: int
    max_episode_steps: int | None


@dataclass(frozen=True)
class VectorStep:
    """One step of all ``N`` envs.

    observations (N, *observation_shape)  the observation after the step
    rewards      (N,) float64             raw reward (Atari: the raw score change)
    terminated   (N,) bool                the episode ended (Atari: game over)
    truncated    (N,) bool                the env's own time limit ended the episode
    success      (N,) bool or None        Meta-World ``info["success"]`` at this step; None
                                          for envs without a success signal (Atari)
    """

    observations: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray | None


class VectorEnv(Protocol):
    """``num_envs`` copies of one game or task, stepped together.

    After an episode ends, the caller resets that env with ``reset_at`` before stepping it
    again; what a finished, un-reset env returns is undefined.
    """

    @property
    def spec(self) -> EnvSpec: ...

    @property
    def num_envs(self) -> int: ...

    def reset(self, seeds: list[int]) -> np.ndarray:
        """Reset every env, env i with ``seeds[i]``; (N, *observation_shape)."""
        ...

    def reset_at(self, index: int, seed: int | None) -> np.ndarray:
        """Reset env ``index`` alone with ``seed``; its first observation. ``seed=None``
        starts wherever the env's generator leads (cheaper: ALE reloads the ROM to seed)."""
        ...

    def step(self, actions: np.ndarray) -> VectorStep:
        """actions (N,) int64 or (N, act_dim) float32 -> the step of every env."""
        ...

    def close(self) -> None: ...


def step_randomly(env: VectorEnv, steps: int, seed: int = 0) -> int:
    """Steps every env of ``env`` ``steps`` times with uniformly random actions, resetting
    (seeded) any that finish: the raw env's own speed, with no policy. Returns env steps."""
    import numpy as np

    rng = np.random.default_rng(seed)
    env.reset([int(s) for s in rng.integers(1 << 30, size=env.num_envs)])
    spec, n = env.spec, env.num_envs
    for _ in range(steps):
        if spec.action_kind == "discrete":
            actions = rng.integers(0, spec.num_actions, n)
        else:
            actions = rng.uniform(-1, 1, (n, spec.act_dim)).astype(np.float32)
        step = env.step(actions)
        for i in np.flatnonzero(step.terminated | step.truncated):
            env.reset_at(int(i), int(rng.integers(1 << 30)))
    return steps * n


def make_env(suite: Suite, task: str, num_envs: int, *, seed: int = 0) -> VectorEnv:
    """``num_envs`` copies of a game or task. Atari: one ALE thread (an actor owns one CPU);
    Meta-World: MT1 with the task's goals drawn from ``seed``."""
    if suite == "atari":
        from dtmem.envs.atari import make_atari_env

        return make_atari_env(task, num_envs, num_threads=1)
    from dtmem.envs.metaworld import make_metaworld_env

    return make_metaworld_env(task, num_envs, seed=seed)


def make_mixed_env(suite: Suite, tasks: tuple[str, ...], *, seed: int = 0) -> VectorEnv:
    """One env per slot, slot i running ``tasks[i]``: Meta-World only (its tasks share one
    observation and action space; Atari games differ in their action sets)."""
    if suite != "metaworld":
        raise ValueError(f"envs of several tasks side by side are Meta-World only, not {suite}")
    from dtmem.envs.metaworld import MetaWorldVector

    return MetaWorldVector(tasks, seed=seed)


class EnvCache:
    """The vector envs of the last ``keep`` tasks a worker ran, so that a worker moving along
    a task list builds each task's envs once (Meta-World's take ~0.1 s per copy). Fewer envs
    than held are served by the first ones where the env allows it (Meta-World's ``head``);
    otherwise, or for more, the task's envs are built again. ``task`` may be a tuple, one
    task per slot (``make_mixed_env``), kept under that exact tuple."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self.builds = 0  # envs built so far (tests check that warm workers reuse theirs)
        self._envs: dict[tuple[str, str | tuple[str, ...], int], VectorEnv] = {}  # oldest first

    def get(
        self, suite: Suite, task: str | tuple[str, ...], num_envs: int, *, seed: int = 0
    ) -> VectorEnv:
        if isinstance(task, tuple) and len(task) != num_envs:
            raise ValueError(f"{len(task)} slot tasks for {num_envs} envs")
        key = (suite, task, seed)
        env = self._envs.pop(key, None)
        if env is not None and env.num_envs != num_envs:
            head = getattr(env, "head", None)
            if head is not None and num_envs < env.num_envs:
                self._envs[key] = env
                return head(num_envs)
            env.close()
            env = None
        if env is None:
            if isinstance(task, tuple):
                env = make_mixed_env(suite, task, seed=seed)
            else:
                env = make_env(suite, task, num_envs, seed=seed)
            self.builds += 1
        self._envs[key] = env  # now the newest
        while len(self._envs) > self.keep:
            oldest = next(iter(self._envs))
            self._envs.pop(oldest).close()
        return env

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def env_spec(suite: Suite, task: str) -> EnvSpec:
    """The ``EnvSpec`` that ``make_env(suite, task, n)`` will have, without building it
    (Meta-World's env takes ~0.5 s to build). Tested against the real envs."""
    if suite == "atari":
        from dtmem.envs.atari import NUM_FULL_ACTIONS, OBSERVATION_SHAPE

        return EnvSpec(task, OBSERVATION_SHAPE, "discrete", NUM_FULL_ACTIONS, 0, None)
    from dtmem.envs.metaworld import ACTION_DIM, OBSERVATION_DIM

    return EnvSpec(task, (OBSERVATION_DIM,), "continuous", 0, ACTION_DIM, 500)


def env_id(suite: Suite, task: str) -> str:
    """The env id recorded in a dataset: ``Meta-World/reach-v3`` or ``ALE/Breakout-v5``."""
    return f"Meta-World/{task}" if suite == "metaworld" else f"ALE/{task}-v5"
