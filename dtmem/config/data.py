"""Config of the training data: which Minari datasets, how they are mixed and windowed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from dtmem.config.base import FrozenConfig, SafeId

__all__ = ["DataConfig", "DatasetSpec"]


class DatasetSpec(FrozenConfig):
    """One dataset of the training mixture; its position in ``datasets`` is its task_id."""

    id: SafeId = Field(
        ...,
        description="Minari dataset id, (namespace/)name-v<version>, under the data root",
    )
    weight: float = Field(
        1.0,
        gt=0,
        description=(
            "sampling weight, a multiplier on the dataset's natural share of windows (its "
            "number of steps): 1 everywhere visits every step once per epoch; 2 visits this "
            "dataset's steps twice per epoch, 0.5 half of them"
        ),
    )
    env: str | None = Field(
        None,
        description=(
            "env id or task name the dataset must have been recorded on (e.g. 'ALE/Breakout-v5' "
            "or 'Breakout'); checked against the dataset's metadata, case-insensitive; null "
            "skips the check"
        ),
    )

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        """Minari's form, ``(namespace/)name-v<version>``: SafeId keeps the id inside the
        root, this refuses one that Minari itself cannot load (no version)."""
        from dtmem.data.episodes import DataError
        from dtmem.data.store import validate_dataset_id

        try:
            validate_dataset_id(value)
        except DataError as exc:
            raise ValueError(str(exc)) from None
        return value


class DataConfig(FrozenConfig):
    """Training windows from one or more Minari datasets (17 Atari games, 45 Meta-World tasks)."""

    datasets: tuple[DatasetSpec, ...] = Field(
        ..., min_length=1, description="datasets of the mixture; task_id = position in this list"
    )
    root: str | None = Field(
        None,
        description="datasets root; null means $MINARI_DATASETS_PATH, else ~/.minari/datasets",
    )
    context: int = Field(20, ge=1, description="K, steps per training window")
    batch_size: int = Field(64, ge=1, description="windows per batch on each worker")
    returns: Literal["continuous", "atari_bins"] = Field(
        "continuous",
        description=(
            "'continuous': float return-to-go divided by return_scale and raw float rewards; "
            "'atari_bins': MDT's integer return bins in [0, 120) and reward classes (0/1/3)"
        ),
    )
    return_scale: float = Field(
        1.0, gt=0, description="continuous returns-to-go are divided by this"
    )
    frame_stack: int = Field(
        1, ge=1, description="stack this many consecutive observations per step (Atari: 4)"
    )
    normalize_states: bool = Field(
        False, description="standardise vector observations with the dataset's mean/std"
    )
    state_stats_path: str | None = Field(
        None,
        description=(
            "JSON file of the state statistics (with the action bounds when continuous actions "
            "are scaled onto [-1, 1]): loaded if it exists, else computed over the training "
            "episodes and written there; null computes them in memory"
        ),
    )
    episode_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description=(
            "fraction of each dataset's episodes to use (a fixed seeded subset; 0.1 for "
            "fine-tuning on 10%)"
        ),
    )
    seed: int = Field(0, description="data seed: subset, epoch order, window phases")
    shuffle_episodes: int = Field(
        8,
        ge=1,
        description=(
            "windows are shuffled within groups of this many episodes per dataset; larger "
            "mixes better but keeps more episodes open"
        ),
    )
    cache_mb: float = Field(
        1024.0, gt=0, description="bound on the decoded episodes held in the LRU cache (MB)"
    )

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        ids = [d.id for d in self.datasets]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"datasets: {dupes[0]!r} is listed twice")
        if self.returns == "atari_bins" and self.normalize_states:
            raise ValueError(
                "normalize_states: Atari frames are uint8 and never normalised here "
                "(the encoder scales them once)"
            )
        return self
