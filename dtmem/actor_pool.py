"""One pool of workers for evaluation and collection: units of work go to whichever worker
is free, preferring one that already holds what the unit needs; dead workers are replaced.

A worker is any object with ``run(unit) -> result`` and ``close()`` (``EvalWorker``,
``CollectWorker``). Two pools run them with the same interface, ``run(take, on_result)``:

- ``RayPool``: Ray actors, up to ``per_actor`` units in flight on each. Faults are handled
  here, not by Ray: actors are created with ``max_restarts=0, max_task_retries=0``, and when
  a call raises ``RayActorError`` (the process died, was killed, or its node went away) the
  actor is dropped, a fresh one started, and every unit it had in flight goes back to the
  front of the queue (a unit's partial results never leave a dead actor, and units are
  deterministic, so each is counted exactly once). After ``max_failures`` replacements,
  ``PoolError``. An exception raised *inside* a unit (a bug, not a crash) propagates at once.
- ``LocalPool``: one worker in this process, units one after another; for a single machine
  where an actor would buy nothing (one worker: no parallelism, only start-up costs).

The pools stay warm between ``run`` calls: actors and their envs are kept until ``close``.
``take(held)`` is the caller's scheduler: the next unit to start, preferring one whose
``affinity`` is ``held`` (what the free worker last ran); None when nothing is ready now.
Ray is imported inside ``RayPool`` only.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["LocalPool", "PoolError", "RayPool", "Unit", "local_cpus", "remote_class"]


class PoolError(RuntimeError):
    """The pool could not finish: workers kept dying, or one could not start."""


class Unit(Protocol):
    @property
    def affinity(self) -> Hashable:
        """What a worker holds that makes this unit cheap to run there (its task's envs)."""
        ...


U = TypeVar("U", bound=Unit)
Take = Callable[[Hashable | None], U | None]
OnResult = Callable[[U, Any], None]


def local_cpus() -> int:
    """CPUs this process may use (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def remote_class(cls: type, num_cpus: float) -> Any:
    """``cls`` as a Ray actor class that Ray never restarts nor retries (the pool does)."""
    import ray

    return ray.remote(num_cpus=num_cpus, max_restarts=0, max_task_retries=0)(cls)


class LocalPool(Generic[U]):
    """One worker in this process."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.size = 1
        self.replaced = 0

    def run(self, take: Take[U], on_result: OnResult[U]) -> None:
        held: Hashable | None = None
        while (unit := take(held)) is not None:
            on_result(unit, self.worker.run(unit))
            held = unit.affinity

    def close(self) -> None:
        self.worker.close()


class RayPool(Generic[U]):
    """``size`` Ray actors made by ``new_actor()`` (Ray must be initialised)."""

    def __init__(
        self, new_actor: Callable[[], Any], *, size: int, per_actor: int = 1, max_failures: int = 3
    ) -> None:
        if size < 1 or per_actor < 1:
            raise ValueError(f"size and per_actor must be >= 1, got {size}, {per_actor}")
        self.new_actor = new_actor
        self.size = size
        self.per_actor = per_actor
        self.max_failures = max_failures
        self.replaced = 0
        self.actors: list[Any] = [new_actor() for _ in range(size)]
        self.held: dict[Any, Hashable | None] = dict.fromkeys(self.actors)

    def run(self, take: Take[U], on_result: OnResult[U]) -> None:
        """Run units until ``take`` has none left and none are in flight."""
        import ray
        from ray.exceptions import RayActorError

        retry: deque[U] = deque()  # units of dead actors, run again first
        in_flight: dict[Any, tuple[Any, U]] = {}  # ref -> (actor, unit)
        load = dict.fromkeys(self.actors, 0)

        def next_unit(actor: Any) -> U | None:
            return retry.popleft() if retry else take(self.held[actor])

        while True:
            for actor in list(self.actors):
                while load[actor] < self.per_actor and (unit := next_unit(actor)) is not None:
                    in_flight[actor.run.remote(unit)] = (actor, unit)
                    load[actor] += 1
                    self.held[actor] = unit.affinity
            if not in_flight:
                return
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            actor, unit = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as exc:
                if getattr(exc, "actor_init_failed", False):
                    raise PoolError(f"a worker actor failed to start: {exc}") from exc
                retry.appendleft(unit)
                if actor in load:  # the first of its units to fail: replace it once
                    self._replace(actor, load, exc)
                continue
            load[actor] -= 1
            on_result(unit, result)

    def _replace(self, actor: Any, load: dict[Any, int], exc: Exception) -> None:
        import ray

        self.replaced += 1
        if self.replaced > self.max_failures:
            raise PoolError(
                f"worker actors died {self.replaced} times (max_actor_failures="
                f"{self.max_failures}); last: {str(exc).splitlines()[0]}"
            ) from exc
        ray.kill(actor)
        self.actors.remove(actor)
        del load[actor], self.held[actor]
        fresh = self.new_actor()
        self.actors.append(fresh)
        load[fresh], self.held[fresh] = 0, None

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors.clear()
