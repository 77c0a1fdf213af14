"""Evaluation environments: Atari (``dtmem.envs.atari``) and Meta-World (``dtmem.envs.metaworld``).

This module stays light (no ale_py, metaworld or gymnasium import) so that the CLI can name
games and tasks without loading an emulator or MuJoCo. Both env modules build a vector of
``num_envs`` copies of one game or task with the small interface the rollout needs,
``VectorEnv``: explicit per-env seeded resets (no hidden auto-reset), one batched step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import numpy as np

__all__ = ["EnvSpec", "VectorEnv", "VectorStep"]


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
