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

What researchers open in the UI: every experiment dtmem creates is tagged as model training
(``mlflow.experimentKind``), so it opens in the training view, not the GenAI one; datasets are
run inputs (``log_dataset_input``) with our content hash as their digest; a trained model is
an MLflow logged model without a flavour (``log_logged_model``: safetensors and config JSON,
nothing pickled), which ``resolve_artifact_ref``/``download_artifacts`` (and so dtmem's own
loader) read back from ``models:/<model_id>``.

No credential is ever logged or printed: ``redact_uri`` strips ``user:password@`` and
token-like query parameters from a URI, and params, the logged config and every message
that names a store go through it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
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
    "ensure_experiment",
    "find_run",
    "git_commit",
    "log_dataset_input",
    "log_logged_model",
    "redact_uri",
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
# The tag the MLflow UI (3.x) reads to choose an experiment's view; "custom_model_development"
# is its model-training view (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
MODEL_TYPE = "dtmem"  # a logged model's model_type: safetensors + config JSON, no flavour
_SECRET_KEY = re.compile(
    r"(token|secret|passw(or)?d|pwd|api[-_]?key|access[-_]?key|key|sig(nature)?|credential|"
    r"auth|session|sas|jwt)",
    re.IGNORECASE,
)
_REF_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def redact_uri(uri: str) -> str:
    """``uri`` without credentials: ``user:password@`` is stripped from the host part and
    token-like query parameters (token, key, secret, password, signature, ...) are dropped.
    Anything that is not a URI comes back unchanged."""
    if "://" not in uri and "?" not in uri:
        return uri
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return uri.split("@")[-1] if "@" in uri else uri
    netloc = parts.netloc.rpartition("@")[2]
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if not _SECRET_KEY.search(k)]
    if netloc == parts.netloc and len(kept) == len(query):
        return uri  # unchanged: keep the spelling (urlunsplit would normalise sqlite:////)
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(kept), parts.fragment)
    )


def _redact_tree(value: Any) -> Any:
    """Every URI-like string in a nested dict/list, redacted."""
    if isinstance(value, dict):
        return {k: _redact_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_tree(v) for v in value]
    if isinstance(value, str) and ("://" in value or "@" in value):
        return redact_uri(value)
    return value


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
            f"tracking uri {redact_uri(uri)!r}: the file store (./mlruns) is not supported; "
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
        # the probe needs no credentials (and urllib cannot take them in the URL)
        url = redact_uri(uri).split("?")[0].rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=_CONNECT_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            return  # something answered: the server is up (auth and routes are MLflow's job)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"tracking server {redact_uri(uri)} is unreachable: {reason}"
            ) from None
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


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created if missing (artifacts beside a sqlite db), and
    tagged as model training so the UI opens it in the training view."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None
        db = _sqlite_path(uri) if uri.startswith("sqlite:///") else None
        if db is not None:
            location = (db.parent / "mlartifacts" / name).resolve().as_uri()
        try:
            return str(
                client.create_experiment(
                    name,
                    artifact_location=location,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            )
        except MlflowException:  # created meanwhile by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(EXPERIMENT_KIND_TAG) is None:  # made before dtmem tagged its experiments
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
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


# --------------------------------------------------------------------------- datasets, models


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
    the model id (``models:/<model_id>`` loads it back). A failed upload leaves the model
    FAILED, never READY."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TrackingError(f"{model_dir}: not a model directory")
    client = run.client
    experiment_id = client.get_run(run.run_id).info.experiment_id
    model = client.create_logged_model(
        experiment_id=experiment_id,
        name=name,
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
