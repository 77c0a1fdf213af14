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
    TAG_EXPERIMENT_RUN,
    TAG_NODE,
    TAG_NODE_KEY,
    TAG_REPLACES,
    TAG_UPSTREAM,
)
from dtmem.experiment.cache import (
    Lookup,
    Output,
    checkpoint_digest,
    dataset_digest,
    lookup,
    record_outputs,
)
from dtmem.experiment.dag import PLACEHOLDER, Node, Plan

__all__ = ["NodeOutcome", "RunResult", "fit_resources", "run_experiment"]

PARENT_TAG = "mlflow.parentRunId"


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


# --------------------------------------------------------------------------- binding


def _tracking(plan: Plan, node: Node, parent_id: str, tags: dict[str, str]) -> TrackingConfig:
    spec = plan.spec
    return TrackingConfig(
        uri=spec.tracking.uri,
        experiment=spec.tracking.experiment,
        system_metrics=spec.tracking.system_metrics,
        run_name=f"{spec.name}-{node.run_slug}",
        parent_run_id=parent_id,
        tags=tags,
    )


def _node_tags(
    plan: Plan, node: Node, parent_id: str, upstream_runs: list[str], replaces: str | None
) -> dict[str, str]:
    tags = {
        TAG_EXPERIMENT: plan.spec.name,
        TAG_EXPERIMENT_RUN: parent_id,
        TAG_NODE: node.name,
        TAG_NODE_KEY: node.key,
        TAG_UPSTREAM: ",".join(upstream_runs),
        TAG_CODE_VERSION: plan.code,
        PARENT_TAG: parent_id,  # also re-parents a resumed run to this experiment run
        **{f"dtmem.{k}": v for k, v in node.labels.items()},
    }
    if replaces:
        tags[TAG_REPLACES] = replaces
    return tags


def _wired(value: str, outcomes: dict[str, NodeOutcome]) -> str:
    """A plan-time placeholder (node:<name>) -> that node's checkpoint directory."""
    if not value.startswith(PLACEHOLDER):
        return value
    up = outcomes[value[len(PLACEHOLDER) :]]
    path = up.checkpoint()
    if path is None:
        raise RuntimeError(f"{up.name} recorded no checkpoint")
    return path


# --------------------------------------------------------------------------- stages


def _execute(
    node: Node, cfg: Any, tracking: TrackingConfig, root: Path
) -> tuple[str, list[Output]]:
    """Run the node's stage with its bound config; (its MLflow run id, its outputs)."""
    if node.stage == "collect":
        from pipelines.collect import run_collect

        collected = run_collect(cfg)
        return collected.run_id, _dataset_outputs(collected_ids(collected), Path(cfg.root))
    if node.stage in ("pretrain", "finetune"):
        from pipelines.finetune import run_finetune
        from pipelines.pretrain import run_pretrain

        trained = run_pretrain(cfg) if node.stage == "pretrain" else run_finetune(cfg)
        outs = [
            Output(
                "checkpoint", str(trained.checkpoint_dir), checkpoint_digest(trained.checkpoint_dir)
            )
        ]
        if trained.adapter_dir is not None:
            outs.append(
                Output("adapter", str(trained.adapter_dir), checkpoint_digest(trained.adapter_dir))
            )
        return trained.run_id, outs
    if node.stage == "evaluate":
        from pipelines.evaluate import run_evaluate

        evaluated = run_evaluate(cfg)
        assert evaluated.run_id is not None
        return evaluated.run_id, []
    if node.stage == "probe":
        from dtmem.experiment.memory_probe import run_memory_probe

        return run_memory_probe(cfg).run_id, []
    if node.stage == "sweep":
        from dtmem.sweep.base import STATE_FILE
        from tuning.sweep import run_sweep

        resume = (Path(cfg.storage_dir) / cfg.name / STATE_FILE).is_file()
        return run_sweep(cfg, resume=resume).run_id, []
    if node.stage in ("dataset", "import"):
        return _dataset_node(node, cfg, tracking, root)
    raise ValueError(f"{node.name}: unknown stage {node.stage!r}")


def collected_ids(collected: Any) -> list[str]:
    return [d.dataset_id for d in collected.datasets]


def _dataset_outputs(ids: list[str], root: Path) -> list[Output]:
    return [Output("dataset", str(root / i), dataset_digest(root / i), i) for i in ids]


def _dataset_node(
    node: Node, cfg: Any, tracking: TrackingConfig, root: Path
) -> tuple[str, list[Output]]:
    """Existing Minari datasets (opened, so a missing or broken one fails here) or a DQN
    Replay import; each logged as an MLflow dataset input with its content hash."""
    from dtmem.data.minari_io import open_dataset
    from dtmem.tracking import log_dataset_input, start_run

    with start_run(tracking, stage=node.stage, config=cfg) as run:
        if node.stage == "import":
            from dtmem.data.dqn_replay import import_dqn_replay

            import_dqn_replay(
                cfg.path,
                cfg.dataset_id,
                game=cfg.game,
                runs=cfg.runs,
                checkpoints=cfg.checkpoints,
                max_steps=cfg.max_steps,
                root=root,
            )
        for dataset_id in node.produces:
            digest = open_dataset(dataset_id, root).stored_content_hash or "unknown"
            run.set_tags({f"data.{dataset_id}.content_hash": digest})
            log_dataset_input(run, dataset_id, digest, str(root / dataset_id), context="source")
        return run.run_id, _dataset_outputs(list(node.produces), root)


def _abs(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def bind(
    plan: Plan,
    node: Node,
    outcomes: dict[str, NodeOutcome],
    parent_id: str,
    replaces: str | None,
    uri: str,
    root: Path,
) -> tuple[Any, TrackingConfig]:
    """The node's config as it runs: upstream checkpoints wired in, its run name, its
    MLflow store, parent and lineage tags, and every path made absolute here in the driver
    (the node runs in a Ray worker, whose working directory and environment are not ours)."""
    upstream_runs = [r for u in node.upstream if (r := outcomes[u].run_id)]
    tags = _node_tags(plan, node, parent_id, upstream_runs, replaces)
    tracking = _tracking(plan, node, parent_id, tags).model_copy(update={"uri": uri})
    cfg: Any = node.config
    update: dict[str, Any] = {"tracking": tracking}
    if node.stage in ("pretrain", "finetune"):
        update["run_name"] = tracking.run_name
        update["data"] = cfg.data.model_copy(update={"root": _abs(cfg.data.root or root)})
        update["checkpoint"] = cfg.checkpoint.model_copy(update={"dir": _abs(cfg.checkpoint.dir)})
    if node.stage == "finetune":
        update["pretrained"] = _wired(cfg.pretrained, outcomes)
    if node.stage == "evaluate" and cfg.baseline is not None:  # no model: its demonstrations
        data = cfg.baseline.data
        data = data.model_copy(update={"root": _abs(data.root or root)})
        update["baseline"] = cfg.baseline.model_copy(update={"data": data})
    elif node.stage == "evaluate":
        update["checkpoint"] = _wired(cfg.checkpoint, outcomes)
    if node.stage == "collect":
        update["root"] = _abs(cfg.root or root)
    if node.stage == "probe":
        update["pretrained"] = _wired(cfg.pretrained, outcomes)
        update["finetuned"] = _wired(cfg.finetuned, outcomes)
        update["data"] = cfg.data.model_copy(update={"root": _abs(cfg.data.root or root)})
    if node.stage == "sweep":
        update["name"] = tracking.run_name
        update["storage_dir"] = _abs(cfg.storage_dir)
        update["overrides"] = (*cfg.overrides, f"data.root={_abs(root)}")
    if node.stage in ("dataset", "import"):
        return cfg, tracking
    return cfg.model_copy(update=update), tracking


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
    try:
        run_id, outputs, stage_s = ray.get(task.remote(node, cfg, tracking, ctx.root))
    except Exception as exc:  # the node failed: its downstream is skipped, others go on
        cause = getattr(exc, "cause", None) or exc
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        return NodeOutcome(
            node.name,
            "failed",
            error=f"{type(cause).__name__}: {text}",
            wall_s=time.perf_counter() - t0,
        )
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


def _timed_execute(
    node: Node, cfg: Any, tracking: TrackingConfig, root: Path
) -> tuple[str, list[Output], float]:
    t0 = time.perf_counter()
    run_id, outputs = _execute(node, cfg, tracking, root)
    return run_id, outputs, time.perf_counter() - t0


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
        while pending or running:
            started = False
            for name in list(pending):
                node = plan.nodes[name]
                ups = [ctx.outcomes.get(u) for u in node.upstream]
                if any(u is not None and u.state in ("failed", "skipped") for u in ups):
                    pending.remove(name)
                    bad = next(
                        u.name for u in ups if u is not None and u.state in ("failed", "skipped")
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
                if running and (len(running) >= max_parallel or not _fits(need, used, capacity())):
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
