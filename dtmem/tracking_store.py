"""The MLflow tracking store itself: which URI to use (``resolve_tracking_uri``: the
argument, $MLFLOW_TRACKING_URI or ``sqlite:///mlflow.db``; no ./mlruns file store), whether it
can be reached and written before any compute (``check_tracking``), the client, experiments
created once and tagged for the UI's training view (``ensure_experiment``), ``TrackingError``,
and credential redaction (``redact_uri`` and ``_redact_tree``), which everything that names a
store or logs a config goes through. MLflow is imported inside the functions.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
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
