"""Evaluation of one model on many games and tasks by a warm pool of workers.

The pieces, top to bottom (each in its own module, re-exported here):

- ``dtmem.eval_tasks``: ``TaskRequest`` (a game or task and its conditioning), checked
  against the model before any worker starts; ``WorkUnit``, a chunk of at most
  ``envs_per_actor`` consecutive episodes of one task, seeded so that it gives the same
  episodes on any worker, after any retry, with any number of workers. ``mix_units`` packs
  small Meta-World chunks of several tasks side by side into one ``MixedUnit`` (10 tasks x 1
  episode: 2 batched forwards of 5 per step instead of 10 of 1); same seeds and goals.
- ``dtmem.eval_worker``: ``EvalWorker`` builds the model once and runs a unit with the one
  episode loop, ``run_episodes(DTPolicy(...), env, episodes)``; it keeps its last envs.
- ``dtmem.actor_pool``: the pool shared with collection. ``open_pool`` picks Ray actors when
  they run in parallel, or one worker in this process when an actor would buy nothing (a
  pool of one on this machine); a dead actor is replaced and its unit re-run.
- ``dtmem.eval_report``: per-task statistics, the aggregates, metrics, tables and plot.

Scheduling: a free worker takes the next unit of the task whose envs it holds, else the
first unit of a task no one has started (a task per worker where it can), else the first.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from dtmem.actor_pool import LocalPool, PoolError, RayPool, local_cpus, remote_class
from dtmem.eval_report import (
    EvalResult,
    TaskResult,
    aggregate,
    episode_rows,
    metrics_of,
    plot_scores,
    table_rows,
    task_result,
)
from dtmem.eval_tasks import (
    DuplicateTaskError,
    EvaluationError,
    MixedUnit,
    TaskRequest,
    Unit,
    WorkUnit,
    check_requests,
    episode_seed,
    make_units,
    mix_units,
    requests_from_config,
    resolve_metaworld_tasks,
    split_by_task,
)
from dtmem.eval_worker import (
    CRASH_MARKER_ENV,
    BaselinePayload,
    EvalWorker,
    ModelPayload,
    Payload,
    UnitResult,
)
from dtmem.rollout import EpisodeStats

__all__ = [
    "BaselinePayload",
    "DuplicateTaskError",
    "EvalPool",
    "EvalResult",
    "EvalWorker",
    "EvaluationError",
    "MixedUnit",
    "ModelPayload",
    "Payload",
    "TaskRequest",
    "TaskResult",
    "Unit",
    "UnitResult",
    "WorkUnit",
    "aggregate",
    "check_requests",
    "episode_rows",
    "episode_seed",
    "evaluate",
    "make_units",
    "metrics_of",
    "mix_units",
    "open_pool",
    "plan_units",
    "plot_scores",
    "requests_from_config",
    "resolve_metaworld_tasks",
    "split_by_task",
    "table_rows",
    "task_result",
]


class EvalPool:
    """Workers holding one model, warm between ``evaluate`` calls (actors, built model and
    envs are kept until the pool closes). Made by ``open_pool``."""

    def __init__(self, payload: Payload, pool: LocalPool[Any] | RayPool[Any], chunk: int):
        self.payload = payload
        self.pool = pool
        self.chunk = chunk

    @property
    def in_process(self) -> bool:
        return isinstance(self.pool, LocalPool)

    def evaluate(
        self,
        requests: Sequence[TaskRequest],
        *,
        seed: int = 0,
        bootstrap_resamples: int = 2000,
        on_result: Callable[[UnitResult], None] | None = None,
    ) -> EvalResult:
        """Every request's episodes, aggregated; ``wall_s`` counts this call only."""
        self.payload.check(requests)
        units = plan_units(requests, seed=seed, chunk=self.chunk)
        by_task: dict[str, list[EpisodeStats]] = {r.task: [] for r in requests}
        seen: set[tuple[str, int]] = set()

        def done(unit: Unit, result: UnitResult) -> None:
            if result.key in seen:  # cannot happen: a unit is in flight at most once
                raise EvaluationError(f"unit {result.key} finished twice")
            seen.add(result.key)
            for task, episodes in split_by_task(unit, result.episodes):
                by_task[task] += episodes
            if on_result is not None:
                on_result(result)

        replaced = self.pool.replaced
        start = time.perf_counter()
        try:
            self.pool.run(_scheduler(units), done)
        except PoolError as exc:
            raise EvaluationError(str(exc)) from exc
        return aggregate(
            requests,
            by_task,
            wall_s=time.perf_counter() - start,
            actors_replaced=self.pool.replaced - replaced,
            bootstrap_resamples=bootstrap_resamples,
            seed=seed,
            actors=self.pool.size,
        )


def plan_units(requests: Sequence[TaskRequest], *, seed: int, chunk: int) -> list[Unit]:
    """The units an evaluation runs: each task's chunks (``make_units``), small Meta-World
    chunks of several tasks side by side (``mix_units``)."""
    return mix_units(make_units(requests, seed=seed, chunk=chunk), chunk=chunk)


def _scheduler(units: Sequence[Unit]) -> Callable[[Hashable | None], Unit | None]:
    """``take(held)``: the next unit of the task ``held``, else the first unit of a task not
    started yet, else the first queued unit; None when all are taken."""
    queue = list(units)
    started: set[Hashable] = set()

    def take(held: Hashable | None) -> Unit | None:
        if not queue:
            return None
        pick = next((u for u in queue if u.affinity == held), None)
        pick = pick or next((u for u in queue if u.affinity not in started), queue[0])
        queue.remove(pick)
        started.add(pick.affinity)
        return pick

    return take


# Below this many env steps a local evaluation runs in this process even when it could use
# several actors: starting Ray (~7 s measured) and the actors (~3 s) costs more than a second
# worker saves at ~170 steps/s per worker (the default small model, one core), 10 s x 170 x 2.
IN_PROCESS_MAX_STEPS = 3_000


def _ray_running() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


@contextmanager
def open_pool(
    payload: Payload,
    *,
    num_actors: int,
    envs_per_actor: int,
    units: int | None = None,
    steps: int | None = None,
    cpus_per_actor: float = 1.0,
    greedy: bool = False,
    max_failures: int = 3,
) -> Iterator[EvalPool]:
    """A warm pool for ``payload``: ``num_actors`` Ray actors (never more than ``units`` nor
    than the CPUs can place), or one worker in this process where Ray would buy nothing: on
    this machine (no Ray running, no ``$RAY_ADDRESS``), when the pool would be one worker or
    the work (``steps``, the most env steps it can take) is under ``IN_PROCESS_MAX_STEPS``.
    Ray, where used, is entered through ``dtmem.ray_session``."""
    from dtmem.ray_session import ray_session

    wanted = max(1, min(num_actors, units if units is not None else num_actors))
    cluster = _ray_running() or bool(os.environ.get("RAY_ADDRESS"))
    crash_marker = os.environ.get(CRASH_MARKER_ENV) or None
    small = steps is not None and steps <= IN_PROCESS_MAX_STEPS
    if not cluster and (small or min(wanted, int(local_cpus() // cpus_per_actor)) <= 1):
        # (no crash_marker here: its abrupt exit would take this process with it)
        worker = EvalWorker(payload, greedy=greedy, torch_threads=max(1, int(cpus_per_actor)))
        pool: LocalPool[Any] | RayPool[Any] = LocalPool(worker)
        try:
            yield EvalPool(payload, pool, envs_per_actor)
        finally:
            pool.close()
        return
    with ray_session() as ray:
        # Never more actors than the cluster can place: a unit sent to an actor that can
        # never be scheduled would wait forever.
        fit = int(ray.cluster_resources().get("CPU", 1.0) // cpus_per_actor)
        payload_ref = ray.put(payload)  # once; every actor builds the model from this copy
        cls = remote_class(EvalWorker, cpus_per_actor)

        def new_actor() -> Any:
            return cls.remote(payload_ref, greedy=greedy, crash_marker=crash_marker)

        size = max(1, min(wanted, fit))
        pool = RayPool(new_actor, size=size, max_failures=max_failures)
        try:
            yield EvalPool(payload, pool, envs_per_actor)
        finally:
            pool.close()


def evaluate(
    payload: Payload,
    requests: Sequence[TaskRequest],
    *,
    num_actors: int,
    envs_per_actor: int,
    seed: int = 0,
    greedy: bool = False,
    cpus_per_actor: float = 1.0,
    max_failures: int = 3,
    bootstrap_resamples: int = 2000,
    on_result: Callable[[UnitResult], None] | None = None,
) -> EvalResult:
    """Evaluate the model (or baseline) of ``payload`` on ``requests`` with a pool opened for
    this call (``open_pool``); ``wall_s`` counts from the pool's start to the last result."""
    payload.check(requests)
    units = len(plan_units(requests, seed=seed, chunk=envs_per_actor))
    start = time.perf_counter()
    with open_pool(
        payload,
        num_actors=num_actors,
        envs_per_actor=envs_per_actor,
        units=units,
        steps=sum(r.episodes * r.max_steps for r in requests),
        cpus_per_actor=cpus_per_actor,
        greedy=greedy,
        max_failures=max_failures,
    ) as pool:
        result = pool.evaluate(
            requests, seed=seed, bootstrap_resamples=bootstrap_resamples, on_result=on_result
        )
    return replace(result, wall_s=time.perf_counter() - start)
