"""Behaviour policies for offline data collection, and the seeds that make it reproducible.

A behaviour policy acts in ``N`` env slots at once (a vector env). Every episode carries its
own seeds, derived from (collection seed, task, episode index) alone (``derive_seed``), and
every random number a policy draws for an episode comes from that episode's own generator,
a fixed amount per step. So an episode's data is a function of its plan, not of which actor,
env slot or neighbouring episodes it ran with: the dataset does not depend on the number of
actors or on scheduling.

Policies:

    RandomPolicy     uniform random actions (Meta-World: U[-1, 1]^4; Atari: 18 actions)
    ExpertPolicy     Meta-World's scripted expert (``metaworld.policies``, ~98% success) plus
                     Gaussian action noise, clipped to [-1, 1], and an epsilon-random mixture
    CheckpointPolicy (``dtmem.collect.rllib_agent``) an RLlib agent's checkpoints, greedy or
                     sampled, with the epsilon mixture

Noise and mixture, per step, for each active slot with its episode generator ``g``:

    u ~ U[0, 1),  random ~ uniform action,  z ~ N(0, I) (continuous),  v ~ U[0, 1)
    a = clip(a_policy + noise_std * z, -1, 1)          (continuous only)
    a = random if u < epsilon else a
    (v samples a categorical action distribution where the policy has one)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dtmem.envs import EnvSpec

if TYPE_CHECKING:
    from dtmem.config.collect import PolicyConfig

__all__ = [
    "BehaviourPolicy",
    "EpisodePlan",
    "ExpertPolicy",
    "RandomPolicy",
    "StepDraws",
    "categorical_sample",
    "derive_seed",
    "draw_step",
    "epsilon_mix",
    "gaussian_noise",
    "make_policy",
    "num_variants",
    "plan_episodes",
    "variant_of",
]


# --- seeds and plans ----------------------------------------------------------------------


def derive_seed(seed: int, task: str, index: int, stream: str) -> int:
    """A 31-bit seed that depends on (seed, task, index, stream) only.

    sha256 rather than ``hash()`` (salted per process) or arithmetic like ``seed + index``
    (episodes of different tasks or streams would share seeds). 31 bits: ALE takes int32.
    """
    digest = hashlib.sha256(f"{seed}\0{task}\0{index}\0{stream}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFF_FFFF


def variant_of(index: int, total: int, variants: int) -> int:
    """Which member of a policy mixture plays episode ``index`` of ``total``: equal
    consecutive blocks (episodes 0 .. total/variants-1 the first, ...); indices past
    ``total`` (extra attempts) belong to the last."""
    return min(index * variants // total, variants - 1)


@dataclass(frozen=True)
class EpisodePlan:
    """Everything that decides one episode: the task, its index in the task's episode
    sequence, the env seed (goal or no-ops and start state), the policy seed (noise,
    epsilon, sampling) and the variant (which checkpoint of a mixture acts)."""

    task: str
    index: int
    env_seed: int
    policy_seed: int
    variant: int = 0


def plan_episodes(
    seed: int, task: str, indices: Sequence[int], *, total: int, variants: int = 1
) -> list[EpisodePlan]:
    """The plans of episodes ``indices`` of ``task`` (``total`` planned episodes)."""
    return [
        EpisodePlan(
            task=task,
            index=i,
            env_seed=derive_seed(seed, task, i, "env"),
            policy_seed=derive_seed(seed, task, i, "policy"),
            variant=variant_of(i, total, variants),
        )
        for i in indices
    ]


# --- pure transforms ----------------------------------------------------------------------


def gaussian_noise(actions: np.ndarray, normals: np.ndarray, std: float) -> np.ndarray:
    """clip(actions + std * normals, -1, 1); actions, normals (B, A) -> (B, A) float32."""
    return np.clip(actions + std * normals, -1.0, 1.0).astype(np.float32)


def epsilon_mix(
    actions: np.ndarray, random_actions: np.ndarray, uniforms: np.ndarray, epsilon: float
) -> np.ndarray:
    """Row b is ``random_actions[b]`` where ``uniforms[b] < epsilon``, else ``actions[b]``.

    actions, random_actions (B,) or (B, A); uniforms (B,) in [0, 1) -> like actions.
    """
    take = uniforms < epsilon  # (B,)
    take = take.reshape(-1, *([1] * (actions.ndim - 1)))  # (B, 1...) to broadcast over A
    return np.where(take, random_actions, actions).astype(actions.dtype)


def categorical_sample(logits: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One action per row from softmax(logits), by inverse CDF with the given uniforms.

    logits (B, A), uniforms (B,) in [0, 1) -> (B,) int64. Computed in float64.
    """
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    cdf = np.cumsum(p, axis=-1)  # (B, A)
    cdf /= cdf[:, -1:]
    picks = (cdf <= uniforms[:, None]).sum(axis=-1)  # first index whose cdf exceeds u
    return np.minimum(picks, logits.shape[-1] - 1).astype(np.int64)


# --- per-episode random streams -------------------------------------------------------------


@dataclass(frozen=True)
class StepDraws:
    """One step's random numbers for B active slots, each row from its episode's generator.

    uniforms (B,) for epsilon; random_actions (B,) int64 or (B, A) float32; normals (B, A)
    float32 (zeros for discrete actions); samples (B,) uniforms for categorical sampling.
    """

    uniforms: np.ndarray
    random_actions: np.ndarray
    normals: np.ndarray
    samples: np.ndarray


def draw_step(generators: Sequence[np.random.Generator], spec: EnvSpec) -> StepDraws:
    """Draw the same amount from each generator (so streams never depend on what is used)."""
    if spec.action_kind == "discrete":
        u = np.stack([g.random(3) for g in generators])  # (B, 3): epsilon, sample, action
        random_actions = np.minimum(u[:, 2] * spec.num_actions, spec.num_actions - 1)
        normals = np.zeros((len(generators), 1), dtype=np.float32)
        return StepDraws(u[:, 0], random_actions.astype(np.int64), normals, u[:, 1])
    A = spec.act_dim
    u = np.stack([g.random(2 + A) for g in generators])  # (B, 2 + A)
    normals = np.stack([g.standard_normal(A) for g in generators]).astype(np.float32)  # (B, A)
    random_actions = (2.0 * u[:, 2:] - 1.0).astype(np.float32)  # (B, A) in [-1, 1)
    return StepDraws(u[:, 0], random_actions, normals, u[:, 1])


class BehaviourPolicy(Protocol):
    """What the episode recorder drives: ``num_envs`` slots, one episode per slot at a time."""

    def reset(self, slot: int, plan: EpisodePlan) -> None:
        """Slot ``slot`` starts the episode ``plan`` (seeds its random stream)."""
        ...

    def act(self, observations: np.ndarray, active: np.ndarray) -> np.ndarray:
        """observations (N, *obs_shape), active (N,) bool -> actions (N,) int64 or (N, A)
        float32; rows of inactive slots are zeros."""
        ...

    def observe(self, rewards: np.ndarray) -> None:
        """The rewards (N,) of the last step (behaviour policies here ignore them)."""
        ...


class SlotPolicy:
    """Base: one generator per slot, reseeded from each episode's plan."""

    def __init__(self, spec: EnvSpec, num_envs: int) -> None:
        self.spec = spec
        self._generators: list[np.random.Generator | None] = [None] * num_envs
        self._variants = np.zeros(num_envs, dtype=np.int64)

    def reset(self, slot: int, plan: EpisodePlan) -> None:
        self._generators[slot] = np.random.default_rng(plan.policy_seed)
        self._variants[slot] = plan.variant

    def observe(self, rewards: np.ndarray) -> None:
        pass  # the episode loop's Policy protocol; these policies do not condition on rewards

    def _draws(self, rows: np.ndarray) -> StepDraws:
        generators = [self._generators[r] for r in rows]
        if any(g is None for g in generators):
            raise RuntimeError("act() on a slot that was never reset")
        return draw_step([g for g in generators if g is not None], self.spec)

    def _full(self, rows: np.ndarray, chosen: np.ndarray, num_envs: int) -> np.ndarray:
        """Scatter the active rows' actions into an (N, ...) array of zeros."""
        out = np.zeros((num_envs, *chosen.shape[1:]), dtype=chosen.dtype)
        out[rows] = chosen
        return out


class RandomPolicy(SlotPolicy):
    """Uniform random actions: U[-1, 1]^A or one of ``num_actions``."""

    def act(self, observations: np.ndarray, active: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(active)
        draws = self._draws(rows)
        return self._full(rows, draws.random_actions, len(active))


class ExpertPolicy(SlotPolicy):
    """A per-observation expert (Meta-World's scripted policy) with Gaussian noise and an
    epsilon-random mixture. ``expert`` maps one observation (obs_dim,) to an action (A,)."""

    def __init__(
        self,
        expert: Callable[[np.ndarray], np.ndarray],
        spec: EnvSpec,
        num_envs: int,
        *,
        noise_std: float = 0.0,
        epsilon: float = 0.0,
    ) -> None:
        if spec.action_kind != "continuous":
            raise ValueError(f"{spec.name}: the expert policy needs continuous actions")
        super().__init__(spec, num_envs)
        self.expert = expert
        self.noise_std = noise_std
        self.epsilon = epsilon

    def act(self, observations: np.ndarray, active: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(active)
        draws = self._draws(rows)
        base = np.stack([np.asarray(self.expert(observations[r]), np.float32) for r in rows])
        noisy = gaussian_noise(base, draws.normals, self.noise_std)  # (B, A)
        chosen = epsilon_mix(noisy, draws.random_actions, draws.uniforms, self.epsilon)
        return self._full(rows, chosen, len(active))


# --- building a policy from the config --------------------------------------------------------


def num_variants(cfg: PolicyConfig) -> int:
    """How many policies a mixture holds (RLlib: one per checkpoint)."""
    if cfg.rllib is not None and cfg.kind in ("epsilon_greedy", "rllib"):
        return len(cfg.rllib.checkpoint_iterations)
    return 1


def make_policy(cfg: PolicyConfig, spec: EnvSpec, num_envs: int, task: str) -> BehaviourPolicy:
    """The behaviour policy of ``cfg`` for ``task``, acting in ``num_envs`` slots.

    Extension point: a policy acting from a checkpoint of the project's own model would be
    another ``kind`` here, an adapter from ``dtmem.dt_policy.DTPolicy`` (reset(index, target),
    act, observe(rewards)) to this protocol (the episode loop already passes the rewards).
    Not implemented yet.
    """
    if cfg.kind == "random":
        return RandomPolicy(spec, num_envs)
    if cfg.kind == "expert":
        from dtmem.envs.metaworld import expert_policy

        return ExpertPolicy(
            expert_policy(task), spec, num_envs, noise_std=cfg.noise_std, epsilon=cfg.epsilon
        )
    from dtmem.collect.rllib_agent import CheckpointPolicy, checkpoint_paths

    assert cfg.rllib is not None  # the config guarantees it for these kinds
    return CheckpointPolicy(
        checkpoint_paths(cfg.rllib, task),
        spec,
        num_envs,
        greedy=cfg.kind == "epsilon_greedy",
        epsilon=cfg.epsilon,
    )
