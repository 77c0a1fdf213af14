"""MLflow of the trials: a nested run per trial under the sweep's run (tag
``mlflow.parentRunId``; ``dtmem.trial_id``), named by what the trial varies
(``slots=64,seed=1``), found by trial id so that a restarted trial continues the same run,
and ended with its trial status (``dtmem.trial_status``).

Nothing logged carries a credential: the trial's config holds the resolved tracking URI
(``$MLFLOW_TRACKING_URI`` may be ``https://user:token@host``), so its params, its
``config.yaml`` and its tags go through ``dtmem.tracking.redact_uri`` (``trial_params``,
``trial_tags``, ``trial_config_yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml

from dtmem.config.tracking import TrackingConfig
from dtmem.sweep.plan import TrialSpec

if TYPE_CHECKING:
    from pydantic import BaseModel

    from dtmem.tracking import RunHandle

__all__ = [
    "PARENT_TAG",
    "SWEEP_DIR_TAG",
    "SWEEP_TAG",
    "TRIAL_STATUS_TAG",
    "TRIAL_TAG",
    "end_open_trial_runs",
    "end_trial_run",
    "find_trial_run",
    "mlflow_client",
    "trial_config_yaml",
    "trial_end",
    "trial_params",
    "trial_run",
    "trial_tags",
]

TRIAL_TAG = "dtmem.trial_id"
SWEEP_TAG = "dtmem.sweep"
SWEEP_DIR_TAG = "dtmem.sweep_dir"
TRIAL_STATUS_TAG = "dtmem.trial_status"  # finished | early_stopped | failed | interrupted
PARENT_TAG = "mlflow.parentRunId"


def mlflow_client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def find_trial_run(tracking: TrackingConfig, parent_run_id: str, trial_id: str) -> str | None:
    """The MLflow run of a trial of the sweep run ``parent_run_id``, or None."""
    assert tracking.uri is not None
    client = mlflow_client(tracking.uri)
    exp = client.get_experiment_by_name(tracking.experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = "
        f"'{parent_run_id}'",
        max_results=2,
    )
    return runs[0].info.run_id if runs else None


def trial_tags(spec: TrialSpec, trial_id: str, values: Mapping[str, Any]) -> dict[str, str]:
    """The tags of a trial's run (besides the stage's own): lineage, versions, swept values."""
    from dtmem.tracking import STAGE_TAG, git_commit, redact_uri, version_tags

    assert spec.parent_run_id is not None, "trials run under the sweep's run"
    tags = {
        STAGE_TAG: spec.stage,
        TRIAL_TAG: trial_id,
        SWEEP_TAG: spec.name,
        **version_tags(),
        **spec.tracking.tags,
        **{f"sweep.{k}": str(v) for k, v in values.items()},
        # last: an experiment node's tags name the experiment run as parent, but a trial's
        # parent is its sweep's run (where find_trial_run looks to close it)
        PARENT_TAG: spec.parent_run_id,
    }
    commit = git_commit()
    if commit:
        tags["dtmem.git_commit"] = commit
    return {k: redact_uri(v) for k, v in tags.items()}


def trial_params(cfg: BaseModel) -> dict[str, str]:
    """The trial's config as flat params, URIs without credentials."""
    from dtmem.tracking import config_params, redact_uri

    return {k: redact_uri(v) for k, v in config_params(cfg).items()}


def trial_config_yaml(cfg: BaseModel) -> str:
    """The trial's config as YAML (the run's ``config.yaml``), URIs without credentials."""
    return yaml.safe_dump(_redacted(cfg.model_dump(mode="json")), sort_keys=False)


def _redacted(value: Any) -> Any:
    from dtmem.tracking import redact_uri

    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return redact_uri(value) if isinstance(value, str) else value


def trial_run(
    spec: TrialSpec, cfg: BaseModel, trial_id: str, values: Mapping[str, Any], tags: dict[str, str]
) -> RunHandle:
    """The trial's nested MLflow run, named by what it varies: found by trial id (a restarted
    trial continues it) or created; config as params and config.yaml, the swept values as
    tags (``tags``: the stage's own, e.g. its datasets)."""
    from dtmem.tracking import RunHandle, redact_uri

    assert spec.tracking.uri is not None and spec.parent_run_id is not None
    client = mlflow_client(spec.tracking.uri)
    run_id = find_trial_run(spec.tracking, spec.parent_run_id, trial_id)
    stage_tags = {k: redact_uri(v) for k, v in tags.items() if k != PARENT_TAG}
    all_tags = {**stage_tags, **trial_tags(spec, trial_id, values)}
    if run_id is None:
        exp = client.get_experiment_by_name(spec.tracking.experiment)
        run = client.create_run(exp.experiment_id, tags=all_tags, run_name=spec.label(values))
        run_id = run.info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
    handle = RunHandle(run_id=run_id, uri=spec.tracking.uri)
    handle.set_tags(all_tags)
    handle.log_params(trial_params(cfg))
    handle.log_text(trial_config_yaml(cfg), "config.yaml")
    return handle


def trial_end(exc: BaseException) -> tuple[str, str]:
    """(MLflow status, trial status) of a trial's run ended by ``exc``: interrupted (Ctrl-C,
    SIGTERM, or Tune stopping the trial: its report exits) or failed."""
    if isinstance(exc, SystemExit | KeyboardInterrupt):
        return "KILLED", "interrupted"
    return "FAILED", "failed"


def end_trial_run(uri: str, run_id: str, status: str, trial_status: str) -> None:
    client = mlflow_client(uri)
    client.set_tag(run_id, TRIAL_STATUS_TAG, trial_status)
    client.set_terminated(run_id, status=status)


def end_open_trial_runs(parent: RunHandle, exc: BaseException) -> list[str]:
    """End every trial run of the sweep run ``parent`` that is still RUNNING as ``exc`` ended
    the sweep (``trial_end``: a trial whose process Tune stopped before its own clean-up had
    ended its run); returns their ids."""
    client = parent.client
    experiment_id = client.get_run(parent.run_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent.run_id}' and attributes.status = 'RUNNING'",
    )
    for run in runs:
        end_trial_run(parent.uri, run.info.run_id, *trial_end(exc))
    return [r.info.run_id for r in runs]
