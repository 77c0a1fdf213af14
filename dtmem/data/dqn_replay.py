"""Import the DQN Replay dataset (Agarwal et al., 2020) into Minari datasets, streaming.

Layout, as Dopamine's logged replay buffer writes it:

    <Game>/<run>/replay_logs/$store$_observation_ckpt.<N>.gz   (n, 84, 84) uint8
    <Game>/<run>/replay_logs/$store$_action_ckpt.<N>.gz        (n,) int32
    <Game>/<run>/replay_logs/$store$_reward_ckpt.<N>.gz        (n,) float32
    <Game>/<run>/replay_logs/$store$_terminal_ckpt.<N>.gz      (n,) uint8

each a gzipped .npy array; n is about 1M per checkpoint (7 GB of frames). Slot i holds the
transition (s_i, a_i, r_i, terminal_i): frame s_i, the action taken there, the (clipped)
reward that followed, and whether the episode ended with it.

How a checkpoint becomes episodes (``episode_bounds``):

- The arrays are taken in file order and split after every terminal; an episode is the
  slots up to and including its terminal.
- The trailing slots after the last terminal are an episode cut off by the end of the
  checkpoint: they are **dropped** (its return-to-go cannot be computed without its end).
- The slots before the first terminal of a checkpoint N > 0 continue an episode that began
  in checkpoint N-1: they are **dropped** too (its start, hence its timesteps and first frame
  stacks, is missing). Checkpoint 0 starts with the run, so its first episode is kept.
- Dopamine pads the start of every episode with ``stack_size - 1`` = 3 zero transitions
  (black frame, action 0, reward 0) so that frame stacks never reach into the previous
  episode; those leading all-zero transitions are stripped (``strip_padding``).
- The replay stores no frame after the terminal step, so the final (T+1-th) observation that
  Minari requires is a zero frame. Windows never read it.
- Actions index the game's minimal action set (Dopamine plays with it); they are mapped to
  the full 18-action ALE set that the model uses (``minimal_action_set``).

Memory: the action, reward and terminal arrays of one checkpoint (a few MB) are loaded
whole; observations are streamed from the gzip in chunks of ``chunk_frames`` frames and each
episode is written as soon as it is complete, so memory holds one chunk plus one episode
plus the writer's small queue, never a checkpoint's 7 GB.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dtmem.data.env_specs import atari_env_spec
from dtmem.data.episodes import (
    CorruptFileError,
    DataError,
    DatasetFormatError,
    Episode,
    check_finite,
)
from dtmem.data.minari_io import DatasetInfo, DatasetWriter, check_dataset_root

__all__ = [
    "FRAME_SHAPE",
    "NpyGzReader",
    "episode_bounds",
    "import_dqn_replay",
    "list_checkpoints",
    "load_npy_gz",
    "minimal_action_set",
    "replay_dirs",
    "replay_file",
    "rom_id",
    "strip_padding",
]

FRAME_SHAPE = (84, 84)
NUM_FULL_ACTIONS = 18
_STORE_NAMES = ("observation", "action", "reward", "terminal")
_CKPT_RE = re.compile(r"^\$store\$_observation_ckpt\.(\d+)\.gz$")


# ---------------------------------------------------------------------------------------------
# Files


def replay_file(replay_dir: Path, name: str, checkpoint: int) -> Path:
    """``<replay_dir>/$store$_<name>_ckpt.<checkpoint>.gz``."""
    return Path(replay_dir) / f"$store$_{name}_ckpt.{checkpoint}.gz"


def list_checkpoints(replay_dir: Path) -> list[int]:
    """Checkpoint numbers that have all four files, ascending."""
    replay_dir = Path(replay_dir)
    found = []
    for path in replay_dir.iterdir():
        m = _CKPT_RE.match(path.name)
        if m:
            n = int(m.group(1))
            if all(replay_file(replay_dir, name, n).is_file() for name in _STORE_NAMES):
                found.append(n)
    return sorted(found)


class NpyGzReader:
    """Stream the rows of a gzipped .npy array without loading it whole.

    ``shape`` and ``dtype`` come from the .npy header; ``read(k)`` returns the next k rows
    (fewer at the end). A truncated or corrupt file raises ``CorruptFileError`` naming it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            # closed by close() / __exit__: the reader outlives this call
            self._file: gzip.GzipFile = gzip.open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise DataError(f"{self.path}: no such file") from None
        try:
            version = np.lib.format.read_magic(self._file)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(self._file)
            else:
                header = np.lib.format.read_array_header_2_0(self._file)
        except (OSError, EOFError, zlib.error) as exc:
            self.close()
            raise CorruptFileError(f"{self.path}: truncated or corrupt gzip ({exc})") from None
        except ValueError as exc:
            self.close()
            raise DatasetFormatError(f"{self.path}: not a .npy array ({exc})") from None
        shape, fortran_order, dtype = header
        if dtype.hasobject or (fortran_order and len(shape) > 1):
            self.close()
            raise DatasetFormatError(f"{self.path}: unsupported .npy layout ({dtype}, Fortran)")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype: np.dtype[Any] = dtype
        self._row_shape = self.shape[1:]
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * dtype.itemsize
        self.rows_read = 0

    @property
    def num_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    def read(self, rows: int) -> np.ndarray:
        """The next ``min(rows, remaining)`` rows.  -> (k, *row_shape)."""
        k = min(rows, self.num_rows - self.rows_read)
        if k <= 0:
            return np.zeros((0, *self._row_shape), dtype=self.dtype)
        out = np.empty((k, *self._row_shape), dtype=self.dtype)
        want = out.nbytes
        try:
            got = self._file.readinto(out.data.cast("B"))  # fills until EOF
        except (OSError, EOFError, zlib.error) as exc:
            raise CorruptFileError(
                f"{self.path}: truncated or corrupt gzip after {self.rows_read} of "
                f"{self.num_rows} rows ({exc})"
            ) from None
        if got != want:
            rows = self.rows_read + got // max(self._row_bytes, 1)
            raise CorruptFileError(
                f"{self.path}: file ends after {rows} of {self.num_rows} rows (truncated)"
            )
        self.rows_read += k
        if self.rows_read == self.num_rows:
            self._check_end()
        return out

    def _check_end(self) -> None:
        """Read past the last row: gzip verifies its trailer (CRC, length) only there."""
        try:
            extra = self._file.read(1)
        except (OSError, EOFError, zlib.error) as exc:
            raise CorruptFileError(
                f"{self.path}: truncated or corrupt gzip at its end ({exc})"
            ) from None
        if extra:
            raise DatasetFormatError(f"{self.path}: more data than its .npy header describes")

    def drain(self, chunk_rows: int = 65536) -> None:
        """Read (and verify) the rest of the file without keeping it."""
        while self.rows_read < self.num_rows:
            self.read(chunk_rows)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> NpyGzReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_npy_gz(path: str | os.PathLike[str]) -> np.ndarray:
    """A whole gzipped .npy array (for the small per-step arrays)."""
    with NpyGzReader(path) as reader:
        if not reader.shape:
            raise DatasetFormatError(f"{reader.path}: expected an array, got a scalar")
        return reader.read(reader.num_rows)


# ---------------------------------------------------------------------------------------------
# Pure pieces


def episode_bounds(
    terminals: np.ndarray, first_is_complete: bool
) -> tuple[list[tuple[int, int]], int]:
    """Complete episodes of one checkpoint as [start, end) slot ranges, and slots dropped.

    terminals (n,) -> episodes ending at each terminal (end = terminal index + 1). The slots
    after the last terminal are dropped; the slots up to the first terminal are dropped
    unless ``first_is_complete`` (checkpoint 0). Returns (bounds, number of dropped slots).
    """
    ends = np.flatnonzero(np.asarray(terminals) != 0) + 1  # (m,) exclusive ends
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)[: ends.size]
    bounds = [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]
    if bounds and not first_is_complete:
        bounds = bounds[1:]
    kept = sum(b - a for a, b in bounds)
    return bounds, int(len(terminals) - kept)


def strip_padding(
    frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray, max_pad: int
) -> int:
    """How many leading transitions are Dopamine's zero padding (at most ``max_pad``).

    A padding transition has an all-zero frame, action 0 and reward 0. At least one
    transition is always kept. frames (T, 84, 84), actions (T,), rewards (T,) -> count.
    """
    k = 0
    limit = min(max_pad, len(actions) - 1)
    while k < limit and actions[k] == 0 and rewards[k] == 0 and not frames[k].any():
        k += 1
    return k


def rom_id(game: str) -> str:
    """DQN Replay's game name -> ALE ROM id: 'BankHeist' -> 'bank_heist'."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower()


def minimal_action_set(game: str) -> np.ndarray:
    """The game's minimal action set as full-set indices, (n,) int64 (needs ale_py's ROMs)."""
    import ale_py
    from ale_py import roms

    rom = rom_id(game)
    try:
        path = roms.get_rom_path(rom)
    except Exception as exc:  # ale_py raises a plain error for unknown ids
        raise DataError(f"game {game!r}: no ALE ROM {rom!r} ({exc})") from None
    if path is None:
        raise DataError(f"game {game!r}: no ALE ROM {rom!r}")
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(path)
    return np.asarray([a.value for a in ale.getMinimalActionSet()], dtype=np.int64)


def replay_dirs(path: str | os.PathLike[str], runs: Sequence[int | str] = (1,)) -> list[Path]:
    """The replay_logs directories under ``path``: a replay_logs dir, a run dir, or a game dir
    (then ``<path>/<run>/replay_logs`` for each run)."""
    path = Path(path)
    if path.name == "replay_logs":
        found = [path]
    elif (path / "replay_logs").is_dir():
        found = [path / "replay_logs"]
    else:
        found = [path / str(run) / "replay_logs" for run in runs]
    for d in found:
        if not d.is_dir():
            raise DataError(f"{d}: no such replay_logs directory")
    return found


def _game_name(replay_dir: Path) -> str:
    return replay_dir.parent.parent.name  # <Game>/<run>/replay_logs


# ---------------------------------------------------------------------------------------------
# One checkpoint


def _load_step_arrays(replay_dir: Path, checkpoint: int) -> dict[str, np.ndarray]:
    arrays = {}
    for name in ("action", "reward", "terminal"):
        path = replay_file(replay_dir, name, checkpoint)
        a = load_npy_gz(path)
        if a.ndim != 1 or a.dtype.kind not in "biuf":
            raise DatasetFormatError(
                f"{path}: expected a 1-D numeric array, got {a.dtype}{a.shape}"
            )
        arrays[name] = a
    return arrays


def _check_step_arrays(
    replay_dir: Path, checkpoint: int, steps: dict[str, np.ndarray], n_actions: int
) -> None:
    """Finite rewards, actions that index the action set."""
    check_finite(steps["reward"], "rewards", str(replay_file(replay_dir, "reward", checkpoint)))
    act = steps["action"]
    if act.dtype.kind not in "iu" or (act.size and (act.min() < 0 or act.max() >= n_actions)):
        raise DatasetFormatError(
            f"{replay_file(replay_dir, 'action', checkpoint)}: actions must be integers in "
            f"[0, {n_actions}) (the minimal action set), got {act.dtype} in "
            f"[{act.min()}, {act.max()}]"
        )


def _check_frames(
    replay_dir: Path, checkpoint: int, frames_in: NpyGzReader, steps: dict[str, np.ndarray]
) -> None:
    """(n, 84, 84) uint8 frames, and as many entries in every other array."""
    obs_path = replay_file(replay_dir, "observation", checkpoint)
    if frames_in.shape[1:] != FRAME_SHAPE or frames_in.dtype != np.uint8:
        raise DatasetFormatError(
            f"{obs_path}: expected (n, 84, 84) uint8 frames, got {frames_in.dtype}{frames_in.shape}"
        )
    n = frames_in.num_rows
    for name, values in steps.items():
        if len(values) != n:
            raise DatasetFormatError(
                f"{replay_file(replay_dir, name, checkpoint)}: {len(values)} entries, but "
                f"{obs_path.name} has {n} frames"
            )


class _FrameStream:
    """Slots [a, b) of a checkpoint's observation stream, read ``chunk_frames`` at a time;
    requests never go backwards, so at most one chunk is held."""

    def __init__(self, frames_in: NpyGzReader, chunk_frames: int) -> None:
        self._in = frames_in
        self._chunk_frames = chunk_frames
        self._chunk = np.zeros((0, *FRAME_SHAPE), dtype=np.uint8)
        self._start = 0  # slot index of chunk[0]

    def frames(self, a: int, b: int) -> np.ndarray:
        """(b - a, 84, 84) uint8, a copy."""
        parts = []
        i = a
        while i < b:
            if i >= self._start + len(self._chunk):
                self._start += len(self._chunk)
                self._chunk = self._in.read(self._chunk_frames)
                continue
            lo, hi = i - self._start, min(b, self._start + len(self._chunk)) - self._start
            parts.append(self._chunk[lo:hi])
            i = self._start + hi
        return np.concatenate(parts, axis=0)


def _checkpoint_episodes(
    replay_dir: Path,
    checkpoint: int,
    action_set: np.ndarray,
    *,
    chunk_frames: int,
    max_pad: int,
    counters: dict[str, int],
) -> Iterator[Episode]:
    """Complete episodes of one checkpoint, in order, streaming its observations."""
    steps = _load_step_arrays(replay_dir, checkpoint)
    act, rew, term = steps["action"], steps["reward"], steps["terminal"]
    _check_step_arrays(replay_dir, checkpoint, steps, len(action_set))
    with NpyGzReader(replay_file(replay_dir, "observation", checkpoint)) as frames_in:
        _check_frames(replay_dir, checkpoint, frames_in, steps)
        bounds, dropped = episode_bounds(term, first_is_complete=checkpoint == 0)
        counters["dropped_partial_slots"] += dropped
        stream = _FrameStream(frames_in, chunk_frames)
        for a, b in bounds:
            f = stream.frames(a, b)  # (T, 84, 84)
            k = strip_padding(f, act[a:b], rew[a:b], max_pad)
            counters["stripped_padding"] += k
            T = b - a - k
            observations = np.concatenate([f[k:], np.zeros((1, *FRAME_SHAPE), np.uint8)])
            yield Episode(
                observations=observations,  # (T+1, 84, 84), last frame zeros
                actions=action_set[act[a + k : b].astype(np.int64)],  # full-set indices
                rewards=rew[a + k : b].astype(np.float32),
                terminations=np.r_[np.zeros(T - 1, dtype=bool), True],
                truncations=np.zeros(T, dtype=bool),
            )
        frames_in.drain(chunk_frames)  # verify the rest of the file is intact


# ---------------------------------------------------------------------------------------------
# Importer


def _action_mapping(game: str, action_set: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """Replay action index -> full 18-action index: ``action_set``, else the game's minimal set."""
    mapping = (
        minimal_action_set(game)
        if action_set is None
        else np.asarray(list(action_set), dtype=np.int64)
    )
    if mapping.size == 0 or mapping.min() < 0 or mapping.max() >= NUM_FULL_ACTIONS:
        raise DataError(f"game {game}: action_set must be indices into the 18 ALE actions")
    return mapping


def _wanted_checkpoints(replay_dir: Path, checkpoints: Sequence[int] | None) -> list[int]:
    """``checkpoints`` in ascending order (default: every complete one), each checked present."""
    available = list_checkpoints(replay_dir)
    wanted = sorted(checkpoints) if checkpoints is not None else available
    for ckpt in wanted:
        if ckpt not in available:
            raise DataError(
                f"{replay_file(replay_dir, 'observation', ckpt)}: checkpoint {ckpt} "
                f"missing (or incomplete) in {replay_dir}"
            )
    return wanted


def _dqn_writer(
    dataset_id: str, game: str, root: str | os.PathLike[str] | None, overwrite: bool
) -> DatasetWriter:
    import gymnasium as gym

    return DatasetWriter(
        dataset_id,
        observation_space=gym.spaces.Box(0, 255, FRAME_SHAPE, np.uint8),
        action_space=gym.spaces.Discrete(NUM_FULL_ACTIONS),
        env_id=f"ALE/{game}-v5",
        task=game,
        root=root,
        env_spec=atari_env_spec(game, repeat_action_probability=0.25),  # Dopamine's sticky actions
        overwrite=overwrite,
        description=f"DQN Replay ({game}), imported by dtmem.data.dqn_replay",
        algorithm_name="DQN (Dopamine), DQN Replay dataset",
        author="Agarwal, Schuurmans, Norouzi (DQN Replay Dataset), imported by dtmem",
    )


def import_dqn_replay(
    path: str | os.PathLike[str],
    dataset_id: str,
    *,
    game: str | None = None,
    runs: Sequence[int | str] = (1,),
    checkpoints: Sequence[int] | None = None,
    max_steps: int | None = None,
    action_set: Sequence[int] | np.ndarray | None = None,
    root: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    chunk_frames: int = 16384,
    max_padding: int = 3,
) -> DatasetInfo:
    """Import DQN Replay checkpoints of one game into the Minari dataset ``dataset_id``.

    ``path`` is a game directory (runs ``runs`` are read from it), a run directory or a
    replay_logs directory. ``checkpoints`` defaults to every complete one, in ascending order.
    Import stops after the episode that brings the total to ``max_steps`` (the paper uses
    500k transitions per game). ``action_set`` maps the replay's action indices to the full
    18-action set; by default the game's minimal action set from ale_py. The dataset is
    written atomically (nothing appears at its id unless the import completes).
    Returns the dataset's ``DatasetInfo`` (with its content hash). A read-only or nearly full
    dataset root is refused (``dtmem.fileio.DiskError``) before anything is read.
    """
    check_dataset_root(root)
    dirs = replay_dirs(path, runs)
    game = game or _game_name(dirs[0])
    mapping = _action_mapping(game, action_set)
    counters = {"dropped_partial_slots": 0, "stripped_padding": 0}
    sources: list[dict[str, Any]] = []

    def full() -> bool:
        return max_steps is not None and writer.num_steps >= max_steps

    with _dqn_writer(dataset_id, game, root, overwrite) as writer:
        for replay_dir in dirs:
            for ckpt in _wanted_checkpoints(replay_dir, checkpoints):
                if full():
                    break
                sources.append({"replay_dir": str(replay_dir), "checkpoint": ckpt})
                for episode in _checkpoint_episodes(
                    replay_dir,
                    ckpt,
                    mapping,
                    chunk_frames=chunk_frames,
                    max_pad=max_padding,
                    counters=counters,
                ):
                    writer.add_episode(episode)
                    if full():
                        break
        writer.set_metadata(source=sources, action_set=mapping.tolist(), counts=counters)
    assert writer.info is not None
    return writer.info
