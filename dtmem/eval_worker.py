"""The evaluation worker: builds the model once from a ``ModelPayload`` and runs work units
with the one episode loop, ``run_episodes(DTPolicy(...), env, episodes)`` (the policy acts
for all the unit's envs in one batched model call per step; a ``MixedUnit``'s envs are of
several tasks). No Ray: ``dtmem.actor_pool`` runs it as a Ray actor or in this process.

What is evaluated is a ``Payload``: ``ModelPayload`` (a checkpoint's model) or
``BaselinePayload`` (the nearest-neighbour baseline, ``dtmem.baselines``), each checking
itself against the requested envs and making each unit's policy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from dtmem.data.windows import StateStats
from dtmem.dt_policy import DTPolicy, IncompatibleModelError
from dtmem.envs import EnvCache, EnvSpec, VectorEnv, VectorStep, env_spec
from dtmem.eval_tasks import TaskRequest, Unit, check_requests
from dtmem.malloc import keep_freed_memory
from dtmem.model import DecisionTransformer, ModelSpec
from dtmem.rollout import EpisodeStart, EpisodeStats, Policy, run_episodes

if TYPE_CHECKING:
    from dtmem.baselines import Demonstrations
    from dtmem.config.model import ModelConfig

__all__ = [
    "CRASH_MARKER_ENV",
    "BaselinePayload",
    "EvalWorker",
    "MakePolicy",
    "ModelPayload",
    "Payload",
    "UnitResult",
]

CRASH_MARKER_ENV = "DTMEM_TEST_CRASH_MARKER"  # tests only: see EvalWorker

MakePolicy = Callable[[VectorEnv, int], Policy[Any]]  # (env, seed of the unit) -> a policy


class Payload(Protocol):
    """What is evaluated, as shipped to the workers once: a model or a baseline policy."""

    def check(self, requests: Sequence[TaskRequest]) -> None:
        """Raise (one line) unless it can act in every requested env, before any worker."""
        ...

    def policy_maker(self, *, greedy: bool) -> MakePolicy:
        """Built once in each worker (e.g. the model); makes each unit's policy."""
        ...


@dataclass(frozen=True)
class ModelPayload:
    """Everything an actor needs to build the model: put into Ray's object store once."""

    config_json: str  # ModelConfig as JSON
    spec: ModelSpec  # the built model's spec (checked against the envs before any actor starts)
    state_dict: dict[str, torch.Tensor]  # CPU weights
    state_stats: StateStats | None  # standardise vector observations with these (None: raw)

    @staticmethod
    def of(
        model: DecisionTransformer, config: ModelConfig, state_stats: StateStats | None
    ) -> ModelPayload:
        """The payload of a loaded model (weights copied to the CPU)."""
        weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        return ModelPayload(config.model_dump_json(), model.spec, weights, state_stats)

    def build(self) -> DecisionTransformer:
        """The model, weights loaded exactly, in eval mode on the CPU."""
        from dtmem.config.model import ModelConfig
        from dtmem.model import build_model

        model = build_model(ModelConfig.model_validate_json(self.config_json))
        model.load_state_dict(self.state_dict)
        return model.eval()

    def check(self, requests: Sequence[TaskRequest]) -> None:
        check_requests(self.spec, self.state_stats, requests)

    def policy_maker(self, *, greedy: bool) -> MakePolicy:
        model, stats = self.build(), self.state_stats

        def make(env: VectorEnv, seed: int) -> DTPolicy:
            return DTPolicy(model, env, greedy=greedy, seed=seed, state_stats=stats)

        return make


@dataclass(frozen=True)
class BaselinePayload:
    """The 1-nearest-neighbour baseline (``dtmem.baselines``): demonstrations instead of a
    model; it conditions on nothing, so targets and ``greedy`` do not apply."""

    demos: Demonstrations

    def check(self, requests: Sequence[TaskRequest]) -> None:
        if not requests:
            raise ValueError("nothing to evaluate: no games or tasks")
        for r in requests:
            spec = env_spec(r.suite, r.task)
            width = int(np.prod(spec.observation_shape))
            discrete = self.demos.actions.ndim == 1
            acts = 0 if discrete else int(self.demos.actions.shape[1])
            if (
                width != self.demos.obs_dim
                or discrete != (spec.action_kind == "discrete")
                or (not discrete and acts != spec.act_dim)
            ):
                raise IncompatibleModelError(
                    f"{r.task}: the baseline's demonstrations have {self.demos.obs_dim}-dim "
                    f"states and {'discrete' if discrete else f'{acts}-dim'} actions; the env "
                    f"{spec.observation_shape} observations and {spec.action_kind} actions"
                )

    def policy_maker(self, *, greedy: bool) -> MakePolicy:
        from dtmem.baselines import NearestNeighbourPolicy

        def make(env: VectorEnv, seed: int) -> NearestNeighbourPolicy:
            return NearestNeighbourPolicy(self.demos, env)

        return make


@dataclass(frozen=True)
class UnitResult:
    """A chunk's episodes (``episode`` = index within the task) and how long it took."""

    key: tuple[str, int]
    episodes: tuple[EpisodeStats, ...]
    seconds: float
    pid: int


class EvalWorker:
    """Runs chunks of episodes with one model (or baseline policy); the body of an evaluation
    actor, or of the in-process pool.

    The model is built once (``payload.policy_maker``); the envs of the last two tasks are kept (``EnvCache``), so a
    warm worker moving along the task list builds each task's envs once. Torch runs on
    ``torch_threads`` threads (1 in an actor: several processes on few cores, each with many
    intra-op threads, run ~100x slower); ``close`` gives the process its setting back.
    ``crash_marker`` (tests only, from ``$DTMEM_TEST_CRASH_MARKER``): the first worker to
    create this file exits abruptly a few steps into its next chunk.
    """

    def __init__(
        self,
        payload: Payload,
        *,
        greedy: bool = False,
        torch_threads: int = 1,
        crash_marker: str | None = None,
    ) -> None:
        self._threads = torch.get_num_threads()
        torch.set_num_threads(max(1, torch_threads))
        keep_freed_memory()  # each step's forward reuses the last one's pages
        self.make_policy = payload.policy_maker(greedy=greedy)
        self.crash_marker = crash_marker
        self.envs = EnvCache(keep=2)

    def run(self, unit: Unit) -> UnitResult:
        """Run one unit to the end: its parts' episodes side by side, one env slot each.
        Episode indices are the task's, not the unit's; episodes come in the parts' order."""
        start = time.perf_counter()
        parts = unit.parts
        first = parts[0]
        tasks = tuple(p.request.task for p in parts for _ in range(p.count))  # one per slot
        slot_tasks = tasks[0] if len(parts) == 1 else tasks
        env = self.envs.get(first.request.suite, slot_tasks, len(tasks), seed=first.goal_seed)
        if self.crash_marker is not None and _claim(self.crash_marker):
            env = _CrashingEnv(env, after=3)
        policy = self.make_policy(env, first.policy_seed)
        # Episode first + j of a part resets with env_seed + j (``rollout``'s seeding); the
        # parts share one step cap (``mix_units``); targets were checked by check_requests.
        starts = [
            EpisodeStart(p.env_seed + j, p.request.target) for p in parts for j in range(p.count)
        ]
        stats = run_episodes(policy, env, starts, max_steps=first.request.max_steps)
        offsets = [p.first + j for p in parts for j in range(p.count)]
        episodes = tuple(replace(s, episode=e) for s, e in zip(stats, offsets, strict=True))
        return UnitResult(unit.key, episodes, time.perf_counter() - start, os.getpid())

    def close(self) -> None:
        self.envs.close()
        torch.set_num_threads(self._threads)


class _CrashingEnv:
    """Testing only: a vector env whose process exits abruptly (no cleanup, exit code 1)
    after ``after`` steps, i.e. in the middle of its episodes."""

    def __init__(self, env: VectorEnv, after: int) -> None:
        self.env, self.after, self.steps = env, after, 0

    @property
    def spec(self) -> EnvSpec:
        return self.env.spec

    @property
    def num_envs(self) -> int:
        return self.env.num_envs

    def reset(self, seeds: list[int]) -> np.ndarray:
        return self.env.reset(seeds)

    def reset_at(self, index: int, seed: int | None) -> np.ndarray:
        return self.env.reset_at(index, seed)

    def step(self, actions: np.ndarray) -> VectorStep:
        self.steps += 1
        if self.steps >= self.after:
            os._exit(1)
        return self.env.step(actions)

    def close(self) -> None:
        self.env.close()


def _claim(marker: str) -> bool:
    """Create ``marker`` if it does not exist; True for the one caller that created it."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True
