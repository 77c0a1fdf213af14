"""Evaluation of one model on many games and tasks by a pool of Ray actors.

The pieces, top to bottom:

- ``TaskRequest``: one game or task, its episode count, step cap and return conditioning
  (Atari: MDT's expert-return sampling, ``target=None``; Meta-World: a fixed target).
  ``requests_from_config`` resolves names (unknown ones raise, listing the valid names) and
  ``check_requests`` checks the model against every env and target; both run before any actor
  starts.
- ``WorkUnit``: a chunk of consecutive episodes of one task, at most ``envs_per_actor`` of
  them, run together in one vector env. Episode ``e`` of task ``T`` resets its env with
  ``episode_seed(seed, T, e)`` and a chunk's policy samples from a generator seeded by
  ``(seed, T, first episode)``, so a chunk gives the same episodes on any actor, after any
  retry, with any number of actors (for a given ``envs_per_actor``, which sets the chunks).
- ``EvalWorker``: owns one vector env at a time (rebuilt when the task or chunk size changes),
  builds the model once from a ``ModelPayload`` and runs a chunk with the plain
  ``dtmem.rollout.rollout(DTPolicy(...), env, target)``: the policy acts for all the chunk's
  envs in one batched model call per step. Runs without Ray (tests call it directly);
  ``remote_worker_class`` wraps it as a Ray actor.
- ``run_units``: the driver loop. Each actor has one chunk in flight; a finished chunk's
  episodes are kept whole. Faults are handled here, not by Ray: actors are created with
  ``max_restarts=0, max_task_retries=0``, and when ``ray.get`` raises ``RayActorError`` (the
  process died, was killed, or its node went away) the dead actor is dropped, a fresh one is
  started and the chunk goes back to the front of the queue. A chunk's partial episodes never
  leave a dead actor, so every episode is counted exactly once; the retry re-runs the chunk
  with the same seeds. At most ``max_failures`` replacements, then ``EvaluationError``.
  An exception raised *inside* a chunk (a bug, not a crash) propagates at once.
- ``aggregate``: per task the mean and top-3 mean of raw returns, DQN- and human-normalised
  scores (Atari), success rate (Meta-World); across Atari games the IQM of the per-game
  normalised means with a stratified bootstrap CI (``dtmem.scores``); the mean success rate.

Ray is imported inside the functions that use it; torch at the top (pipelines import this).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from dtmem.data.windows import StateStats
from dtmem.envs import EnvSpec, VectorEnv, VectorStep
from dtmem.metrics import (
    EVAL_ACTORS_REPLACED,
    EVAL_IQM_DQN,
    EVAL_IQM_DQN_HIGH,
    EVAL_IQM_DQN_LOW,
    EVAL_IQM_HUMAN,
    EVAL_IQM_HUMAN_HIGH,
    EVAL_IQM_HUMAN_LOW,
    EVAL_SUCCESS_RATE_MEAN,
    PERF_EVAL_STEPS_PER_S,
    eval_metric,
)
from dtmem.model import DecisionTransformer, ModelSpec
from dtmem.rollout import (
    DTPolicy,
    EpisodeStats,
    InvalidTargetError,
    check_compatible,
    check_state_stats,
    check_target,
    rollout,
)
from dtmem.scores import (
    ScoreInterval,
    UndefinedNormalizationError,
    dqn_normalized_score,
    human_normalized_score,
    iqm_bootstrap_ci,
    top_k_mean,
)

if TYPE_CHECKING:
    from dtmem.config.evaluate import EvaluateConfig
    from dtmem.config.model import ModelConfig

__all__ = [
    "EVAL_ACTORS_REPLACED",
    "EVAL_IQM_DQN",
    "EVAL_IQM_DQN_HIGH",
    "EVAL_IQM_DQN_LOW",
    "EVAL_IQM_HUMAN",
    "EVAL_IQM_HUMAN_HIGH",
    "EVAL_IQM_HUMAN_LOW",
    "EVAL_SUCCESS_RATE_MEAN",
    "PERF_EVAL_STEPS_PER_S",
    "DuplicateTaskError",
    "EvalResult",
    "EvalWorker",
    "EvaluationError",
    "ModelPayload",
    "Suite",
    "TaskRequest",
    "TaskResult",
    "UnitResult",
    "WorkUnit",
    "aggregate",
    "check_requests",
    "env_spec",
    "episode_rows",
    "episode_seed",
    "evaluate",
    "make_env",
    "make_units",
    "metrics_of",
    "plot_scores",
    "remote_worker_class",
    "requests_from_config",
    "resolve_metaworld_tasks",
    "run_units",
    "table_rows",
    "task_result",
]

Suite = Literal["atari", "metaworld"]

_SEED_SPACE = 1 << 30  # env seeds stay well inside int32 (ALE) after adding episode indices


class EvaluationError(RuntimeError):
    """The evaluation could not finish (actors kept dying, or could not start)."""


class DuplicateTaskError(ValueError):
    """The same game or task listed twice."""


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class TaskRequest:
    """One game or task: ``episodes`` episodes of at most ``max_steps`` agent steps each,
    conditioned on ``target`` (None: MDT's expert-return sampling)."""

    suite: Suite
    task: str
    episodes: int
    max_steps: int
    target: float | None


def resolve_metaworld_tasks(tasks: str | Sequence[str]) -> tuple[str, ...]:
    """``"ml45_train"`` / ``"ml45_test"`` -> ML45's task names; a list -> its names checked
    (UnknownTaskError lists the valid ones)."""
    from dtmem.envs.metaworld import ML45_TEST_TASKS, ML45_TRAIN_TASKS, check_task

    if isinstance(tasks, str):
        split = {"ml45_train": ML45_TRAIN_TASKS, "ml45_test": ML45_TEST_TASKS}
        if tasks in split:
            return split[tasks]
        tasks = (tasks,)
    return tuple(check_task(t) for t in tasks)


def _no_duplicates(names: Sequence[str], what: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise DuplicateTaskError(f"{what} {name!r} is listed twice")
        seen.add(name)


def requests_from_config(cfg: EvaluateConfig) -> list[TaskRequest]:
    """The games and tasks of ``cfg``, names resolved: Atari games first, then Meta-World."""
    from dtmem.envs.atari import canonical_game

    out: list[TaskRequest] = []
    if cfg.atari is not None:
        games = [canonical_game(g) for g in cfg.atari.games]
        _no_duplicates(games, "Atari game")
        out += [
            TaskRequest("atari", g, cfg.atari.episodes, cfg.atari.max_steps, None) for g in games
        ]
    if cfg.metaworld is not None:
        mw = cfg.metaworld
        tasks = resolve_metaworld_tasks(mw.tasks)
        _no_duplicates(tasks, "Meta-World task")
        out += [
            TaskRequest("metaworld", t, mw.episodes, mw.max_steps, mw.target_return) for t in tasks
        ]
    return out


def env_spec(suite: Suite, task: str) -> EnvSpec:
    """The ``EnvSpec`` that ``make_env(suite, task, n)`` will have, without building it
    (Meta-World's env takes ~0.5 s to build). Tested against the real envs."""
    if suite == "atari":
        from dtmem.envs.atari import NUM_FULL_ACTIONS, OBSERVATION_SHAPE

        return EnvSpec(task, OBSERVATION_SHAPE, "discrete", NUM_FULL_ACTIONS, 0, None)
    from dtmem.envs.metaworld import ACTION_DIM, OBSERVATION_DIM

    return EnvSpec(task, (OBSERVATION_DIM,), "continuous", 0, ACTION_DIM, 500)


def check_requests(
    spec: ModelSpec, state_stats: StateStats | None, requests: Sequence[TaskRequest]
) -> None:
    """Raise (one line) unless the model can act in every env with its conditioning:
    IncompatibleModelError (observation or action space), InvalidTargetError (NaN/inf target,
    or expert-return sampling asked of a model without a return head)."""
    if not requests:
        raise ValueError("nothing to evaluate: no games or tasks")
    for r in requests:
        env = env_spec(r.suite, r.task)
        check_compatible(spec, env)
        check_state_stats(state_stats, env)
        check_target(r.target)
        if r.target is None and spec.return_bins == 0:
            raise InvalidTargetError(
                f"{r.task}: expert-return sampling needs a model with a return head "
                "(an Atari model); this one has none"
            )


# --------------------------------------------------------------------------- work units


def _hash(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def episode_seed(seed: int, task: str, episode: int) -> int:
    """The env seed of episode ``episode`` of ``task``: a stable hash of (seed, task), below
    2^30, plus the episode index (``rollout`` seeds its episode j with ``seed + j``)."""
    return _hash("env", seed, task) % _SEED_SPACE + episode


@dataclass(frozen=True)
class WorkUnit:
    """Episodes ``first .. first + count - 1`` of one task, run together on ``count`` envs."""

    request: TaskRequest
    first: int
    count: int
    env_seed: int  # seed of episode ``first``; episode first + j uses env_seed + j
    policy_seed: int  # the chunk's sampling generator
    goal_seed: int  # Meta-World: the seed that draws the task's 50 goals (same for all chunks)

    @property
    def key(self) -> tuple[str, int]:
        return (self.request.task, self.first)


def make_units(requests: Sequence[TaskRequest], *, seed: int, chunk: int) -> list[WorkUnit]:
    """Every task's episodes in consecutive chunks of at most ``chunk``, tasks in order."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    units = []
    for r in requests:
        for first in range(0, r.episodes, chunk):
            units.append(
                WorkUnit(
                    request=r,
                    first=first,
                    count=min(chunk, r.episodes - first),
                    env_seed=episode_seed(seed, r.task, first),
                    policy_seed=_hash("policy", seed, r.task, first) % (1 << 62),
                    goal_seed=seed,
                )
            )
    return units


# --------------------------------------------------------------------------- the worker


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


@dataclass(frozen=True)
class UnitResult:
    """A chunk's episodes (``episode`` = index within the task) and how long it took."""

    key: tuple[str, int]
    episodes: tuple[EpisodeStats, ...]
    seconds: float
    pid: int


def make_env(suite: Suite, task: str, num_envs: int, *, goal_seed: int) -> VectorEnv:
    """``num_envs`` copies of a game (one ALE thread: the actor owns one CPU) or a task."""
    if suite == "atari":
        from dtmem.envs.atari import make_atari_env

        return make_atari_env(task, num_envs, num_threads=1)
    from dtmem.envs.metaworld import make_metaworld_env

    return make_metaworld_env(task, num_envs, seed=goal_seed)


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


class EvalWorker:
    """Runs chunks of episodes with one model; the body of an evaluation actor.

    The model is built once. The vector env is kept between chunks of the same task and size
    (building Meta-World envs costs ~0.5 s) and replaced otherwise. Torch runs on one thread:
    several processes on few cores each with many intra-op threads run ~100x slower.
    ``crash_marker`` (testing only): see ``EvaluateConfig.crash_marker``.
    """

    def __init__(
        self, payload: ModelPayload, *, greedy: bool = False, crash_marker: str | None = None
    ) -> None:
        torch.set_num_threads(1)
        self.model = payload.build()
        self.state_stats = payload.state_stats
        self.greedy = greedy
        self.crash_marker = crash_marker
        self._env: VectorEnv | None = None
        self._env_key: tuple[str, str, int, int] | None = None

    def _env_for(self, unit: WorkUnit) -> VectorEnv:
        r = unit.request
        key = (r.suite, r.task, unit.count, unit.goal_seed)
        if self._env is None or self._env_key != key:
            if self._env is not None:
                self._env.close()
            self._env = make_env(r.suite, r.task, unit.count, goal_seed=unit.goal_seed)
            self._env_key = key
        return self._env

    def run(self, unit: WorkUnit) -> UnitResult:
        """Run one chunk to the end; episode indices are the task's, not the chunk's."""
        start = time.perf_counter()
        r = unit.request
        env = self._env_for(unit)
        if self.crash_marker is not None and _claim(self.crash_marker):
            env = _CrashingEnv(env, after=3)
        policy = DTPolicy(
            self.model,
            env,
            greedy=self.greedy,
            seed=unit.policy_seed,
            state_stats=self.state_stats,
        )
        stats = rollout(
            policy,
            env,
            r.target,
            num_episodes=unit.count,
            seed=unit.env_seed,
            max_steps=r.max_steps,
        )
        episodes = tuple(replace(s, episode=unit.first + s.episode) for s in stats)
        return UnitResult(unit.key, episodes, time.perf_counter() - start, os.getpid())

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


def remote_worker_class(num_cpus: float = 1.0) -> Any:
    """``EvalWorker`` as a Ray actor class. Ray itself never restarts it or retries its
    calls (``max_restarts=0``, ``max_task_retries=0``): ``run_units`` replaces dead actors
    and re-queues their chunks."""
    import ray

    return ray.remote(num_cpus=num_cpus, max_restarts=0, max_task_retries=0)(EvalWorker)


# --------------------------------------------------------------------------- the driver


def run_units(
    units: Sequence[WorkUnit],
    new_actor: Callable[[], Any],
    *,
    num_actors: int,
    max_failures: int,
    on_result: Callable[[UnitResult], None] | None = None,
) -> tuple[dict[tuple[str, int], UnitResult], int]:
    """Run every unit on a pool of actors made by ``new_actor()``; returns the results by
    unit key and the number of actors replaced.

    Each actor has one unit in flight. An idle actor takes the first queued unit of the task
    and size it already has envs for, else the first queued unit. When an actor dies
    (``RayActorError``), it is replaced by a fresh one and its unit is queued again at the
    front; after ``max_failures`` replacements ``EvaluationError`` is raised. All actors are
    killed on the way out.
    """
    import ray
    from ray.exceptions import RayActorError

    queue = deque(units)
    actors = [new_actor() for _ in range(min(num_actors, len(units)))]
    idle: list[tuple[Any, tuple[str, int] | None]] = [(a, None) for a in actors]  # envs held
    in_flight: dict[Any, tuple[Any, WorkUnit]] = {}
    results: dict[tuple[str, int], UnitResult] = {}
    replaced = 0
    try:
        while queue or in_flight:
            while idle and queue:
                actor, held = idle.pop()
                unit = _take(queue, held)
                in_flight[actor.run.remote(unit)] = (actor, unit)
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            actor, unit = in_flight.pop(ref)
            try:
                result: UnitResult = ray.get(ref)
            except RayActorError as exc:
                if getattr(exc, "actor_init_failed", False):
                    raise EvaluationError(f"an evaluation actor failed to start: {exc}") from exc
                replaced += 1
                if replaced > max_failures:
                    raise EvaluationError(
                        f"evaluation actors died {replaced} times (max_actor_failures="
                        f"{max_failures}); last: {str(exc).splitlines()[0]}"
                    ) from exc
                ray.kill(actor)
                actors.remove(actor)
                fresh = new_actor()
                actors.append(fresh)
                idle.append((fresh, None))
                queue.appendleft(unit)
                continue
            if result.key in results:  # cannot happen: a unit is in flight at most once
                raise EvaluationError(f"unit {result.key} finished twice")
            results[result.key] = result
            idle.append((actor, (unit.request.task, unit.count)))
            if on_result is not None:
                on_result(result)
    finally:
        for a in actors:
            ray.kill(a)
    return results, replaced


def _take(queue: deque[WorkUnit], held: tuple[str, int] | None) -> WorkUnit:
    if held is not None:
        for i, u in enumerate(queue):
            if (u.request.task, u.count) == held:
                del queue[i]
                return u
    return queue.popleft()


def evaluate(
    payload: ModelPayload,
    requests: Sequence[TaskRequest],
    *,
    num_actors: int,
    envs_per_actor: int,
    seed: int = 0,
    greedy: bool = False,
    cpus_per_actor: float = 1.0,
    max_failures: int = 3,
    bootstrap_resamples: int = 2000,
    crash_marker: str | None = None,
    on_result: Callable[[UnitResult], None] | None = None,
) -> EvalResult:
    """Evaluate the model of ``payload`` on ``requests`` with ``num_actors`` Ray actors
    (Ray must be initialised). The payload goes into the object store once; every actor
    builds the model from that one copy. Check the requests first (``check_requests``)."""
    import ray

    check_requests(payload.spec, payload.state_stats, requests)
    units = make_units(requests, seed=seed, chunk=envs_per_actor)
    # Never more actors than the cluster can place: a unit sent to an actor that can never
    # be scheduled would wait forever.
    fit = int(ray.cluster_resources().get("CPU", 1.0) // cpus_per_actor)
    pool = max(1, min(num_actors, len(units), fit))
    start = time.perf_counter()
    payload_ref = ray.put(payload)
    cls = remote_worker_class(cpus_per_actor)

    def new_actor() -> Any:
        return cls.remote(payload_ref, greedy=greedy, crash_marker=crash_marker)

    results, replaced = run_units(
        units, new_actor, num_actors=pool, max_failures=max_failures, on_result=on_result
    )
    wall = time.perf_counter() - start
    by_task: dict[str, list[EpisodeStats]] = {r.task: [] for r in requests}
    for res in results.values():
        by_task[res.key[0]].extend(res.episodes)
    return aggregate(
        requests,
        by_task,
        wall_s=wall,
        actors_replaced=replaced,
        bootstrap_resamples=bootstrap_resamples,
        seed=seed,
        actors=pool,
    )


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class TaskResult:
    """One game or task: its episodes (in episode order) and their statistics.

    ``return_top3``: mean of the best 3 episodes (of all, when fewer than 3).
    ``human_normalized`` / ``dqn_normalized``: the normalised mean score (Atari; the DQN one
    is None where the reference table cannot define it). ``success_rate``: Meta-World.
    """

    suite: Suite
    task: str
    episodes: tuple[EpisodeStats, ...]
    return_mean: float
    return_top3: float
    length_mean: float
    human_normalized: float | None
    dqn_normalized: float | None
    success_rate: float | None

    @property
    def returns(self) -> np.ndarray:
        """(n,) float64: the raw return of each episode, in episode order."""
        return np.array([e.episode_return for e in self.episodes])


@dataclass(frozen=True)
class EvalResult:
    """Per-task results, aggregates across tasks, throughput and the MLflow run (if any)."""

    tasks: tuple[TaskResult, ...]
    iqm_human_normalized: ScoreInterval | None  # across Atari games, with bootstrap CI
    iqm_dqn_normalized: ScoreInterval | None  # across games whose DQN score is defined
    success_rate_mean: float | None  # across Meta-World tasks
    env_steps: int  # agent steps of all counted episodes
    wall_s: float  # from the model's upload to the last result
    actors: int  # size of the actor pool (num_actors, capped by units and cluster CPUs)
    actors_replaced: int
    run_id: str | None = None

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.wall_s if self.wall_s > 0 else math.nan

    def task(self, name: str) -> TaskResult:
        for t in self.tasks:
            if t.task == name:
                return t
        raise KeyError(f"no result for {name!r}; have {', '.join(t.task for t in self.tasks)}")


def task_result(request: TaskRequest, episodes: Iterable[EpisodeStats]) -> TaskResult:
    """Statistics of exactly ``request.episodes`` episodes, indices 0..n-1 each once;
    anything else raises EvaluationError."""
    eps = tuple(sorted(episodes, key=lambda s: s.episode))
    indices = [s.episode for s in eps]
    if indices != list(range(request.episodes)):
        raise EvaluationError(
            f"{request.task}: expected episodes 0..{request.episodes - 1} once each, got "
            f"{len(indices)} episodes"
        )
    returns = np.array([s.episode_return for s in eps])
    human = dqn = success = None
    if request.suite == "atari":
        human = float(human_normalized_score(request.task, returns.mean()))
        try:
            dqn = float(dqn_normalized_score(request.task, returns.mean()))
        except UndefinedNormalizationError:
            dqn = None
    else:
        success = float(np.mean([bool(s.success) for s in eps]))
    return TaskResult(
        suite=request.suite,
        task=request.task,
        episodes=eps,
        return_mean=float(returns.mean()),
        return_top3=top_k_mean(returns, min(3, len(returns))),
        length_mean=float(np.mean([s.length for s in eps])),
        human_normalized=human,
        dqn_normalized=dqn,
        success_rate=success,
    )


def aggregate(
    requests: Sequence[TaskRequest],
    episodes_by_task: Mapping[str, Sequence[EpisodeStats]],
    *,
    wall_s: float,
    actors: int = 1,
    actors_replaced: int = 0,
    bootstrap_resamples: int = 2000,
    seed: int = 0,
) -> EvalResult:
    """Per-task statistics and the aggregates: IQM across Atari games of the human- (and
    DQN-) normalised mean scores, with a stratified bootstrap 95% CI over episodes; the mean
    Meta-World success rate."""
    tasks = tuple(task_result(r, episodes_by_task.get(r.task, ())) for r in requests)
    atari = [t for t in tasks if t.suite == "atari"]
    human = dqn = None
    if atari:
        human = iqm_bootstrap_ci(
            {t.task: human_normalized_score(t.task, t.returns) for t in atari},
            num_resamples=bootstrap_resamples,
            seed=seed,
        )
        defined = [t for t in atari if t.dqn_normalized is not None]
        if defined:
            dqn = iqm_bootstrap_ci(
                {t.task: dqn_normalized_score(t.task, t.returns) for t in defined},
                num_resamples=bootstrap_resamples,
                seed=seed,
            )
    rates = [t.success_rate for t in tasks if t.success_rate is not None]
    return EvalResult(
        tasks=tasks,
        iqm_human_normalized=human,
        iqm_dqn_normalized=dqn,
        success_rate_mean=float(np.mean(rates)) if rates else None,
        env_steps=sum(s.length for t in tasks for s in t.episodes),
        wall_s=wall_s,
        actors=actors,
        actors_replaced=actors_replaced,
    )


# --------------------------------------------------------------------------- reporting


def metrics_of(result: EvalResult) -> dict[str, float]:
    """The MLflow metrics of a result: ``eval/<task>/...`` per task, then the aggregates."""
    out: dict[str, float] = {}
    for t in result.tasks:
        out[eval_metric(t.task, "return_mean")] = t.return_mean
        out[eval_metric(t.task, "return_top3")] = t.return_top3
        out[eval_metric(t.task, "length_mean")] = t.length_mean
        out[eval_metric(t.task, "episodes")] = float(len(t.episodes))
        if t.human_normalized is not None:
            out[eval_metric(t.task, "score_normalized")] = t.human_normalized
        if t.dqn_normalized is not None:
            out[eval_metric(t.task, "score_dqn_normalized")] = t.dqn_normalized
        if t.success_rate is not None:
            out[eval_metric(t.task, "success_rate")] = t.success_rate
    for ci, (name, low, high) in (
        (result.iqm_human_normalized, (EVAL_IQM_HUMAN, EVAL_IQM_HUMAN_LOW, EVAL_IQM_HUMAN_HIGH)),
        (result.iqm_dqn_normalized, (EVAL_IQM_DQN, EVAL_IQM_DQN_LOW, EVAL_IQM_DQN_HIGH)),
    ):
        if ci is not None:
            out.update({name: ci.point, low: ci.low, high: ci.high})
    if result.success_rate_mean is not None:
        out[EVAL_SUCCESS_RATE_MEAN] = result.success_rate_mean
    out[EVAL_ACTORS_REPLACED] = float(result.actors_replaced)
    out[PERF_EVAL_STEPS_PER_S] = result.steps_per_s
    return out


def table_rows(result: EvalResult) -> list[dict[str, Any]]:
    """One row per task for the CSV artifact (empty cells where a number does not apply)."""

    def cell(x: float | None) -> float | str:
        return "" if x is None else round(x, 6)

    return [
        {
            "suite": t.suite,
            "task": t.task,
            "episodes": len(t.episodes),
            "return_mean": cell(t.return_mean),
            "return_top3": cell(t.return_top3),
            "return_std": cell(float(t.returns.std())),
            "length_mean": cell(t.length_mean),
            "human_normalized": cell(t.human_normalized),
            "dqn_normalized": cell(t.dqn_normalized),
            "success_rate": cell(t.success_rate),
        }
        for t in result.tasks
    ]


def episode_rows(result: EvalResult) -> list[dict[str, Any]]:
    """One row per episode (task, index, env seed, return, length, success, truncated)."""
    return [
        {
            "task": t.task,
            "episode": s.episode,
            "seed": s.seed,
            "return": s.episode_return,
            "length": s.length,
            "success": "" if s.success is None else int(s.success),
            "truncated": int(s.truncated),
        }
        for t in result.tasks
        for s in t.episodes
    ]


def plot_scores(result: EvalResult, path: str | Path, title: str = "evaluation") -> Path:
    """A bar chart per suite: human-normalised score per Atari game (with the IQM as a line),
    success rate per Meta-World task. Written with matplotlib's Agg backend; returns path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    panels = []
    atari = [t for t in result.tasks if t.suite == "atari"]
    meta = [t for t in result.tasks if t.suite == "metaworld"]
    if atari:
        panels.append(("atari", atari))
    if meta:
        panels.append(("metaworld", meta))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(4.0, 0.7 * len(result.tasks) + 2.5), 3.6), squeeze=False
    )
    for ax, (suite, tasks) in zip(axes[0], panels, strict=True):
        names = [t.task for t in tasks]
        if suite == "atari":
            values = [t.human_normalized or 0.0 for t in tasks]
            bars = ax.bar(names, values, color="tab:blue")
            if result.iqm_human_normalized is not None:
                iqm = result.iqm_human_normalized
                ax.axhline(iqm.point, color="k", lw=1, ls="--", label=f"IQM {iqm.point:.3f}")
                ax.legend(fontsize=8)
            ax.set_ylabel("human-normalised score")
        else:
            bars = ax.bar(names, [t.success_rate or 0.0 for t in tasks], color="tab:green")
            ax.set_ylim(0, 1.1)
            ax.set_ylabel("success rate")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
