"""MLflow tracking for every pipeline stage: one run per stage, the whole validated config as
params, the code and library versions as tags, metrics always with a step.

MLflow is imported inside the functions (it costs ~2.5 s), so importing this module is free.
A run is started by the driver with ``start_run`` (a context manager: FAILED on exception);
other processes (a Ray Train worker, an evaluation actor) log into the same run through
``attach(uri, run_id)``, which talks to the store with an explicit run id and so never touches
MLflow's process-global "active run".

Local default: ``sqlite:///mlflow.db`` in the working directory (MLflow 3 refuses the old
``./mlruns`` file store). For a sqlite store the artifacts of a new experiment go beside the
database (``<db dir>/mlartifacts``), not into whatever the working directory happens to be.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtmem.config.base import flatten
from dtmem.config.tracking import TrackingConfig

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from pydantic import BaseModel

__all__ = [
    "DEFAULT_TRACKING_URI",
    "ArtifactRef",
    "RunHandle",
    "TrackingError",
    "attach",
    "check_tracking",
    "config_params",
    "download_artifacts",
    "find_run",
    "git_commit",
    "register_model_dir",
    "resolve_artifact_ref",
    "resolve_tracking_uri",
    "start_run",
    "version_tags",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
STAGE_TAG = "dtmem.stage"
_PARAM_MAX_CHARS = 6000  # MLflow's limit on a param value
_BATCH = 100  # MLflow's limit on params per log_batch
_CONNECT_TIMEOUT_S = 5.0


class TrackingError(ValueError):
    """The tracking store cannot be used, or a run/model reference does not resolve."""


# --------------------------------------------------------------------------- the store


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri``, else $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``; a relative sqlite path
    is made absolute against the working directory (Ray workers run elsewhere)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not os.path.isabs(path):
            return "sqlite:///" + str(Path(path).resolve())
        return uri
    if uri.startswith("file:") or ("://" not in uri and uri not in ("databricks",)):
        raise TrackingError(
            f"tracking uri {uri!r}: the file store (./mlruns) is not supported by MLflow 3; "
            "use sqlite:///path/to/mlflow.db or an http(s):// tracking server"
        )
    return uri


def _sqlite_path(uri: str) -> Path | None:
    path = uri[len("sqlite:///") :]
    return None if path in ("", ":memory:") else Path(path)


def check_tracking(uri: str) -> None:
    """Raise ``TrackingError`` (within ~5 s) if the store cannot be reached or written:
    an http(s) server that does not answer, or a sqlite file whose directory is missing or
    not writable. Called before any compute."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=_CONNECT_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            return  # something answered: the server is up (auth and routes are MLflow's job)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"tracking server {uri} is unreachable: {reason}") from None
        return
    if uri.startswith("sqlite:///"):
        path = _sqlite_path(uri)
        if path is None:
            return
        if path.exists() and not path.is_file():
            raise TrackingError(f"tracking uri {uri}: {path} exists and is not a file")
        parent = path.parent
        if not parent.is_dir():
            raise TrackingError(f"tracking uri {uri}: directory {parent} does not exist")
        target = path if path.exists() else parent
        if not os.access(target, os.W_OK):
            raise TrackingError(f"tracking uri {uri}: {target} is not writable")


def _client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment ``name``, created if missing (artifacts beside a sqlite db)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    db = _sqlite_path(uri) if uri.startswith("sqlite:///") else None
    if db is not None:
        location = (db.parent / "mlartifacts" / name).resolve().as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:  # created meanwhile by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


# --------------------------------------------------------------------------- tags, params


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
    expanded by index (``data.datasets.0.id``); values as strings, cut to MLflow's limit."""
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
    text = "null" if value is None else str(value)
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
        """``rows`` as a CSV artifact (columns: the union of the rows' keys, first seen first)."""
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        self.log_text(buf.getvalue(), artifact_file)

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
    experiment_id = _experiment_id(client, uri, cfg.experiment)
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
            raise TrackingError(f"run {run_id} not found in {uri}: {exc}") from None
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
            handle.log_text(
                yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), "config.yaml"
            )
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


# --------------------------------------------------------------------------- models, artifacts


@dataclass(frozen=True)
class ArtifactRef:
    """A directory of a run's artifacts."""

    run_id: str
    artifact_path: str


def register_model_dir(
    uri: str, run_id: str, artifact_path: str, name: str, alias: str | None = None
) -> str:
    """Register the run's artifact directory ``artifact_path`` as a new version of model
    ``name`` (created if needed), point ``alias`` at it, and return the version."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + artifact_path
    mv = client.create_model_version(name, source=source, run_id=run_id)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def resolve_artifact_ref(ref: str, uri: str, default_path: str) -> ArtifactRef:
    """``runs:/<id>[/<path>]`` or ``models:/<name>@<alias>`` / ``models:/<name>/<version>``
    -> the run and artifact directory it names (``default_path`` when a run URI has none).
    A registered version must come from a run's artifacts (``register_model_dir``)."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    if ref.startswith("runs:/"):
        rest = ref[len("runs:/") :].strip("/")
        run_id, _, path = rest.partition("/")
        if not run_id:
            raise TrackingError(f"{ref!r}: no run id")
        try:
            client.get_run(run_id)
        except MlflowException:
            raise TrackingError(f"{ref!r}: no such run in {uri}") from None
        return ArtifactRef(run_id, path or default_path)
    if ref.startswith("models:/"):
        rest = ref[len("models:/") :].strip("/")
        try:
            if "@" in rest:
                name, alias = rest.split("@", 1)
                mv = client.get_model_version_by_alias(name, alias)
            else:
                name, _, version = rest.partition("/")
                if not version:
                    raise TrackingError(f"{ref!r}: expected models:/<name>@<alias> or /<version>")
                mv = client.get_model_version(name, version)
        except MlflowException:
            raise TrackingError(f"{ref!r}: no such registered model version in {uri}") from None
        if not mv.run_id:
            raise TrackingError(f"{ref!r}: the model version has no source run")
        run_uri = client.get_run(mv.run_id).info.artifact_uri.rstrip("/") + "/"
        source = str(mv.source)
        if source.startswith(f"runs:/{mv.run_id}/"):
            return ArtifactRef(mv.run_id, source[len(f"runs:/{mv.run_id}/") :])
        if not source.startswith(run_uri):
            raise TrackingError(f"{ref!r}: version source {source} is not a run artifact")
        return ArtifactRef(mv.run_id, source[len(run_uri) :])
    raise TrackingError(f"{ref!r}: expected runs:/<id> or models:/<name>@<alias>")


def download_artifacts(uri: str, ref: ArtifactRef, dst: str | Path) -> Path:
    """Copy a run's artifact directory into ``dst``; a missing directory is a TrackingError."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    parent = str(Path(ref.artifact_path).parent)
    listed = client.list_artifacts(ref.run_id, None if parent == "." else parent)
    if not any(f.path == ref.artifact_path for f in listed):
        raise TrackingError(f"run {ref.run_id} has no artifact {ref.artifact_path!r}")
    Path(dst).mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(ref.run_id, ref.artifact_path, str(dst))
    except MlflowException as exc:
        raise TrackingError(
            f"run {ref.run_id}: cannot download {ref.artifact_path}: {exc}"
        ) from None
    return Path(local)
