"""A disk cache of Meta-World MT1 goal lists: a second build of a task skips the sampling.

``metaworld.MT1(task, seed=seed)`` resets a throwaway env 50 times to draw the task's 50
goals (``metaworld._make_tasks``), about 0.65 s of a 0.8-1.5 s env build. Each goal is a
``Task(env_name, data=pickle.dumps(kwargs))`` whose kwargs are the task's fixed arguments
plus one ``rand_vec``. This module stores only the ``rand_vec`` numbers, as JSON, and
rebuilds the Task objects in memory with metaworld's own ``_encode_task`` on the same
kwargs, in the same order, as ``_make_tasks`` does. Nothing is ever unpickled from disk.

A file is written only when the rebuild from its numbers (after the JSON round trip) gives
byte for byte the Task data metaworld made, and it records a SHA-256 of that data; on load
the rebuilt data must hash the same, so a corrupt, edited or foreign file (another
metaworld, another pickle protocol) is ignored and rewritten, never trusted.

Where: ``metaworld-goals`` in dtmem's cache (``$DTMEM_CACHE``, else ``($XDG_CACHE_HOME or
~/.cache)/dtmem``), one file per (metaworld version, task, seed). A cache that cannot be
read or written costs only the sampling; it is never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dtmem.fileio import cache_dir, write_json_atomic

if TYPE_CHECKING:
    from metaworld.types import Task

__all__ = ["cache_root", "goal_file", "load_goals", "mt1_goals", "mt1_tasks", "save_goals"]

FORMAT = 1  # bump when the file's fields change
_log = logging.getLogger(__name__)
_warned_unwritable = False


def cache_root() -> Path:
    """``metaworld-goals`` in dtmem's cache (``dtmem.fileio.cache_dir``: ``$DTMEM_CACHE``,
    else ``($XDG_CACHE_HOME or ~/.cache)/dtmem``)."""
    return cache_dir() / "metaworld-goals"


def _metaworld_version() -> str:
    return version("metaworld")


def goal_file(task: str, seed: int, mw_version: str | None = None) -> Path:
    """The cache file of ``task``'s goals drawn from ``seed`` under a metaworld version."""
    mw_version = mw_version or _metaworld_version()
    name = f"metaworld-{mw_version}/{task}-seed{seed}.json"
    if not re.fullmatch(r"[\w.+-]+/[\w.+-]+\.json", name):  # task names come from metaworld
        raise ValueError(f"goal cache: {name!r} is not a safe file name")
    return cache_root() / name


def mt1_tasks(task: str, goals: np.ndarray) -> list[Task]:
    """The Task list ``metaworld.MT1(task)`` makes, one per row of ``goals`` (50, d): the
    kwargs of ``metaworld._make_tasks``, key for key in its order, encoded by metaworld."""
    import metaworld
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, ML1_ARGS_KWARGS

    args = ML1_ARGS_KWARGS[task]
    tasks = []
    for rand_vec in goals:
        kwargs = args["kwargs"].copy()
        assert isinstance(kwargs, dict)  # as in _make_tasks (and for mypy)
        del kwargs["task_id"]
        kwargs.update(dict(rand_vec=rand_vec, env_cls=ALL_V3_ENVIRONMENTS[task]))
        kwargs.update(metaworld._MT_OVERRIDE)
        tasks.append(metaworld._encode_task(task, kwargs))
    return tasks


def mt1_goals(tasks: Sequence[Task]) -> np.ndarray:
    """(N, d) float64: the ``rand_vec`` of each Task, read back from the pickle metaworld has
    just made in this process (never from a file)."""
    return np.stack([np.asarray(pickle.loads(t.data)["rand_vec"]) for t in tasks])


def _digest(tasks: Sequence[Task]) -> str:
    h = hashlib.sha256()
    for t in tasks:
        h.update(len(t.data).to_bytes(8, "little"))
        h.update(t.data)
    return h.hexdigest()


def _reject(path: Path, field: str, why: str) -> None:
    _log.info("%s: ignored, field %r %s; the goals are sampled again", path, field, why)


def load_goals(task: str, seed: int) -> list[Task] | None:
    """``task``'s MT1 Task list for ``seed``, rebuilt from the cached goals, or None when
    there is no usable file (missing, unreadable, corrupt, foreign: each is logged and
    ignored)."""
    import metaworld

    mw_version = _metaworld_version()
    path = goal_file(task, seed, mw_version)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        _log.info("%s: ignored, unreadable (%s); the goals are sampled again", path, exc)
        return None
    if not isinstance(payload, dict):
        _reject(path, "(top level)", "is not an object")
        return None
    expected = {"format": FORMAT, "metaworld": mw_version, "task": task, "seed": seed}
    for field, value in expected.items():
        if payload.get(field) != value or type(payload.get(field)) is not type(value):
            _reject(path, field, f"is {payload.get(field)!r}, not {value!r}")
            return None
    try:
        goals = np.array(payload.get("goals"))
    except ValueError:  # ragged rows
        _reject(path, "goals", "is not a rectangular list of numbers")
        return None
    n_goals = metaworld._N_GOALS
    if goals.dtype != np.float64 or goals.ndim != 2 or goals.shape[0] != n_goals:
        _reject(path, "goals", f"is {goals.dtype} {goals.shape}, not float64 ({n_goals}, d)")
        return None
    if goals.shape[1] < 1 or not np.isfinite(goals).all():
        _reject(path, "goals", "has no columns or a value that is not finite")
        return None
    tasks = mt1_tasks(task, goals)
    if _digest(tasks) != payload.get("sha256"):
        _reject(path, "sha256", "does not match the Task data rebuilt from the goals")
        return None
    return tasks


def save_goals(task: str, seed: int, tasks: Sequence[Task]) -> Path | None:
    """Write the goals of ``tasks`` (as ``metaworld.MT1(task, seed=seed)`` made them) to the
    cache, atomically; returns the file, or None when nothing was written: the numbers do
    not rebuild ``tasks`` exactly, or the cache directory is not writable (warned once)."""
    global _warned_unwritable
    goals = mt1_goals(tasks)
    numbers = json.loads(json.dumps(goals.tolist()))  # what a reader gets back
    rebuilt = mt1_tasks(task, np.array(numbers, dtype=np.float64))
    if [t.data for t in rebuilt] != [t.data for t in tasks]:
        _log.warning("goal cache: %s's goals do not rebuild exactly; not cached", task)
        return None
    mw_version = _metaworld_version()
    payload: dict[str, Any] = {
        "format": FORMAT,
        "metaworld": mw_version,
        "task": task,
        "seed": seed,
        "sha256": _digest(tasks),
        "goals": numbers,
    }
    path = goal_file(task, seed, mw_version)
    try:
        return write_json_atomic(path, payload)
    except OSError as exc:
        if not _warned_unwritable:
            _log.warning("goal cache not written, Meta-World builds sample goals: %s", exc)
            _warned_unwritable = True
        return None
