"""Write episodes as a new Minari dataset, atomically.

Episodes are built in memory as numpy arrays (``Episode``) and written with ``DatasetWriter``
into a hidden temporary directory under the root (``.dtmem-tmp-<uuid>``), which is renamed
into place only on ``commit()``. A write that fails (a full disk, an exception in the caller's
``with`` block) deletes the temporary directory and raises one line; a process killed
mid-write leaves a ``.dtmem-tmp-*`` directory that nothing lists or loads (safe to delete).
Either way nothing under ``<root>/<dataset_id>`` looks like a finished dataset until it is one.

Minari's ``EpisodeBuffer.add_step_data`` and ``DataCollector`` import jax, which is not
shipped: build whole episodes instead.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dtmem.data.episodes import (
    DataError,
    DatasetExistsError,
    DatasetFormatError,
    Episode,
    ObservationShapeError,
)
from dtmem.data.store import (
    DTMEM_METADATA_KEY,
    FORMAT_VERSION,
    TMP_PREFIX,
    ContentHasher,
    DatasetInfo,
    check_spaces,
    resolve_root,
    validate_dataset_id,
)
from dtmem.fileio import DiskError, disk_error, write_json_atomic

if TYPE_CHECKING:
    import gymnasium as gym
    from gymnasium.envs.registration import EnvSpec

__all__ = ["DatasetWriter", "write_dataset"]


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


def _stored_actions(actions: Any, space: Any, where: str) -> np.ndarray:
    """Actions cast to the action space's dtype; raises ``DatasetFormatError`` if they do not fit."""
    import gymnasium as gym

    out = _cast(actions, np.dtype(space.dtype), "actions", where)
    if isinstance(space, gym.spaces.Discrete):
        if out.ndim != 1:
            raise DatasetFormatError(f"{where}: discrete actions must be (T,), {out.shape}")
        lo, hi = int(space.start), int(space.start) + int(space.n)
        if out.size and (out.min() < lo or out.max() >= hi):
            raise DatasetFormatError(f"{where}: actions outside [{lo}, {hi})")
    elif out.shape[1:] != space.shape:
        raise DatasetFormatError(
            f"{where}: actions {out.shape[1:]} do not match the action space {space.shape}"
        )
    return out


def _stored_infos(infos: Mapping[str, Any], num_steps: int, where: str) -> dict[str, np.ndarray]:
    """Numeric infos of T+1 rows, 1-D ones reshaped to (T+1, 1) (Minari's arrow reader needs 2-D)."""
    out: dict[str, np.ndarray] = {}
    for key, value in infos.items():
        a = np.asarray(value)
        if a.ndim == 1:
            a = a.reshape(-1, 1)  # (T+1,) -> (T+1, 1)
        if a.ndim < 2 or a.shape[0] != num_steps + 1 or a.dtype.kind not in "biuf":
            raise DatasetFormatError(
                f"{where}: info {key!r} must be a numeric array of T+1 = "
                f"{num_steps + 1} rows, got {a.dtype} {a.shape}"
            )
        out[key] = a
    return out


def _check_env_spec(env_spec: EnvSpec | None, where: str) -> None:
    """Minari stores the spec as JSON; one that does not serialise (a callable entry point,
    as Meta-World registers) would leave a dataset whose env cannot be recovered."""
    if env_spec is None:
        return
    try:
        env_spec.to_json()
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: env_spec {env_spec.id!r} does not serialise ({exc})") from None


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
    ``with`` block, a failed write, or ``abort()`` deletes the temporary directory; a failed
    write raises ``dtmem.fileio.DiskError`` (one line naming the directory).

    ``env_spec`` (a gymnasium ``EnvSpec`` that serialises, see ``dtmem.data.env_specs``) is
    stored as Minari's ``env_spec`` so that ``recover_environment()`` rebuilds the env.
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
        env_spec: EnvSpec | None = None,
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
        check_spaces(observation_space, action_space, f"dataset {dataset_id}")
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
        _check_env_spec(env_spec, f"dataset {dataset_id}")
        self._tmp_dir = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        self._storage = self._new_storage(env_spec)
        self._pending: list[Any] = []
        self._hasher = ContentHasher()
        self._lengths: list[int] = []
        self._state = "open"
        self.info: DatasetInfo | None = None

    def _new_storage(self, env_spec: EnvSpec | None) -> Any:
        """An empty arrow dataset in the temporary directory (its metadata.json written)."""
        from minari.dataset.minari_storage import MinariStorage

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._tmp_dir.mkdir()
            # ``new`` writes the initial metadata.json; the writes go through the subclass
            MinariStorage.new(
                self._tmp_dir / "data",
                observation_space=self.observation_space,
                action_space=self.action_space,
                env_spec=env_spec,
                data_format="arrow",
                jpeg_encoding=False,  # Minari 0.5.4 JPEG-encodes image spaces by default: lossy
            )
            return _writer_storage_class()(
                self._tmp_dir / "data",
                self.observation_space,
                self.action_space,
                jpeg_encoding=False,
            )
        except OSError as exc:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            raise disk_error(self.root, exc) from None
        except BaseException:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            raise

    # -- episodes ------------------------------------------------------------------------

    def normalize(self, episode: Episode) -> Episode:
        """The episode exactly as it will be stored (and hashed); raises ``DataError`` if bad.

        Observations and actions are cast to the spaces' dtypes, rewards to float32, flags to
        bool, 1-D infos reshaped to (T+1, 1).
        """
        where = f"dataset {self.dataset_id}: episode {len(self._lengths)}"
        obs_space = self.observation_space
        obs = _cast(episode.observations, np.dtype(obs_space.dtype), "observations", where)
        if obs.shape[1:] != obs_space.shape:
            raise ObservationShapeError(
                f"{where}: observations {obs.shape[1:]} do not match the observation space "
                f"{obs_space.shape}"
            )
        out = Episode(
            observations=obs,
            actions=_stored_actions(episode.actions, self.action_space, where),
            rewards=_cast(episode.rewards, np.dtype(np.float32), "rewards", where),
            terminations=np.asarray(episode.terminations).astype(bool),
            truncations=np.asarray(episode.truncations).astype(bool),
            infos=_stored_infos(episode.infos, episode.num_steps, where),
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
        """Write the queued episodes into the temporary dataset; a failed write aborts."""
        if not self._pending:
            return
        try:
            self._storage.update_episodes(self._pending)
        except OSError as exc:
            self.abort()
            raise disk_error(self.final_dir, exc) from None
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
        if self._state != "open":
            raise RuntimeError(f"dataset {self.dataset_id}: writer is {self._state}")
        try:
            self.flush()
            if not self._lengths:
                raise DataError(f"dataset {self.dataset_id}: no episodes to write")
            self._write_metadata()
            self._move_into_place()
        except DiskError:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise disk_error(self.final_dir, exc) from None
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
            content_hash=self._hasher.hexdigest(),
        )
        return self.info

    def _write_metadata(self) -> None:
        import minari

        dtmem_meta = {
            "format": FORMAT_VERSION,
            "env_id": self.env_id,
            "task": self.task,
            "content_hash": self._hasher.hexdigest(),
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

    def _move_into_place(self) -> None:
        _ensure_namespaces(self.root, self.dataset_id)
        self.final_dir.parent.mkdir(parents=True, exist_ok=True)
        old: Path | None = None
        if self.final_dir.exists():
            if not self._overwrite:
                raise DatasetExistsError(
                    f"{self.final_dir}: dataset {self.dataset_id!r} appeared while writing"
                )
            old = self.root / f"{TMP_PREFIX}old-{uuid.uuid4().hex}"
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
