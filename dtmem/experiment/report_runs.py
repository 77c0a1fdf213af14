"""Reading an experiment run back from MLflow for the report: ``_Node`` (what the report
needs of one node's run), the search for every run tagged with the experiment run, its parent
run and the parent's ``nodes.json`` (which names nodes skipped as cached, whose runs belong to
an earlier experiment run), and ``_node_runs``, which returns the finished node runs oldest
first with notes on the others. ``ReportError`` lives here because finding the runs is where
it is raised; ``dtmem.experiment.report`` re-exports it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtmem.experiment import (
    NODES_ARTIFACT,
    STAGE,
    TAG_ARM,
    TAG_EVAL_KIND,
    TAG_EXPERIMENT_RUN,
    TAG_FT_MODE,
    TAG_NODE,
    TAG_SEED,
    TAG_STAGE,
    TAG_TASK,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

CACHED_TAG = "dtmem.cached"  # optional: a run reused as cached may also say so itself
_TRIAL_ENDS = {  # a sweep trial's run that did not finish, by its trial status
    "early_stopped": ", a sweep trial its scheduler stopped early",
    "interrupted": ", a sweep trial stopped by an interrupt",
    "failed": ", a sweep trial that failed",
}


class ReportError(ValueError):
    """The experiment run cannot be found, or its id is malformed."""


@dataclass(frozen=True)
class _Node:
    """What the report needs of one node's MLflow run."""

    run_id: str
    node: str
    stage: str
    arm: str
    ft_mode: str
    seed: str
    task: str
    eval_kind: str
    cached: bool
    metrics: Mapping[str, float]
    params: Mapping[str, str]
    start_ms: int
    end_ms: int | None

    @classmethod
    def from_run(cls, run: Run, cached: bool) -> _Node:
        tags = run.data.tags
        return cls(
            run_id=run.info.run_id,
            node=tags.get(TAG_NODE, run.info.run_name or run.info.run_id),
            stage=tags.get(TAG_STAGE, ""),
            arm=tags.get(TAG_ARM, ""),
            ft_mode=tags.get(TAG_FT_MODE) or "none",
            seed=tags.get(TAG_SEED, ""),
            task=tags.get(TAG_TASK, ""),
            eval_kind=tags.get(TAG_EVAL_KIND, ""),
            cached=cached,
            metrics=dict(run.data.metrics),
            params=dict(run.data.params),
            start_ms=int(run.info.start_time or 0),
            end_ms=int(run.info.end_time) if run.info.end_time else None,
        )


def _search(client: MlflowClient, experiment_run_id: str) -> list[Run]:
    """Every run tagged with this experiment run, in any MLflow experiment."""
    from mlflow.entities import ViewType

    exp_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs: list[Run] = []
    token = None
    while exp_ids:
        page = client.search_runs(
            exp_ids,
            filter_string=f"tags.`{TAG_EXPERIMENT_RUN}` = '{experiment_run_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def _parent(client: MlflowClient, experiment_run_id: str, runs: Sequence[Run]) -> Run:
    """The experiment's parent run: the run with this id, or one tagged ``stage=experiment``."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(experiment_run_id)
        if run.data.tags.get(TAG_STAGE) == STAGE:
            return run
    except MlflowException:
        pass
    for run in runs:
        if run.data.tags.get(TAG_STAGE) == STAGE:
            return run
    raise ReportError(f"experiment run {experiment_run_id}: no run tagged {TAG_STAGE}={STAGE}")


def _listed(client: MlflowClient, parent_id: str) -> dict[str, dict[str, Any]]:
    """The parent's ``nodes.json`` (node -> {state, run_id, ...}), or {} if it has none."""
    import json

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(parent_id, NODES_ARTIFACT, tmp)
        except (MlflowException, OSError):
            return {}
        listed = json.loads(Path(path).read_text())
    return listed if isinstance(listed, dict) else {}


def _node_runs(client: MlflowClient, experiment_run_id: str) -> tuple[Run, list[_Node], list[str]]:
    """(the parent run, its finished node runs oldest first, notes on the others).

    A node run is tagged with the experiment run that made it, so a node the runner skipped
    as cached points at a run of an EARLIER experiment run: those are found through the
    parent's ``nodes.json`` and marked cached (as is a run tagged ``dtmem.cached=true``)."""
    tagged = _search(client, experiment_run_id)
    parent = _parent(client, experiment_run_id, tagged)
    runs = {r.info.run_id: r for r in tagged if r.info.run_id != parent.info.run_id}
    listed = _listed(client, parent.info.run_id)
    for entry in listed.values():
        run_id = entry.get("run_id") if isinstance(entry, dict) else None
        if isinstance(run_id, str) and run_id and run_id not in runs:
            runs[run_id] = client.get_run(run_id)
    from dtmem.sweep.tracking import TRIAL_STATUS_TAG

    notes, nodes = [], []
    for run in sorted(runs.values(), key=lambda r: (r.info.start_time or 0, r.info.run_id)):
        tags = run.data.tags
        if run.info.status != "FINISHED":
            trial = _TRIAL_ENDS.get(tags.get(TRIAL_STATUS_TAG, ""), "")
            notes.append(
                f"run {run.info.run_id} ({tags.get(TAG_NODE, '?')}) is {run.info.status}"
                f"{trial}: not counted"
            )
            continue
        cached = (
            tags.get(TAG_EXPERIMENT_RUN) != experiment_run_id
            or tags.get(CACHED_TAG, "").lower() == "true"
        )
        nodes.append(_Node.from_run(run, cached))
    return parent, nodes, notes
