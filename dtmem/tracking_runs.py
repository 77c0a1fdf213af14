"""One MLflow run per pipeline stage: ``start_run`` (a context manager that logs the
validated config as params and ``config.yaml``, tags the stage, git commit and library
versions, and ends the run FINISHED, FAILED or KILLED), ``RunHandle`` and ``attach`` (log
metrics, params, tags and artifacts into a run by id, from any process, never touching
MLflow's global active run), ``find_run``, and the tag and param helpers (``git_commit``,
``version_tags``, ``config_params``). MLflow is imported inside the functions.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtmem.config.base import flatten
from dtmem.config.tracking import TrackingConfig
from dtmem.tracking_store import (
    TrackingError,
    _client,
    _redact_tree,
    check_tracking,
    ensure_experiment,
    redact_uri,
    resolve_tracking_uri,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from pydantic import BaseModel

STAGE_TAG = "dtmem.stage"
_PARAM_MAX_CHARS = 6000  # MLflow's limit on a param value
_BATCH = 100  # MLflow's limit on params per log_batch


def git_commit() -> str | None:
    """The commit of the checkout this package runs from; inside a Ray job, whose shipped
    working directory has no .git, the one ``dtmem submit`` passed as $DTMEM_GIT_COMMIT;
    else None."""
    here = Path(__file__).resolve().parent
    shipped = os.environ.get("DTMEM_GIT_COMMIT") or None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return shipped
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else shipped


def version_tags() -> dict[str, str]:
    """Library versions as tags, read from package metadata (nothing is imported)."""
    tags = {}
    for dist in ("torch", "ray", "mlflow", "peft", "dtmem"):
        try:
            tags[f"dtmem.version.{dist}"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return tags


def config_params(config: BaseModel) -> dict[str, str]:
    """The validated config as flat MLflow params: dotted keys; lists of sections are
    expanded by index (``data.datasets.0.id``); values as strings, cut to MLflow's limit;
    URIs without their credentials (``redact_uri``)."""
    out: dict[str, str] = {}
    for key, value in flatten(config).items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                for sub, v in flatten(item, prefix=f"{key}.{i}.").items():
                    out[sub] = _param_str(v)
        else:
            out[key] = _param_str(value)
    return out


def _param_str(value: Any) -> str:
    text = "null" if value is None else str(_redact_tree(value))
    return text[:_PARAM_MAX_CHARS]


# --------------------------------------------------------------------------- runs


@dataclass
class RunHandle:
    """Logs into one MLflow run by id (safe from any process and alongside other runs)."""

    run_id: str
    uri: str

    @property
    def client(self) -> MlflowClient:
        return _client(self.uri)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Every metric at ``step`` (one request)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params not yet on the run; one already there with another value is left as it was
        and named in the tag ``dtmem.changed_params`` (MLflow params are write-once)."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new, changed = [], []
        for k, v in params.items():
            text = _param_str(v)
            if k not in existing:
                new.append(Param(k, text))
            elif existing[k] != text:
                changed.append(k)
        for i in range(0, len(new), _BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + _BATCH])
        if changed:
            self.set_tags({"dtmem.changed_params": ",".join(sorted(changed))[:_PARAM_MAX_CHARS]})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + _BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a directory's contents, under ``artifact_path`` of the run."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """``rows`` as a CSV artifact (``dtmem.fileio.csv_text``)."""
        from dtmem.fileio import csv_text

        self.log_text(csv_text(rows), artifact_file)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of a metric, in step order."""
        history = self.client.get_metric_history(self.run_id, key)
        return sorted((m.step, m.value) for m in history)


def attach(uri: str, run_id: str) -> RunHandle:
    """A handle on an existing run (e.g. in a Ray worker, given the driver's run id)."""
    return RunHandle(run_id=run_id, uri=uri)


@contextmanager
def start_run(
    cfg: TrackingConfig,
    *,
    stage: str,
    config: BaseModel | None = None,
    tags: dict[str, str] | None = None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[RunHandle]:
    """Start (or, with ``run_id``, resume) one run of ``stage``.

    Logs ``config`` flattened as params and as the artifact ``config.yaml``; tags the stage,
    the git commit, library versions and ``tags``. The run ends FINISHED, or FAILED if the
    body raises (KILLED on Ctrl-C), and the exception propagates.
    """
    import mlflow
    import yaml

    uri = resolve_tracking_uri(cfg.uri)
    check_tracking(uri)
    mlflow.set_tracking_uri(uri)
    client = _client(uri)
    experiment_id = ensure_experiment(uri, cfg.experiment)
    all_tags = {STAGE_TAG: stage, **version_tags()}
    commit = git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
        all_tags["dtmem.git_commit"] = commit
    all_tags.update(cfg.tags)
    all_tags.update(tags or {})
    parent_run_id = parent_run_id or cfg.parent_run_id
    # an inherited MLFLOW_RUN_ID (a Ray job, a parent process) would make mlflow resume
    # that run instead of creating a child of parent_run_id
    os.environ.pop("MLFLOW_RUN_ID", None)
    if run_id is not None:
        try:
            client.get_run(run_id)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TrackingError(f"run {run_id} not found in {redact_uri(uri)}: {first}") from None
    active = mlflow.start_run(
        run_id=run_id,
        experiment_id=None if run_id else experiment_id,
        run_name=None if run_id else (run_name or cfg.run_name),
        nested=mlflow.active_run() is not None,
        parent_run_id=parent_run_id,
        tags=all_tags,
        log_system_metrics=cfg.system_metrics,
    )
    handle = RunHandle(run_id=active.info.run_id, uri=uri)
    status = "FINISHED"
    try:
        if config is not None:
            handle.log_params(config_params(config))
            dumped = _redact_tree(config.model_dump(mode="json"))
            handle.log_text(yaml.safe_dump(dumped, sort_keys=False), "config.yaml")
        yield handle
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        mlflow.end_run(status=status)


def find_run(cfg: TrackingConfig, run_name: str, stage: str) -> str | None:
    """The id of the latest run named ``run_name`` of ``stage`` in the experiment, or None."""
    uri = resolve_tracking_uri(cfg.uri)
    check_tracking(uri)
    client = _client(uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        return None
    name = run_name.replace("'", "\\'")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`mlflow.runName` = '{name}' and tags.`{STAGE_TAG}` = '{stage}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None
