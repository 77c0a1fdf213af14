"""Where and how a pipeline stage is tracked in MLflow."""

from __future__ import annotations

from pydantic import Field

from dtmem.config.base import FrozenConfig, SafeName

__all__ = ["TrackingConfig"]


class TrackingConfig(FrozenConfig):
    """MLflow tracking: server or local store, experiment, system metrics."""

    uri: str | None = Field(
        None,
        description=(
            "MLflow tracking URI (http(s)://host:port or sqlite:///path.db); null means "
            "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory"
        ),
    )
    experiment: SafeName = Field(
        "dtmem", description="MLflow experiment name (a safe name: letters, digits, ._-=+,@)"
    )
    system_metrics: bool = Field(
        True, description="log MLflow system metrics (CPU, memory, GPU) alongside the run"
    )
    run_name: SafeName | None = Field(
        None,
        description="MLflow run name; null lets the stage choose (its own run_name or MLflow's)",
    )
    parent_run_id: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{32}$",
        description=(
            "MLflow parent run: the stage's run is created as its child (the experiment runner "
            "sets it; an inherited $MLFLOW_RUN_ID never overrides it)"
        ),
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="extra tags on the stage's run (the experiment runner's node key and lineage)",
    )
