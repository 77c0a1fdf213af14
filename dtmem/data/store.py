"""Where Minari datasets live, what names they may have, and what identifies their content.

The root is, in order: the ``root`` argument, $MINARI_DATASETS_PATH, ~/.minari/datasets.
Dataset ids follow Minari: ``(namespace/)name-v<version>``, the version is required; an id
is also a path under the root, so nothing else (no ``..``, no absolute path) is accepted.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dtmem.data.episodes import DataError, DatasetFormatError, Episode

__all__ = [
    "DTMEM_METADATA_KEY",
    "FORMAT_VERSION",
    "MIN_FREE_BYTES",
    "TMP_PREFIX",
    "ContentHasher",
    "DatasetInfo",
    "check_dataset_root",
    "check_spaces",
    "content_hash",
    "dataset_dir",
    "resolve_root",
    "validate_dataset_id",
]

DTMEM_METADATA_KEY = "dtmem"
FORMAT_VERSION = 1
TMP_PREFIX = ".dtmem-tmp-"  # a writer's work in progress: never listed, never loaded
MIN_FREE_BYTES = 100 * 2**20  # what a dataset root must have free before a stage writes to it
# Minari's DATASET_ID_RE with the version made mandatory (minari's parser fails without one).
_DATASET_ID_RE = re.compile(r"^(?:[-_\w][-_\w/]*[-_\w]+/)?[-_\w]+?-v\d+$")


# ---------------------------------------------------------------------------------------------
# Where datasets live


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The datasets root: ``root`` if given, else $MINARI_DATASETS_PATH, else ~/.minari/datasets."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("MINARI_DATASETS_PATH")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".minari" / "datasets"


def validate_dataset_id(dataset_id: str) -> None:
    """Raise ``DataError`` unless ``dataset_id`` is ``(namespace/)name-v<version>``."""
    if not _DATASET_ID_RE.fullmatch(dataset_id):
        raise DataError(
            f"dataset id {dataset_id!r}: expected (namespace/)name-v<version>, "
            "e.g. 'dtmem/atari/breakout-dqn-v0'"
        )


def dataset_dir(dataset_id: str, root: str | os.PathLike[str] | None = None) -> Path:
    """``<root>/<dataset_id>``, the directory that holds ``data/``."""
    validate_dataset_id(dataset_id)
    return resolve_root(root) / dataset_id


def check_dataset_root(
    root: str | os.PathLike[str] | None, need_bytes: int = MIN_FREE_BYTES
) -> Path:
    """The resolved root, once it is known to be writable with ``need_bytes`` free.

    Called before any compute whose output goes to the root (collection, import), so that a
    read-only or full disk is refused in one line (``dtmem.fileio.DiskError``) instead of at
    the end of the work.
    """
    from dtmem.fileio import check_writable

    return check_writable(resolve_root(root), min_free_bytes=need_bytes)


# ---------------------------------------------------------------------------------------------
# Content hash


def _episode_arrays(episode: Episode) -> Iterator[tuple[str, np.ndarray]]:
    yield "observations", episode.observations
    yield "actions", episode.actions
    yield "rewards", episode.rewards
    yield "terminations", episode.terminations
    yield "truncations", episode.truncations
    for key in sorted(episode.infos):
        yield f"infos/{key}", episode.infos[key]


class ContentHasher:
    """sha256 over episodes in order: for every array (observations, actions, rewards,
    terminations, truncations, then infos by sorted key) its name, dtype, shape and bytes.

    The same episodes give the same hash whether they come from memory or from disk, because
    the writer stores exactly the arrays it hashes (cast to the spaces' dtypes, rewards
    float32, flags bool, 1-D infos as (T+1, 1)).
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256(b"dtmem-episodes-v1\0")

    def update(self, episode: Episode) -> None:
        for name, array in _episode_arrays(episode):
            a = np.ascontiguousarray(array)
            shape = ",".join(str(n) for n in a.shape)
            self._sha.update(f"{name}|{a.dtype.str}|{shape}\0".encode())
            self._sha.update(a.reshape(-1).view(np.uint8).data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def content_hash(episodes: Iterable[Episode]) -> str:
    """Hex sha256 of ``episodes`` in order (see ``ContentHasher``)."""
    hasher = ContentHasher()
    for episode in episodes:
        hasher.update(episode)
    return hasher.hexdigest()


# ---------------------------------------------------------------------------------------------
# Dataset summary


@dataclass(frozen=True)
class DatasetInfo:
    """What identifies a dataset in a run: id, where it is, what it holds, its content hash."""

    dataset_id: str
    path: Path
    env_id: str | None
    task: str | None
    total_episodes: int
    total_steps: int
    content_hash: str | None  # None for datasets written elsewhere (see verify_content_hash)

    def mlflow_tags(self) -> dict[str, str]:
        """``{"data.<dataset_id>.content_hash": hash}`` for ``mlflow.set_tags``."""
        return {f"data.{self.dataset_id}.content_hash": self.content_hash or "unknown"}


# ---------------------------------------------------------------------------------------------
# Spaces


def check_spaces(observation_space: Any, action_space: Any, where: str) -> None:
    import gymnasium as gym

    if not isinstance(observation_space, gym.spaces.Box):
        raise DatasetFormatError(
            f"{where}: observation space must be a Box, got {type(observation_space).__name__}"
        )
    if not isinstance(action_space, gym.spaces.Box | gym.spaces.Discrete):
        raise DatasetFormatError(
            f"{where}: action space must be Box or Discrete, got {type(action_space).__name__}"
        )
