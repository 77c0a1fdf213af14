"""``dtmem experiment run``: run a plan's nodes, cached and resumable, on one Ray.

Set up: check the tracking store, open the experiment's parent run (stage ``experiment``,
the experiment file as ``experiment.yaml``), enter Ray once (every stage reuses it).
Run: in topological order, a node whose upstream nodes all succeeded is looked up in the
cache (``cache.lookup``); a verified finished run is reused, anything else runs in a driver
thread as soon as the CPUs/GPUs it asks for are free (each ask capped at the cluster's
total, so a node bigger than the cluster runs alone instead of waiting forever; on two
cores that is one node at a time, or two small ones side by side). A failed node skips its
downstream nodes; every other branch finishes.
Clean up: record each node's outputs on its run as it ends (so a SIGKILL of the driver
loses only the nodes in flight), keep ``nodes.json`` current on the parent run, build the
report, end the parent FAILED if any node failed, and list the failures.
Interrupted (Ctrl-C, or SIGTERM through ``dtmem.cli.guarded``): the nodes in flight are
cancelled (their stages unwind as from Ctrl-C and end their runs KILLED; a stage that does
not stop within ``STOP_GRACE_S`` has its process killed and its run ended KILLED here), then
the parent run ends KILLED. Nothing finished is lost: a rerun resumes as after a crash.

Each node's run is the stage's own MLflow run, created as a child of the parent run with
the lineage tags of ``dtmem.experiment``. Training nodes are named after their key
(``<experiment>-<node>-<key[:10]>``): a rerun after a crash resumes their own checkpoints.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtmem.config.tracking import TrackingConfig
from dtmem.experiment import (
    EXPERIMENT_ARTIFACT,
    NODES_ARTIFACT,
    STAGE,
    TAG_CODE_VERSION,
    TAG_EXPERIMENT,
    TAG_NODE_KEY,
    TAG_REPLACES,
)
from dtmem.experiment.cache import Lookup, Output, lookup, record_outputs
from dtmem.experiment.dag import Node, Plan
from dtmem.experiment.stages import _timed_execute, bind
from dtmem.interrupts import STOP_GRACE_S

__all__ = ["NodeOutcome", "RunResult", "cancel_within", "fit_resources", "run_experiment"]


@dataclass
class NodeOutcome:
    """What became of one node in this run."""

    name: str
    state: str  # ran | cached | failed | skipped
    run_id: str | None = None
    wall_s: float = 0.0
    error: str = ""
    outputs: list[Output] = field(default_factory=list)
    overhead_s: float = 0.0  # cache check + binding + recording, outside the stage itself
    start_s: float = 0.0  # time.perf_counter() when it started (ran nodes)

    def checkpoint(self) -> str | None:
        return next((o.path for o in self.outputs if o.kind == "checkpoint"), None)


@dataclass
class RunResult:
    """The outcome of ``run_experiment``: one entry per node, in plan order."""

    experiment_run_id: str
    outcomes: dict[str, NodeOutcome]
    wall_s: float
    report: Any | None = None

    @property
    def failures(self) -> list[NodeOutcome]:
        return [o for o in self.outcomes.values() if o.state == "failed"]

    @property
    def ok(self) -> bool:
        return all(o.state in ("ran", "cached") for o in self.outcomes.values())


class _NodesFailed(Exception):
    """Ends the parent run FAILED (caught by run_experiment)."""


def fit_resources(ask: dict[str, float], capacity: dict[str, float]) -> dict[str, float]:
    """The node's ask, each amount capped at the cluster's total (so it can always start)."""
    return {k: min(v, capacity.get(k, 0.0)) for k, v in ask.items() if v > 0}


def _fits(need: dict[str, float], used: dict[str, float], capacity: dict[str, float]) -> bool:
    return all(used.get(k, 0.0) + v <= capacity.get(k, 0.0) + 1e-9 for k, v in need.items())


# --------------------------------------------------------------------------- the loop


@dataclass
class _Context:
    plan: Plan
    uri: str
    root: Path  # the dataset root, resolved in the driver
    client: Any
    experiment_id: str | None
    parent: Any  # RunHandle
    outcomes: dict[str, NodeOutcome]
    say: Callable[[str], None]
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: dict[str, Any] = field(default_factory=dict)  # node name -> its Ray task

    def publish(self) -> None:
        """nodes.json on the parent run: what ``experiment status`` shows for this run."""
        with self.lock:
            rows = {
                n: {
                    "key": self.plan.nodes[n].key,
                    "state": o.state,
                    "run_id": o.run_id,
                    "wall_s": round(o.wall_s, 2),
                    "error": o.error,
                }
                for n, o in self.outcomes.items()
            }
        self.parent.log_text(json.dumps(rows, indent=1), NODES_ARTIFACT)


def _set_aside(run_dir: Path) -> None:
    """A training run directory whose finished model no longer verifies: renamed (nothing is
    deleted) so the stage trains afresh under the same run name instead of returning it."""
    if run_dir.exists():
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}"))


def _run_node(ctx: _Context, node: Node, found: Lookup) -> NodeOutcome:
    """In a driver thread: bind, run the stage as a Ray task, record its outputs."""
    import ray

    t0 = time.perf_counter()
    replaces = found.replaces
    cfg, tracking = bind(
        ctx.plan, node, ctx.outcomes, ctx.parent.run_id, replaces, ctx.uri, ctx.root
    )
    if found.stale and node.stage in ("pretrain", "finetune"):
        _set_aside(Path(cfg.checkpoint.dir) / cfg.run_name)
    # num_cpus=0: the node's Train workers / actors reserve the CPUs (the scheduler bounds
    # how many nodes are in flight); a separate process keeps stages that are not
    # thread-safe (matplotlib, MLflow's fluent API) apart.
    from dtmem.training.faults import forwarded

    env = forwarded()  # the tests' fault switches reach the node's process (none otherwise)
    options: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env else {}
    task = ray.remote(num_cpus=0, max_retries=0)(_timed_execute).options(**options)
    ref = task.remote(node, cfg, tracking, ctx.root)
    with ctx.lock:
        ctx.in_flight[node.name] = ref
    try:
        run_id, outputs, stage_s = ray.get(ref)
    except Exception as exc:  # the node failed: its downstream is skipped, others go on
        cause = getattr(exc, "cause", None) or exc
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        return NodeOutcome(
            node.name,
            "failed",
            error=f"{type(cause).__name__}: {text}",
            wall_s=time.perf_counter() - t0,
        )
    finally:
        with ctx.lock:
            ctx.in_flight.pop(node.name, None)
    record_outputs(ctx.client, run_id, outputs)
    if replaces == run_id:  # a training node resumed its own run: it replaces nothing
        ctx.client.delete_tag(run_id, TAG_REPLACES)
    wall = time.perf_counter() - t0
    return NodeOutcome(
        node.name,
        "ran",
        run_id,
        wall,
        outputs=outputs,
        overhead_s=max(0.0, wall - stage_s),
        start_s=t0,
    )


def _schedule(ctx: _Context, capacity: Callable[[], dict[str, float]], max_parallel: int) -> None:
    plan = ctx.plan
    pending = list(plan.nodes)
    running: dict[Future[NodeOutcome], tuple[str, dict[str, float]]] = {}
    used: dict[str, float] = {}
    total = len(pending)
    done_count = 0

    def finish(outcome: NodeOutcome) -> None:
        nonlocal done_count
        done_count += 1
        ctx.outcomes[outcome.name] = outcome
        run = f" (run {outcome.run_id})" if outcome.run_id else ""
        extra = f": {outcome.error}" if outcome.error else ""
        took = f" {outcome.wall_s:.1f}s" if outcome.state == "ran" else ""
        ctx.say(f"[{done_count}/{total}] {outcome.state:7} {outcome.name}{run}{took}{extra}")
        ctx.publish()

    with ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="node") as pool:
        try:
            while pending or running:
                started = False
                for name in list(pending):
                    node = plan.nodes[name]
                    ups = [ctx.outcomes.get(u) for u in node.upstream]
                    if any(u is not None and u.state in ("failed", "skipped") for u in ups):
                        pending.remove(name)
                        bad = next(
                            u.name
                            for u in ups
                            if u is not None and u.state in ("failed", "skipped")
                        )
                        finish(NodeOutcome(name, "skipped", error=f"upstream {bad} did not finish"))
                        continue
                    if any(u is None for u in ups):
                        continue  # an upstream node is pending or running
                    t0 = time.perf_counter()
                    found = lookup(ctx.client, ctx.experiment_id, node.key, _stage_tag(node))
                    if found.hit is not None:
                        pending.remove(name)
                        finish(
                            NodeOutcome(
                                name,
                                "cached",
                                found.hit.info.run_id,
                                outputs=found.outputs,
                                overhead_s=time.perf_counter() - t0,
                            )
                        )
                        continue
                    need = fit_resources(dict(node.resources), capacity())
                    if running and (
                        len(running) >= max_parallel or not _fits(need, used, capacity())
                    ):
                        continue
                    pending.remove(name)
                    for k, v in need.items():
                        used[k] = used.get(k, 0.0) + v
                    ctx.say(f"        start   {name} ({_fmt_resources(need)}; {found.reason})")
                    fut = pool.submit(_run_node, ctx, node, found)
                    running[fut] = (name, need)
                    started = True
                if not running:
                    if pending and not started:  # cannot happen: every ask fits an idle cluster
                        raise RuntimeError(f"scheduler stalled with {pending} pending")
                    continue
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    name, need = running.pop(fut)
                    for k, v in need.items():
                        used[k] -= v
                    finish(fut.result())

        except KeyboardInterrupt:
            _stop_in_flight(ctx, list(running))
            raise


def _stop_in_flight(ctx: _Context, futures: list[Future[NodeOutcome]]) -> None:
    """Cancel the nodes' Ray tasks (KeyboardInterrupt in each stage: its run ends KILLED),
    kill those that do not stop within ``STOP_GRACE_S`` (``cancel_within``), and end any run
    of theirs left RUNNING as KILLED."""
    with ctx.lock:
        names, refs = list(ctx.in_flight), list(ctx.in_flight.values())
    if not refs:
        return
    ctx.say(f"interrupted: stopping {len(refs)} running node(s): {', '.join(names)}")
    cancel_within(refs, futures, STOP_GRACE_S)
    if ctx.experiment_id is None:
        return
    for name in names:
        key = ctx.plan.nodes[name].key
        for run in ctx.client.search_runs(
            [ctx.experiment_id],
            f"tags.`{TAG_NODE_KEY}` = '{key}' and attributes.status = 'RUNNING'",
        ):
            ctx.client.set_terminated(run.info.run_id, "KILLED")


def cancel_within(refs: list[Any], futures: list[Future[Any]], grace: float) -> None:
    """Cancel the Ray tasks ``refs`` (``futures`` wait on their results): a KeyboardInterrupt
    in each, sent again halfway through ``grace``, then killed if still running.

    Ray raises the interrupt at the task's next Python instruction; one that lands where it
    is swallowed (a finalizer, a library's catch-all) is lost, and a second is raised afresh
    (``test_a_lost_cancel_is_sent_again_before_the_task_is_killed``). The stage itself runs
    inside ``dtmem.interrupts.cancellable``, without which no cancel reaches it at all where
    its worker ignores SIGINT.

    A task whose result is in is not cancelled again: Ray 2.60 fails a force-cancelled task
    at once, and if the task's own reply is still on its way the driver aborts ("Tried to
    complete task that was not pending", a race like ray-project/ray#54846), ending the study."""
    import ray

    for force in (False, False, True):
        _, running = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        for ref in running:
            ray.cancel(ref, force=force)
        if not wait(futures, timeout=grace / 2).not_done:
            return


def _stage_tag(node: Node) -> str:
    return node.stage  # every stage tags its run dtmem.stage=<stage> (the sweep: "sweep")


def _fmt_resources(r: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(r.items())) or "no CPUs"


def run_experiment(
    plan: Plan,
    *,
    say: Callable[[str], None] = print,
    report: bool | None = None,
    verbose: bool = False,
) -> RunResult:
    """Run every node of ``plan`` that is not cached; returns one outcome per node.
    A failed node does not raise: see ``RunResult.failures`` (the parent run ends FAILED)."""
    from dtmem.data.minari_io import resolve_root
    from dtmem.ray_session import ray_session
    from dtmem.tracking import _client, check_tracking, resolve_tracking_uri, start_run

    spec = plan.spec
    t0 = time.perf_counter()
    uri = resolve_tracking_uri(spec.tracking.uri)
    check_tracking(uri)
    if spec.datasets_dir is not None:  # before Ray starts: its workers inherit it
        os.environ.setdefault("MINARI_DATASETS_PATH", str(spec.datasets_dir.resolve()))
    client = _client(uri)
    parent_tracking = TrackingConfig(
        uri=spec.tracking.uri,
        experiment=spec.tracking.experiment,
        system_metrics=False,
        run_name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
    )
    parent_tags = {TAG_EXPERIMENT: spec.name, TAG_CODE_VERSION: plan.code}
    outcomes: dict[str, NodeOutcome] = {}
    parent_id = ""
    try:
        with start_run(parent_tracking, stage=STAGE, config=spec, tags=parent_tags) as parent:
            parent_id = parent.run_id
            parent.log_text(plan.path.read_text(), EXPERIMENT_ARTIFACT)
            exp = client.get_experiment_by_name(spec.tracking.experiment)
            ctx = _Context(
                plan=plan,
                uri=uri,
                root=resolve_root(None),
                client=client,
                experiment_id=exp.experiment_id if exp else None,
                parent=parent,
                outcomes=outcomes,
                say=say,
            )
            say(f"experiment {spec.name}: {len(plan.nodes)} nodes, MLflow run {parent_id}")
            with ExitStack() as stack:
                cap: dict[str, float] = {}

                def capacity() -> dict[str, float]:
                    """Ray is entered when the first node must run: a cached rerun needs none."""
                    if not cap:
                        ray = stack.enter_context(ray_session(verbose=verbose))
                        found = ray.cluster_resources()
                        cap.update(
                            CPU=float(found.get("CPU", 1.0)), GPU=float(found.get("GPU", 0.0))
                        )
                    return cap

                max_parallel = spec.resources.max_parallel or max(1, len(plan.nodes))
                _schedule(ctx, capacity, max_parallel)
            ordered = {n: outcomes[n] for n in plan.nodes}
            outcomes.clear()
            outcomes.update(ordered)
            if any(o.state == "failed" for o in outcomes.values()):
                failed = [n for n, o in outcomes.items() if o.state == "failed"]
                parent.set_tags({"dtmem.failed_nodes": ",".join(failed)[:5000]})
                raise _NodesFailed()
    except _NodesFailed:
        pass
    result = RunResult(parent_id, outcomes, time.perf_counter() - t0)
    if result.ok and (spec.report.enabled if report is None else report):
        result.report = make_report(plan, uri, parent_id)
    return result


def make_report(plan: Plan, uri: str, experiment_run_id: str) -> Any:
    """The report of one experiment run, with the file's report settings."""
    from dtmem.experiment.report import build_report

    r = plan.spec.report
    return build_report(
        uri,
        experiment_run_id,
        r.out_dir / plan.spec.name,
        statistic=None if r.aggregate == "auto" else r.aggregate,
        confidence=r.confidence,
        num_resamples=r.bootstrap_resamples,
        seed=r.seed,
    )
