"""What an evaluation runs: tasks and their conditioning, checked against the model, and the
work units they are cut into. No Ray; torch only inside ``check_requests``.

- ``TaskRequest``: one game or task, its episode count, step cap and return conditioning
  (Atari: MDT's expert-return sampling, ``target=None``; Meta-World: a fixed target).
  ``requests_from_config`` resolves names (unknown ones raise, listing the valid names) and
  ``check_requests`` checks the model against every env and target; both run before any
  worker starts.
- ``WorkUnit``: a chunk of consecutive episodes of one task, at most ``envs_per_actor`` of
  them, run together in one vector env; ``mix_units`` packs small Meta-World chunks of
  several tasks side by side into one ``MixedUnit``. Episode ``e`` of task ``T`` resets its
  env with ``episode_seed(seed, T, e)`` and a chunk's policy samples from a generator seeded
  by ``(seed, T, first episode)``, so a chunk gives the same episodes on any worker, after
  any retry, with any number of workers (for a given ``envs_per_actor``, which sets the
  chunks and, through ``mix_units``, which tasks share a batch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from dtmem.envs import Suite, env_spec

if TYPE_CHECKING:
    from dtmem.config.evaluate import EvaluateConfig
    from dtmem.data.windows import StateStats
    from dtmem.model import ModelSpec

__all__ = [
    "DuplicateTaskError",
    "EvaluationError",
    "MixedUnit",
    "TaskRequest",
    "Unit",
    "WorkUnit",
    "check_requests",
    "episode_seed",
    "make_units",
    "mix_units",
    "requests_from_config",
    "resolve_metaworld_tasks",
    "split_by_task",
]

E = TypeVar("E")  # an episode's record

_SEED_SPACE = 1 << 30  # env seeds stay well inside int32 (ALE) after adding episode indices


class EvaluationError(RuntimeError):
    """The evaluation could not finish (workers kept dying, or could not start)."""


class DuplicateTaskError(ValueError):
    """The same game or task listed twice."""


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


def check_requests(
    spec: ModelSpec, state_stats: StateStats | None, requests: Sequence[TaskRequest]
) -> None:
    """Raise (one line) unless the model can act in every env with its conditioning:
    IncompatibleModelError (observation or action space), InvalidTargetError (NaN/inf target,
    or expert-return sampling asked of a model without a return head)."""
    from dtmem.dt_policy import (
        InvalidTargetError,
        check_compatible,
        check_state_stats,
        check_target,
    )

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

    @property
    def affinity(self) -> str:
        """Units of one task run cheapest on the worker that holds its envs."""
        return self.request.task

    @property
    def parts(self) -> tuple[WorkUnit, ...]:
        """The chunks this unit runs side by side: itself (see ``MixedUnit``)."""
        return (self,)


@dataclass(frozen=True)
class MixedUnit:
    """Chunks of several Meta-World tasks run side by side in one vector env: slots in the
    order of ``parts``, each part's episodes on its own slots with its own seeds, goals and
    target, so every episode is the one its chunk gives alone: the same seed, goal and
    length, and actions equal up to rounding (the model's kernels at another batch size
    round differently, ~1e-8 in an action, as between two ``envs_per_actor`` values).
    Meta-World's policy draws nothing from the unit's generator (continuous actions, a fixed
    target), so sharing ``parts[0]``'s changes nothing. Made by ``mix_units``."""

    parts: tuple[WorkUnit, ...]

    @property
    def key(self) -> tuple[str, int]:
        """("reach-v3+push-v3", first episode of the first part): unique, as only a task's
        last chunk can be smaller than ``chunk``, so a task is in one mixed unit at most."""
        return ("+".join(self.affinity), self.parts[0].first)

    @property
    def affinity(self) -> tuple[str, ...]:
        return tuple(p.request.task for p in self.parts)

    @property
    def count(self) -> int:
        return sum(p.count for p in self.parts)


Unit = WorkUnit | MixedUnit


def split_by_task(unit: Unit, episodes: Sequence[E]) -> Iterator[tuple[str, list[E]]]:
    """A unit's episodes, which come in the order of its parts, as (task, that part's)."""
    start = 0
    for part in unit.parts:
        yield part.request.task, list(episodes[start : start + part.count])
        start += part.count
    if start != len(episodes):
        raise ValueError(f"unit {unit.key} ran {len(episodes)} episodes, its parts {start}")


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


def mix_units(units: Sequence[WorkUnit], *, chunk: int) -> list[Unit]:
    """``units`` with the Meta-World chunks smaller than ``chunk`` packed side by side, in
    order, into mixed units of at most ``chunk`` envs (one per step cap), so that e.g. 10
    tasks x 1 episode run as 2 batches of 5 instead of 10 batches of 1. Atari chunks and
    full chunks stay as they are."""
    out: list[Unit] = []
    open_bins: dict[int, list[WorkUnit]] = {}  # max_steps -> the parts of the bin filling up

    def close(parts: list[WorkUnit]) -> None:
        out.append(parts[0] if len(parts) == 1 else MixedUnit(tuple(parts)))

    for u in units:
        if u.request.suite != "metaworld" or u.count >= chunk:
            out.append(u)
            continue
        parts = open_bins.setdefault(u.request.max_steps, [])
        if sum(p.count for p in parts) + u.count > chunk:
            close(parts)
            parts = open_bins[u.request.max_steps] = []
        parts.append(u)
    for parts in open_bins.values():
        if parts:
            close(parts)
    return out
