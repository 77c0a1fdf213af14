"""What runs read and write besides metrics: datasets as run inputs
(``log_dataset_input``, our content hash as the digest), trained models as MLflow logged
models without a flavour (``log_logged_model``: safetensors and config JSON, nothing
pickled), registered model versions (``register_model_dir``), and the way back:
``resolve_artifact_ref`` turns ``runs:/``, ``models:/<model_id>``, ``models:/<name>@<alias>``
or ``models:/<name>/<version>`` into an ``ArtifactRef`` (refusing paths that leave the run's
artifacts) and ``download_artifacts`` copies it locally. MLflow is imported inside the
functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtmem.tracking_runs import RunHandle, _param_str
from dtmem.tracking_store import TrackingError, _client, redact_uri

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

MODEL_TYPE = "dtmem"  # a logged model's model_type: safetensors + config JSON, no flavour
_REF_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NOT_IN_MODEL_NAMES = re.compile(r"[/:.%\"']")  # MLflow refuses these in a logged model's name


def logged_model_name(name: str) -> str:
    """``name`` as MLflow accepts it for a logged model: each character it refuses there
    (``/ : . % " '``) becomes '-'. Run names may hold '.' (``lr0.001``); the model keeps a
    link to its run, whose name is unchanged."""
    return _NOT_IN_MODEL_NAMES.sub("-", name)


def log_dataset_input(
    run: RunHandle,
    name: str,
    digest: str,
    source: str,
    *,
    context: str = "training",
    source_type: str = "local",
    profile: Mapping[str, Any] | None = None,
) -> None:
    """Record a dataset as an input of ``run`` (the run page's Datasets and the runs table's
    Dataset column): ``digest`` is our content hash, ``source`` where the data lives (a path
    or URI, redacted), ``context`` e.g. training / validation, ``profile`` small facts such
    as episode and step counts. Logging the same dataset twice adds nothing."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    dataset = Dataset(
        name=name,
        digest=digest[:36],  # MLflow's column holds 36 characters
        source_type=source_type,
        source=json.dumps({"uri": redact_uri(str(source))}),
        profile=json.dumps(dict(profile)) if profile else None,
    )
    tags = [InputTag(key="mlflow.data.context", value=context)]
    try:
        run.client.log_inputs(run.run_id, datasets=[DatasetInput(dataset, tags)])
    except MlflowException:  # two runs logged the same new dataset at once (sqlite): it exists now
        run.client.log_inputs(run.run_id, datasets=[DatasetInput(dataset, tags)])


def log_logged_model(
    run: RunHandle,
    model_dir: str | Path,
    name: str,
    *,
    step: int = 0,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log the files of ``model_dir`` (dtmem's safetensors and config JSON) as an MLflow
    logged model without a flavour, created from ``run`` and listed as its output; returns
    the model id (``models:/<model_id>`` loads it back). Its name is ``name`` as MLflow
    allows it (``logged_model_name``). A failed upload leaves the model FAILED, never READY."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TrackingError(f"{model_dir}: not a model directory")
    client = run.client
    experiment_id = client.get_run(run.run_id).info.experiment_id
    model = client.create_logged_model(
        experiment_id=experiment_id,
        name=logged_model_name(name),
        source_run_id=run.run_id,
        params={k: _param_str(v) for k, v in (params or {}).items()} or None,
        tags=dict(tags or {}) or None,
        model_type=MODEL_TYPE,
    )
    try:
        client.log_model_artifacts(model.model_id, str(model_dir))
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run.run_id, [LoggedModelOutput(model.model_id, step)])
    return str(model.model_id)


@dataclass(frozen=True)
class ArtifactRef:
    """A directory of a run's artifacts, or (``model_id`` set) a logged model's files;
    ``run_id``/``artifact_path`` then name it uniquely for a local cache."""

    run_id: str
    artifact_path: str
    model_id: str | None = None


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


def _check_artifact_path(ref: str, path: str) -> str:
    """``path`` if it stays inside the run's artifacts (no '..', not absolute)."""
    parts = path.replace("\\", "/").split("/")
    if path.startswith(("/", "\\")) or any(p in ("..", ".") for p in parts) or "" in parts:
        raise TrackingError(f"{ref!r}: artifact path {path!r} leaves the run's artifacts")
    return path


def _logged_model_ref(client: MlflowClient, ref: str, model_id: str, uri: str) -> ArtifactRef:
    from mlflow.exceptions import MlflowException

    if not _REF_ID.fullmatch(model_id):
        raise TrackingError(f"{ref!r}: {model_id!r} is not a model id")
    try:
        model = client.get_logged_model(model_id)
    except MlflowException:
        raise TrackingError(f"{ref!r}: no such logged model in {redact_uri(uri)}") from None
    return ArtifactRef(model.source_run_id or "logged-models", f"models/{model_id}", model_id)


def resolve_artifact_ref(ref: str, uri: str, default_path: str) -> ArtifactRef:
    """``runs:/<id>[/<path>]``, ``models:/<model_id>`` (a logged model),
    ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> the run and artifact
    directory (or logged model) it names (``default_path`` when a run URI has none). A
    registered version must come from a run's artifacts or a logged model. A path that would
    leave the run's artifacts (``runs:/ID/../..``) is refused."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    where = redact_uri(uri)
    if ref.startswith("runs:/"):
        rest = ref[len("runs:/") :].strip("/")
        run_id, _, path = rest.partition("/")
        if not run_id:
            raise TrackingError(f"{ref!r}: no run id")
        if not _REF_ID.fullmatch(run_id):
            raise TrackingError(f"{ref!r}: {run_id!r} is not a run id")
        path = _check_artifact_path(ref, path or default_path)
        try:
            client.get_run(run_id)
        except MlflowException:
            raise TrackingError(f"{ref!r}: no such run in {where}") from None
        return ArtifactRef(run_id, path)
    if ref.startswith("models:/"):
        rest = ref[len("models:/") :].strip("/")
        if rest and "@" not in rest and "/" not in rest:
            return _logged_model_ref(client, ref, rest, uri)
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
            raise TrackingError(f"{ref!r}: no such registered model version in {where}") from None
        source = str(mv.source)
        if source.startswith("models:/"):  # a registered logged model
            return _logged_model_ref(client, ref, source[len("models:/") :].strip("/"), uri)
        if not mv.run_id:
            raise TrackingError(f"{ref!r}: the model version has no source run")
        run_uri = client.get_run(mv.run_id).info.artifact_uri.rstrip("/") + "/"
        if source.startswith(f"runs:/{mv.run_id}/"):
            path = source[len(f"runs:/{mv.run_id}/") :]
        elif source.startswith(run_uri):
            path = source[len(run_uri) :]
        else:
            raise TrackingError(f"{ref!r}: version source {source} is not a run artifact")
        return ArtifactRef(mv.run_id, _check_artifact_path(ref, path))
    raise TrackingError(
        f"{ref!r}: expected runs:/<id>, models:/<model_id> or models:/<name>@<alias>"
    )


def download_artifacts(uri: str, ref: ArtifactRef, dst: str | Path) -> Path:
    """Copy a run's artifact directory (or a logged model's files) into ``dst`` and return
    the local directory; a missing directory is a TrackingError."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    Path(dst).mkdir(parents=True, exist_ok=True)
    if ref.model_id is not None:
        import mlflow.artifacts

        location = client.get_logged_model(ref.model_id).artifact_location
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(dst), tracking_uri=uri
            )
        except MlflowException as exc:
            first = str(exc).splitlines()[0]
            raise TrackingError(f"model {ref.model_id}: cannot download it: {first}") from None
        return Path(local)
    parent = str(Path(ref.artifact_path).parent)
    listed = client.list_artifacts(ref.run_id, None if parent == "." else parent)
    if not any(f.path == ref.artifact_path for f in listed):
        raise TrackingError(f"run {ref.run_id} has no artifact {ref.artifact_path!r}")
    try:
        local = client.download_artifacts(ref.run_id, ref.artifact_path, str(dst))
    except MlflowException as exc:
        first = str(exc).splitlines()[0]
        raise TrackingError(
            f"run {ref.run_id}: cannot download {ref.artifact_path}: {first}"
        ) from None
    return Path(local)
