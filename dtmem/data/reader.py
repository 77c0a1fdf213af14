"""Read one Minari dataset: its metadata when opened, one episode per call.

Layout (Minari 0.5's own, so ``minari.load_dataset(dataset_id)`` opens what dtmem writes when
MINARI_DATASETS_PATH points at the same root, and datasets written by Minari elsewhere read
here):

    <root>/<dataset_id>/data/metadata.json          dataset metadata (spaces, counts, ...)
    <root>/<dataset_id>/data/<i>/part-0.arrow       episode i (arrow format, uncompressed)
    <root>/<dataset_id>/data/<i>/metadata.json      episode i's metadata (total_steps)

What dtmem adds to Minari's metadata, under the key "dtmem":

    env_id           the environment the data was recorded on ("ALE/Breakout-v5",
                     "Meta-World/reach-v3")
    task             the task or game name ("reach-v3", "Breakout")
    content_hash     sha256 over the episodes' arrays in order (see ``ContentHasher``)
    episode_lengths  T of every episode, so opening a dataset reads one file
    format           1

Arrow episodes are memory-mapped (zero copy: a window of an 84x84 Atari episode touches only
its own pages); other formats (parquet, hdf5, JPEG-encoded images) go through Minari's
decoder. A file that is missing, truncated or disagrees with the metadata raises a
``DataError`` whose one line names the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dtmem.data.episodes import (
    DataError,
    DatasetFormatError,
    DatasetNotFoundError,
    Episode,
)
from dtmem.data.store import (
    DTMEM_METADATA_KEY,
    DatasetInfo,
    check_spaces,
    content_hash,
    dataset_dir,
)

__all__ = ["DatasetReader", "open_dataset"]


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_metadata(meta_file: Path, path: Path, dataset_id: str) -> dict[str, Any]:
    """The dataset's metadata.json as a dict; one-line errors for absent, unreadable or bad JSON."""
    try:
        metadata = json.loads(meta_file.read_text())
    except FileNotFoundError:
        if path.is_dir():
            raise DatasetFormatError(
                f"{meta_file}: missing (an incomplete or damaged dataset; write it again)"
            ) from None
        raise DatasetNotFoundError(
            f"{path}: no Minari dataset {dataset_id!r} (set data.root or "
            "MINARI_DATASETS_PATH to the directory that holds it)"
        ) from None
    except (OSError, ValueError) as exc:
        raise DatasetFormatError(f"{meta_file}: unreadable metadata ({_first_line(exc)})") from None
    if not isinstance(metadata, dict):
        raise DatasetFormatError(f"{meta_file}: not a Minari metadata object")
    return metadata


class DatasetReader:
    """Read access to one Minari dataset: metadata when opened, episodes on demand.

    ``read_episode(i)`` returns an ``Episode`` checked for shape and NaN/inf; arrow episodes
    are memory-mapped, so the returned arrays are read-only views of the file.
    """

    def __init__(self, path: Path, dataset_id: str) -> None:
        from minari.serialization import deserialize_space

        self.path = path
        self.data_path = path / "data"
        self.metadata_file = self.data_path / "metadata.json"
        self.metadata: dict[str, Any] = _read_metadata(self.metadata_file, path, dataset_id)
        self.dataset_id = str(self.metadata.get("dataset_id", dataset_id))
        try:
            self.observation_space = deserialize_space(self.metadata["observation_space"])
            self.action_space = deserialize_space(self.metadata["action_space"])
            self.total_episodes = int(self.metadata["total_episodes"])
            self.total_steps = int(self.metadata["total_steps"])
        except (KeyError, TypeError, ValueError, NotImplementedError) as exc:
            raise DatasetFormatError(
                f"{self.metadata_file}: missing or bad field ({_first_line(exc)})"
            ) from None
        check_spaces(self.observation_space, self.action_space, str(self.metadata_file))
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
        """(E,) int64, T of every episode: from dtmem's metadata, else each episode's metadata.

        Checks the counts the metadata claims against the files: the episodes present and
        their total steps (a dataset whose metadata lies fails here, in one line).
        """
        if self.data_format in ("arrow", "parquet"):
            present = sum(1 for p in self.data_path.iterdir() if p.is_dir())
            if present != self.total_episodes:
                raise DatasetFormatError(
                    f"{self.metadata_file}: total_episodes says {self.total_episodes}, "
                    f"{self.data_path} holds {present} episodes"
                )
        lengths = self._dtmem.get("episode_lengths")
        if not (isinstance(lengths, list) and len(lengths) == self.total_episodes):
            lengths = [int(m["total_steps"]) for m in self._episode_metadata()]
        out = np.asarray(lengths, dtype=np.int64)
        if int(out.sum()) != self.total_steps:
            raise DatasetFormatError(
                f"{self.metadata_file}: total_steps says {self.total_steps}, the episodes "
                f"hold {int(out.sum())}"
            )
        return out

    def _episode_metadata(self) -> list[dict[str, Any]]:
        try:
            return list(self._minari_storage().get_episode_metadata(range(self.total_episodes)))
        except DataError:
            raise
        except Exception as exc:  # minari/pyarrow/h5py raise many types; keep one line
            raise DatasetFormatError(
                f"{self.data_path}: cannot read the episodes' metadata ({_first_line(exc)})"
            ) from None

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
            raise DatasetFormatError(
                f"{files[0]}: unreadable arrow file ({_first_line(exc)})"
            ) from None
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
            raise DatasetFormatError(
                f"{files[0]}: unexpected episode layout ({_first_line(exc)})"
            ) from None
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
            raise DatasetFormatError(
                f"{where}: cannot read episode {index} ({_first_line(exc)})"
            ) from None
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
