"""Minari datasets on disk: where they live, an atomic writer, a lazy reader, input checks.

Layout (Minari 0.5's own, so ``minari.load_dataset(dataset_id)`` opens what is written here
when MINARI_DATASETS_PATH points at the same root, and datasets written by Minari elsewhere
read here):

    <root>/<dataset_id>/data/metadata.json          dataset metadata (spaces, counts, ...)
    <root>/<dataset_id>/data/<i>/part-0.arrow       episode i (arrow format, uncompressed)
    <root>/<dataset_id>/data/<i>/metadata.json      episode i's metadata (total_steps)

The root is, in order: the ``root`` argument, $MINARI_DATASETS_PATH, ~/.minari/datasets.
Dataset ids follow Minari: ``(namespace/)name-v<version>``, the version is required.

What dtmem adds to Minari's metadata, under the key "dtmem":

    env_id           the environment the data was recorded on ("ALE/Breakout-v5",
                     "Meta-World/reach-v3"); Meta-World's EnvSpec does not serialise, so
                     datasets are written with env=None plus explicit spaces and this id
    task             the task or game name ("reach-v3", "Breakout")
    content_hash     sha256 over the episodes' arrays in order (see ``ContentHasher``)
    episode_lengths  T of every episode, so opening a dataset reads one file
    format           1

Writing: episodes are built in memory as numpy arrays (``Episode``) and written with
``DatasetWriter`` into a hidden temporary directory under the root, which is renamed into
place only on ``commit()``; an interrupted writer leaves a ``.dtmem-tmp-*`` directory that
nothing lists or loads (safe to delete). Minari's ``EpisodeBuffer.add_step_data`` and
``DataCollector`` import jax, which is not shipped: build whole episodes instead.

Reading: ``DatasetReader`` reads the metadata when opened and one episode per call. Arrow
episodes are memory-mapped (zero copy: a window of an 84x84 Atari episode touches only its
own pages); other formats (parquet, hdf5, JPEG-encoded images) go through Minari's decoder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dtmem.data.episodes import (
    DataError,
    DatasetExistsError,
    DatasetFormatError,
    DatasetNotFoundError,
    EnvMismatchError,
    Episode,
    ObservationShapeError,
)
from dtmem.fileio import write_json_atomic

if TYPE_CHECKING:
    import gymnasium as gym

__all__ = [
    "DTMEM_METADATA_KEY",
    "ContentHasher",
    "DatasetInfo",
    "DatasetReader",
    "DatasetWriter",
    "check_env",
    "check_observation_shape",
    "content_hash",
    "dataset_dir",
    "open_dataset",
    "resolve_root",
    "validate_dataset",
    "validate_dataset_id",
    "window_obs_shape",
    "write_dataset",
]

DTMEM_METADATA_KEY = "dtmem"
FORMAT_VERSION = 1
_TMP_PREFIX = ".dtmem-tmp-"
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
# Writing


def _check_spaces(observation_space: Any, action_space: Any, where: str) -> None:
    import gymnasium as gym

    if not isinstance(observation_space, gym.spaces.Box):
        raise DatasetFormatError(
            f"{where}: observation space must be a Box, got {type(observation_space).__name__}"
        )
    if not isinstance(action_space, gym.spaces.Box | gym.spaces.Discrete):
        raise DatasetFormatError(
            f"{where}: action space must be Box or Discrete, got {type(action_space).__name__}"
        )


def _cast(array: Any, dtype: np.dtype[Any], what: str, where: str) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype == dtype:
        return a
    if not np.can_cast(a.dtype, dtype, casting="same_kind") and not (
        np.issubdtype(a.dtype, np.integer) and np.issubdtype(dtype, np.integer)
    ):
        raise DatasetFormatError(f"{where}: {what} of dtype {a.dtype} do not fit {dtype}")
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(dtype, np.integer) and a.size:
        info = np.iinfo(dtype)
        if a.min() < info.min or a.max() > info.max:
            raise DatasetFormatError(f"{where}: {what} out of range for {dtype}")
    return a.astype(dtype)


@cache
def _writer_storage_class() -> type:
    """Minari's ArrowStorage without its per-episode size walk.

    ``ArrowStorage.update_episodes`` recomputes the dataset size (a glob over every file) after
    each episode, which makes writing E episodes O(E^2): 500 Meta-World episodes took 10 s,
    1000 would take 40 s. The on-disk format is unchanged; the size is written once on commit.
    """
    from minari.dataset._storages.arrow_storage import ArrowStorage

    class _ArrowWriterStorage(ArrowStorage):
        def get_size(self) -> float:
            return 0.0

    return _ArrowWriterStorage


def _dir_size_mb(path: Path) -> float:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return round(total / 1e6, 1)


def _ensure_namespaces(root: Path, dataset_id: str) -> None:
    """Write Minari's ``namespace_metadata.json`` in each namespace directory that lacks one."""
    parts = dataset_id.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        ns_dir = root.joinpath(*parts[:depth])
        ns_dir.mkdir(parents=True, exist_ok=True)
        meta = ns_dir / "namespace_metadata.json"
        if not meta.exists():
            write_json_atomic(meta, {})


class DatasetWriter:
    """Write episodes into a new Minari dataset, atomically.

    Usage::

        with DatasetWriter("dtmem/metaworld/reach-expert-v0", observation_space=env.observation_space,
                           action_space=env.action_space, env_id="Meta-World/reach-v3",
                           task="reach-v3") as writer:
            for episode in episodes:
                writer.add_episode(episode)
        info = writer.info          # dataset_id, content_hash, counts, path

    Episodes go to disk every ``flush_episodes`` episodes (memory holds at most that many),
    into ``<root>/.dtmem-tmp-<uuid>/``; ``commit()`` (called by a clean ``with`` exit) writes
    the metadata and renames the directory to ``<root>/<dataset_id>``. An exception inside the
    ``with`` block, or ``abort()``, deletes the temporary directory.
    """

    def __init__(
        self,
        dataset_id: str,
        *,
        observation_space: gym.spaces.Space[Any],
        action_space: gym.spaces.Space[Any],
        env_id: str,
        task: str | None = None,
        root: str | os.PathLike[str] | None = None,
        description: str | None = None,
        algorithm_name: str | None = None,
        author: str | None = None,
        extra_metadata: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        flush_episodes: int = 16,
    ) -> None:
        validate_dataset_id(dataset_id)
        self.dataset_id = dataset_id
        self.root = resolve_root(root)
        self.final_dir = self.root / dataset_id
        if self.final_dir.exists() and not overwrite:
            raise DatasetExistsError(
                f"{self.final_dir}: dataset {dataset_id!r} already exists (pass overwrite=True)"
            )
        _check_spaces(observation_space, action_space, f"dataset {dataset_id}")
        self.observation_space = observation_space
        self.action_space = action_space
        self.env_id = env_id
        self.task = task
        self._overwrite = overwrite
        self._flush_episodes = max(1, flush_episodes)
        self._metadata: dict[str, Any] = {}
        if description is not None:
            self._metadata["description"] = description
        if algorithm_name is not None:
            self._metadata["algorithm_name"] = algorithm_name
        if author is not None:
            self._metadata["author"] = {author}
        self._extra = dict(extra_metadata or {})

        from minari.dataset.minari_storage import MinariStorage

        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp_dir = self.root / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        self._tmp_dir.mkdir()
        try:
            # ``new`` writes the initial metadata.json; the writes go through the subclass
            MinariStorage.new(
                self._tmp_dir / "data",
                observation_space=observation_space,
                action_space=action_space,
                data_format="arrow",
                jpeg_encoding=False,  # Minari 0.5.4 JPEG-encodes image spaces by default: lossy
            )
            self._storage = _writer_storage_class()(
                self._tmp_dir / "data", observation_space, action_space, jpeg_encoding=False
            )
        except BaseException:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            raise
        self._pending: list[Any] = []
        self._hasher = ContentHasher()
        self._lengths: list[int] = []
        self._state = "open"
        self.info: DatasetInfo | None = None

    # -- episodes ------------------------------------------------------------------------

    def normalize(self, episode: Episode) -> Episode:
        """The episode exactly as it will be stored (and hashed); raises ``DataError`` if bad.

        Observations and actions are cast to the spaces' dtypes, rewards to float32, flags to
        bool, 1-D infos reshaped to (T+1, 1).
        """
        import gymnasium as gym

        where = f"dataset {self.dataset_id}: episode {len(self._lengths)}"
        obs_space = self.observation_space
        assert isinstance(obs_space, gym.spaces.Box)
        obs = _cast(episode.observations, np.dtype(obs_space.dtype), "observations", where)
        if obs.shape[1:] != obs_space.shape:
            raise ObservationShapeError(
                f"{where}: observations {obs.shape[1:]} do not match the observation space "
                f"{obs_space.shape}"
            )
        act_space = self.action_space
        actions = _cast(episode.actions, np.dtype(act_space.dtype), "actions", where)
        if isinstance(act_space, gym.spaces.Discrete):
            if actions.ndim != 1:
                raise DatasetFormatError(f"{where}: discrete actions must be (T,), {actions.shape}")
            lo, hi = int(act_space.start), int(act_space.start) + int(act_space.n)
            if actions.size and (actions.min() < lo or actions.max() >= hi):
                raise DatasetFormatError(f"{where}: actions outside [{lo}, {hi})")
        elif actions.shape[1:] != act_space.shape:
            raise DatasetFormatError(
                f"{where}: actions {actions.shape[1:]} do not match the action space "
                f"{act_space.shape}"
            )
        infos: dict[str, np.ndarray] = {}
        for key, value in episode.infos.items():
            a = np.asarray(value)
            if a.ndim == 1:
                a = a.reshape(-1, 1)  # (T+1,) -> (T+1, 1): Minari's arrow reader needs >= 2-D
            if a.ndim < 2 or a.shape[0] != episode.num_steps + 1 or a.dtype.kind not in "biuf":
                raise DatasetFormatError(
                    f"{where}: info {key!r} must be a numeric array of T+1 = "
                    f"{episode.num_steps + 1} rows, got {a.dtype} {a.shape}"
                )
            infos[key] = a
        out = Episode(
            observations=obs,
            actions=actions,
            rewards=_cast(episode.rewards, np.dtype(np.float32), "rewards", where),
            terminations=np.asarray(episode.terminations).astype(bool),
            truncations=np.asarray(episode.truncations).astype(bool),
            infos=infos,
        )
        out.check(where)
        return out

    def add_episode(self, episode: Episode) -> None:
        """Validate, hash and queue one episode; flushes to disk every ``flush_episodes``."""
        from minari.data_collector.episode_buffer import EpisodeBuffer

        if self._state != "open":
            raise RuntimeError(f"dataset {self.dataset_id}: writer is {self._state}")
        ep = self.normalize(episode)
        self._hasher.update(ep)
        self._lengths.append(ep.num_steps)
        self._pending.append(
            EpisodeBuffer(
                observations=ep.observations,
                actions=ep.actions,
                rewards=ep.rewards,
                terminations=ep.terminations,
                truncations=ep.truncations,
                infos=dict(ep.infos) or None,
            )
        )
        if len(self._pending) >= self._flush_episodes:
            self.flush()

    def add_episodes(self, episodes: Iterable[Episode]) -> None:
        for episode in episodes:
            self.add_episode(episode)

    def set_metadata(self, **values: Any) -> None:
        """Add JSON-serialisable entries to the dataset's "dtmem" metadata (written on commit)."""
        self._extra.update(values)

    def flush(self) -> None:
        """Write the queued episodes into the temporary dataset."""
        if self._pending:
            self._storage.update_episodes(self._pending)
            self._pending = []

    @property
    def num_episodes(self) -> int:
        return len(self._lengths)

    @property
    def num_steps(self) -> int:
        return sum(self._lengths)

    # -- commit / abort ------------------------------------------------------------------

    def commit(self) -> DatasetInfo:
        """Write the metadata and move the dataset into place; returns its ``DatasetInfo``."""
        import minari

        if self._state != "open":
            raise RuntimeError(f"dataset {self.dataset_id}: writer is {self._state}")
        try:
            self.flush()
            if not self._lengths:
                raise DataError(f"dataset {self.dataset_id}: no episodes to write")
            digest = self._hasher.hexdigest()
            dtmem_meta = {
                "format": FORMAT_VERSION,
                "env_id": self.env_id,
                "task": self.task,
                "content_hash": digest,
                "episode_lengths": [int(n) for n in self._lengths],
                **self._extra,
            }
            self._storage.update_metadata(
                {
                    **self._metadata,
                    "dataset_id": self.dataset_id,
                    "minari_version": minari.__version__,
                    DTMEM_METADATA_KEY: dtmem_meta,
                }
            )
            self._storage.update_metadata({"dataset_size": _dir_size_mb(self._tmp_dir)})
            self._move_into_place()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        self.info = DatasetInfo(
            dataset_id=self.dataset_id,
            path=self.final_dir,
            env_id=self.env_id,
            task=self.task,
            total_episodes=len(self._lengths),
            total_steps=sum(self._lengths),
            content_hash=digest,
        )
        return self.info

    def _move_into_place(self) -> None:
        _ensure_namespaces(self.root, self.dataset_id)
        self.final_dir.parent.mkdir(parents=True, exist_ok=True)
        old: Path | None = None
        if self.final_dir.exists():
            if not self._overwrite:
                raise DatasetExistsError(
                    f"{self.final_dir}: dataset {self.dataset_id!r} appeared while writing"
                )
            old = self.root / f"{_TMP_PREFIX}old-{uuid.uuid4().hex}"
            os.rename(self.final_dir, old)
        os.rename(self._tmp_dir, self.final_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Drop everything written so far; the target dataset is untouched."""
        if self._state == "open":
            self._state = "aborted"
            self._pending = []
            shutil.rmtree(self._tmp_dir, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and self._state == "open":
            self.commit()
        else:
            self.abort()


def write_dataset(
    dataset_id: str,
    episodes: Iterable[Episode],
    *,
    observation_space: gym.spaces.Space[Any],
    action_space: gym.spaces.Space[Any],
    env_id: str,
    task: str | None = None,
    root: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    **metadata: Any,
) -> DatasetInfo:
    """Write ``episodes`` as a new dataset atomically; ``metadata`` goes to ``DatasetWriter``."""
    writer = DatasetWriter(
        dataset_id,
        observation_space=observation_space,
        action_space=action_space,
        env_id=env_id,
        task=task,
        root=root,
        overwrite=overwrite,
        **metadata,
    )
    with writer:
        writer.add_episodes(episodes)
    assert writer.info is not None
    return writer.info


# ---------------------------------------------------------------------------------------------
# Reading


def _flatten_infos(infos: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in infos.items():
        if isinstance(value, Mapping):
            out.update(_flatten_infos(value, prefix=f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def _arrow_infos(column: Any, n: int, prefix: str = "") -> dict[str, np.ndarray]:
    """Decode Minari's arrow ``infos`` struct column (the inverse of its ``_encode_info``)."""
    import pyarrow as pa

    out: dict[str, np.ndarray] = {}
    for i, fld in enumerate(column.type):
        child = column.field(i)
        name = f"{prefix}{fld.name}"
        if pa.types.is_struct(fld.type):
            out.update(_arrow_infos(child, n, prefix=f"{name}/"))
        elif pa.types.is_fixed_size_list(fld.type):
            values = child.flatten().to_numpy(zero_copy_only=False)
            shape: tuple[int, ...] = (-1,)
            if fld.metadata and b"shape" in fld.metadata and fld.metadata[b"shape"]:
                shape = tuple(int(d) for d in fld.metadata[b"shape"].split(b","))
            out[name] = values.reshape(n, *shape)
        else:
            out[name] = np.asarray(child.to_numpy(zero_copy_only=False))
    return out


class DatasetReader:
    """Read access to one Minari dataset: metadata when opened, episodes on demand.

    ``read_episode(i)`` returns an ``Episode`` checked for shape and NaN/inf; arrow episodes
    are memory-mapped, so the returned arrays are read-only views of the file.
    """

    def __init__(self, path: Path, dataset_id: str) -> None:
        from minari.serialization import deserialize_space

        self.path = path
        self.data_path = path / "data"
        meta_file = self.data_path / "metadata.json"
        try:
            self.metadata: dict[str, Any] = json.loads(meta_file.read_text())
        except FileNotFoundError:
            raise DatasetNotFoundError(
                f"{path}: no Minari dataset {dataset_id!r} (set data.root or "
                "MINARI_DATASETS_PATH to the directory that holds it)"
            ) from None
        except (OSError, ValueError) as exc:
            raise DatasetFormatError(f"{meta_file}: unreadable metadata ({exc})") from None
        self.dataset_id = str(self.metadata.get("dataset_id", dataset_id))
        try:
            self.observation_space = deserialize_space(self.metadata["observation_space"])
            self.action_space = deserialize_space(self.metadata["action_space"])
            self.total_episodes = int(self.metadata["total_episodes"])
            self.total_steps = int(self.metadata["total_steps"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetFormatError(f"{meta_file}: missing or bad field ({exc})") from None
        _check_spaces(self.observation_space, self.action_space, str(meta_file))
        self.data_format = str(self.metadata.get("data_format", "hdf5"))
        # Minari 0.5.4 treats a missing "jpeg_encoding" as True, but datasets written by other
        # Minari releases store raw images and have no such key: default to False.
        self.jpeg_encoding = bool(self.metadata.get("jpeg_encoding", False))
        self._dtmem: dict[str, Any] = dict(self.metadata.get(DTMEM_METADATA_KEY) or {})
        self._storage: Any = None

    # -- metadata ------------------------------------------------------------------------

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self.observation_space.shape or ())

    @property
    def env_id(self) -> str | None:
        """The recording env: dtmem's metadata, else the id in Minari's ``env_spec``."""
        if self._dtmem.get("env_id"):
            return str(self._dtmem["env_id"])
        spec = self.metadata.get("env_spec")
        if isinstance(spec, str):
            try:
                env = json.loads(spec).get("id")
            except ValueError:
                return None
            return str(env) if env else None
        return None

    @property
    def task(self) -> str | None:
        task = self._dtmem.get("task")
        return str(task) if task else None

    @property
    def stored_content_hash(self) -> str | None:
        digest = self._dtmem.get("content_hash")
        return str(digest) if digest else None

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(
            dataset_id=self.dataset_id,
            path=self.path,
            env_id=self.env_id,
            task=self.task,
            total_episodes=self.total_episodes,
            total_steps=self.total_steps,
            content_hash=self.stored_content_hash,
        )

    def episode_lengths(self) -> np.ndarray:
        """(E,) int64, T of every episode: from dtmem's metadata, else each episode's metadata."""
        lengths = self._dtmem.get("episode_lengths")
        if isinstance(lengths, list) and len(lengths) == self.total_episodes:
            return np.asarray(lengths, dtype=np.int64)
        metas = self._minari_storage().get_episode_metadata(range(self.total_episodes))
        return np.asarray([int(m["total_steps"]) for m in metas], dtype=np.int64)

    def episode_path(self, index: int) -> Path:
        """The file or directory holding episode ``index`` (for error messages)."""
        if self.data_format in ("arrow", "parquet"):
            return self.data_path / str(index)
        return self.data_path / "main_data.hdf5"

    # -- episodes ------------------------------------------------------------------------

    def read_episode(self, index: int) -> Episode:
        """Episode ``index`` (0 <= index < total_episodes), checked for shape and NaN/inf."""
        if not 0 <= index < self.total_episodes:
            raise IndexError(f"{self.path}: episode {index} of {self.total_episodes}")
        episode = None
        if self.data_format == "arrow" and not self.jpeg_encoding:
            episode = self._read_arrow_mmap(index)
        if episode is None:
            episode = self._read_with_minari(index)
        episode.check(str(self.episode_path(index)))
        return episode

    def iter_episodes(self) -> Iterator[Episode]:
        for index in range(self.total_episodes):
            yield self.read_episode(index)

    def _read_arrow_mmap(self, index: int) -> Episode | None:
        """Zero-copy read of an arrow episode; None if the layout is not the plain one."""
        import pyarrow as pa

        ep_dir = self.data_path / str(index)
        try:
            files = [p for p in ep_dir.iterdir() if p.suffix == ".arrow"]
        except FileNotFoundError:
            raise DatasetFormatError(f"{ep_dir}: episode directory missing") from None
        if len(files) != 1:
            return None
        try:
            table = pa.ipc.open_file(pa.memory_map(str(files[0]))).read_all()
        except (OSError, pa.ArrowInvalid) as exc:
            raise DatasetFormatError(f"{files[0]}: unreadable arrow file ({exc})") from None
        n = table.num_rows  # T + 1

        def column(name: str) -> Any:
            col = table.column(name)
            return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()

        def fixed(name: str, shape: tuple[int, ...]) -> np.ndarray:
            values = column(name).flatten().to_numpy(zero_copy_only=False)
            return values.reshape(n, *shape)  # (T+1, *shape)

        import gymnasium as gym

        try:
            observations = fixed("observations", self.obs_shape)
            if isinstance(self.action_space, gym.spaces.Discrete):
                actions = column("actions").to_numpy(zero_copy_only=False)[:-1]
            else:
                actions = fixed("actions", tuple(self.action_space.shape or ()))[:-1]
            rewards = column("rewards").to_numpy(zero_copy_only=False)[:-1]
            terminations = column("terminations").to_numpy(zero_copy_only=False)[:-1]
            truncations = column("truncations").to_numpy(zero_copy_only=False)[:-1]
            infos = _arrow_infos(column("infos"), n) if "infos" in table.column_names else {}
        except (KeyError, ValueError, pa.ArrowInvalid) as exc:
            raise DatasetFormatError(f"{files[0]}: unexpected episode layout ({exc})") from None
        return Episode(observations, actions, rewards, terminations, truncations, infos)

    def _minari_storage(self) -> Any:
        if self._storage is None:
            from minari.dataset._storages import get_minari_storage

            try:
                storage_cls = get_minari_storage(self.data_format)
            except ImportError as exc:
                raise DatasetFormatError(
                    f"{self.data_path}: {self.data_format} datasets need a missing package ({exc})"
                ) from None
            except KeyError:
                raise DatasetFormatError(
                    f"{self.data_path}: unknown data format {self.data_format!r}"
                ) from None
            self._storage = storage_cls(
                self.data_path,
                self.observation_space,
                self.action_space,
                jpeg_encoding=self.jpeg_encoding,
            )
        return self._storage

    def _read_with_minari(self, index: int) -> Episode:
        where = self.episode_path(index)
        try:
            (data,) = list(self._minari_storage().get_episodes([index]))
        except DataError:
            raise
        except Exception as exc:  # minari/pyarrow/h5py raise many types; keep one line
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DatasetFormatError(f"{where}: cannot read episode {index} ({first})") from None
        return Episode(
            observations=np.asarray(data["observations"]),
            actions=np.asarray(data["actions"]),
            rewards=np.asarray(data["rewards"]),
            terminations=np.asarray(data["terminations"]),
            truncations=np.asarray(data["truncations"]),
            infos=_flatten_infos(data.get("infos") or {}),
        )

    def verify_content_hash(self) -> str:
        """Recompute the content hash over every episode; raise if it differs from the stored one."""
        digest = content_hash(self.iter_episodes())
        stored = self.stored_content_hash
        if stored is not None and stored != digest:
            raise DatasetFormatError(
                f"{self.data_path}: content hash {digest[:12]}... differs from the stored "
                f"{stored[:12]}... (the data changed after it was written)"
            )
        return digest


def open_dataset(dataset_id: str, root: str | os.PathLike[str] | None = None) -> DatasetReader:
    """Open ``<root>/<dataset_id>``; raises ``DatasetNotFoundError`` naming the path if absent."""
    return DatasetReader(dataset_dir(dataset_id, root), dataset_id)


# ---------------------------------------------------------------------------------------------
# Input checks


def window_obs_shape(obs_shape: tuple[int, ...], frame_stack: int) -> tuple[int, ...]:
    """The per-step observation shape in a window: (frame_stack, *obs_shape) if stacking."""
    return (frame_stack, *obs_shape) if frame_stack > 1 else tuple(obs_shape)


def check_observation_shape(
    reader: DatasetReader, expected: tuple[int, ...], frame_stack: int = 1
) -> None:
    """Raise ``ObservationShapeError`` unless the dataset's windows have shape ``expected``."""
    got = window_obs_shape(reader.obs_shape, frame_stack)
    if tuple(expected) != got:
        stacked = f" stacked x{frame_stack}" if frame_stack > 1 else ""
        raise ObservationShapeError(
            f"{reader.path}: observations {reader.obs_shape}{stacked} give {got}, but the model "
            f"expects {tuple(expected)}"
        )


def check_env(reader: DatasetReader, expected: str) -> None:
    """Raise ``EnvMismatchError`` unless ``expected`` names the dataset's env id or task.

    The comparison ignores case: "ALE/Breakout-v5", "breakout" and "Breakout" all match a
    dataset recorded on ALE/Breakout-v5 with task Breakout.
    """
    names = {n.lower() for n in (reader.env_id, reader.task) if n}
    if not names:
        raise EnvMismatchError(
            f"{reader.path}: the dataset records no env id, so it cannot be checked against "
            f"{expected!r} (leave the dataset's env unset to skip the check)"
        )
    if expected.lower() not in names:
        raise EnvMismatchError(
            f"{reader.path}: recorded on {reader.env_id!r} (task {reader.task!r}), but the "
            f"config names {expected!r}"
        )


def validate_dataset(
    dataset_id: str,
    root: str | os.PathLike[str] | None = None,
    *,
    env: str | None = None,
    obs_shape: tuple[int, ...] | None = None,
    frame_stack: int = 1,
) -> DatasetInfo:
    """Full check: exists, env, observation shape, every episode readable and finite, hash.

    Reads every episode once (seconds for Meta-World, minutes for a 500k-frame Atari game).
    Returns the dataset's ``DatasetInfo`` with the verified (or, for foreign datasets, newly
    computed) content hash.
    """
    reader = open_dataset(dataset_id, root)
    if env is not None:
        check_env(reader, env)
    if obs_shape is not None:
        check_observation_shape(reader, obs_shape, frame_stack)
    digest = reader.verify_content_hash()
    info = reader.info
    return DatasetInfo(**{**info.__dict__, "content_hash": digest})
