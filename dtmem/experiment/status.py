"""``dtmem experiment status``: each node's state, MLflow run and wall time, read from MLflow
alone (no Ray, no files), so it works while a run is going and from any machine that
reaches the tracking server.

States, from the runs that carry the node's key:
    running  the newest run of the key is RUNNING (also what a killed driver leaves behind,
             until the node runs again)
    done     a finished run with its outputs recorded, made by the latest experiment run
    cached   such a run from an earlier experiment run (the latest one reused it)
    failed   the newest run of the key failed
    stopped  the newest run of the key was stopped (KILLED: Ctrl-C, SIGTERM, a study's stop)
    pending  no run yet
Outputs are not re-hashed here: ``plan`` and ``run`` verify them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dtmem.experiment import STAGE, TAG_EXPERIMENT, TAG_EXPERIMENT_RUN, TAG_OUTPUTS, TAG_STAGE
from dtmem.experiment.cache import runs_with_key
from dtmem.experiment.dag import Plan

__all__ = ["NodeStatus", "experiment_status", "latest_experiment_run"]


@dataclass(frozen=True)
class NodeStatus:
    name: str
    stage: str
    key: str
    state: str  # done | cached | running | failed | stopped | pending
    run_id: str | None
    wall_s: float | None


def latest_experiment_run(client: object, experiment_id: str, name: str) -> str | None:
    """The newest parent run of the experiment ``name``, or None."""
    runs = client.search_runs(  # type: ignore[attr-defined]
        [experiment_id],
        filter_string=f"tags.`{TAG_STAGE}` = '{STAGE}' and tags.`{TAG_EXPERIMENT}` = '{name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def experiment_status(plan: Plan) -> tuple[str | None, list[NodeStatus]]:
    """(the latest experiment run id, one status per node in plan order)."""
    from dtmem.tracking import _client, check_tracking, resolve_tracking_uri

    uri = resolve_tracking_uri(plan.spec.tracking.uri)
    check_tracking(uri)
    client = _client(uri)
    exp = client.get_experiment_by_name(plan.spec.tracking.experiment)
    if exp is None:
        return None, [
            NodeStatus(n.name, n.stage, n.key, "pending", None, None) for n in plan.nodes.values()
        ]
    latest = latest_experiment_run(client, exp.experiment_id, plan.spec.name)
    now_ms = time.time() * 1000
    out = []
    for node in plan.nodes.values():
        runs = runs_with_key(client, exp.experiment_id, node.key, node.stage)
        state, run = "pending", None
        finished = [r for r in runs if r.info.status == "FINISHED" and TAG_OUTPUTS in r.data.tags]
        if runs and runs[0].info.status == "RUNNING":  # the newest run (older: killed drivers)
            state, run = "running", runs[0]
        elif finished:
            run = finished[0]
            made_now = run.data.tags.get(TAG_EXPERIMENT_RUN) == latest
            state = "done" if made_now else "cached"
        elif runs:
            run = runs[0]
            state = "stopped" if run.info.status == "KILLED" else "failed"
        wall = None
        if run is not None and run.info.start_time:
            end = run.info.end_time or now_ms
            wall = (end - run.info.start_time) / 1000
        out.append(
            NodeStatus(
                node.name, node.stage, node.key, state, run.info.run_id if run else None, wall
            )
        )
    return latest, out
