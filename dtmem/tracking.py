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

The code lives in three modules, re-exported here (import from ``dtmem.tracking``): the store,
URIs and redaction in ``tracking_store``; runs, ``RunHandle`` and ``start_run`` in
``tracking_runs``; datasets, logged models and model references in ``tracking_models``.
"""

from __future__ import annotations

from dtmem.tracking_models import (
    MODEL_TYPE,
    ArtifactRef,
    download_artifacts,
    log_dataset_input,
    log_logged_model,
    register_model_dir,
    resolve_artifact_ref,
)
from dtmem.tracking_runs import (
    STAGE_TAG,
    RunHandle,
    attach,
    config_params,
    find_run,
    git_commit,
    start_run,
    version_tags,
)
from dtmem.tracking_store import (
    DEFAULT_TRACKING_URI,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    TrackingError,
    check_tracking,
    ensure_experiment,
    redact_uri,
    resolve_tracking_uri,
)
from dtmem.tracking_store import _client as _client  # imported by experiment code, pipelines

__all__ = [
    "DEFAULT_TRACKING_URI",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "MODEL_TYPE",
    "STAGE_TAG",
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
