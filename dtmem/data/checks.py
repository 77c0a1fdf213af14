"""Checks of a dataset against what a config or model expects: env, observation shape, content."""

from __future__ import annotations

import os

from dtmem.data.episodes import EnvMismatchError, ObservationShapeError
from dtmem.data.reader import DatasetReader, open_dataset
from dtmem.data.store import DatasetInfo

__all__ = ["check_env", "check_observation_shape", "validate_dataset", "window_obs_shape"]


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
