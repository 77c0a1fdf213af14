"""One episode as whole numpy arrays, in Minari's layout, and the errors bad data raises.

An episode of T steps holds T+1 observations (the last one is the observation after the
final step) and T of everything else:

    observations   (T+1, *obs_shape)
    actions        (T,) integer (discrete) or (T, act_dim) float (continuous)
    rewards        (T,) float
    terminations   (T,) bool
    truncations    (T,) bool
    infos          {name: (T+1, ...)}  every info has T+1 rows and at least 2 dimensions
                   (Minari's arrow reader cannot decode 1-D infos, so writers store a
                   scalar info as shape (T+1, 1))

Every error raised for bad input derives from ``DataError`` (a ``ValueError``) and carries a
one-line message that starts with the file or dataset it is about.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CorruptFileError",
    "DataError",
    "DatasetExistsError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "EnvMismatchError",
    "Episode",
    "NonFiniteDataError",
    "ObservationShapeError",
    "check_finite",
]


class DataError(ValueError):
    """Bad input data; the message is one line naming the file and what is wrong."""


class DatasetNotFoundError(DataError):
    """No dataset at the path a dataset id resolves to."""


class DatasetExistsError(DataError):
    """A writer was asked to create a dataset that already exists."""


class DatasetFormatError(DataError):
    """A dataset or file that cannot be read as what it claims to be."""


class CorruptFileError(DataError):
    """A file that ends early or fails to decompress (e.g. a truncated .gz)."""


class NonFiniteDataError(DataError):
    """NaN or inf in rewards or observations."""


class ObservationShapeError(DataError):
    """Observations whose shape does not fit the model."""


class EnvMismatchError(DataError):
    """A dataset recorded on another environment than the config names."""


def check_finite(array: np.ndarray, what: str, where: str) -> None:
    """Raise ``NonFiniteDataError`` if a float ``array`` holds NaN or inf.

    Integer and bool arrays are always finite and are not scanned.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        index = tuple(int(i) for i in bad)
        value = array[index]
        raise NonFiniteDataError(f"{where}: {what} holds {value} at index {list(index)}")


@dataclass(frozen=True)
class Episode:
    """One episode; see the module docstring for the shapes."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    infos: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        """T, the number of actions taken."""
        return int(self.rewards.shape[0])

    def check(self, where: str) -> None:
        """Raise a ``DataError`` naming ``where`` if shapes disagree or data is not finite."""
        T = self.num_steps
        if self.rewards.ndim != 1:
            raise DatasetFormatError(f"{where}: rewards must be 1-D, got {self.rewards.shape}")
        if T < 1:
            raise DatasetFormatError(f"{where}: episode has no steps")
        if self.observations.shape[0] != T + 1:
            raise DatasetFormatError(
                f"{where}: {self.observations.shape[0]} observations for {T} steps "
                f"(expected T+1 = {T + 1})"
            )
        for name in ("actions", "terminations", "truncations"):
            array = getattr(self, name)
            if array.shape[0] != T:
                raise DatasetFormatError(f"{where}: {name} has {array.shape[0]} rows, expected {T}")
        for key, value in self.infos.items():
            if value.ndim < 2 or value.shape[0] != T + 1:
                raise DatasetFormatError(
                    f"{where}: info {key!r} has shape {value.shape}, expected (T+1, ...) = "
                    f"({T + 1}, ...) with at least 2 dimensions"
                )
        check_finite(self.rewards, "rewards", where)
        check_finite(self.observations, "observations", where)
