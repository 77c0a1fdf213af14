"""One node's stage: its config bound for this run, and the call that runs it.

``bind`` turns a plan-time node config into the one that runs (upstream checkpoints wired
in, run name, MLflow store, parent and lineage tags, absolute paths); ``_execute`` calls the
stage's own entry point (the same function the CLI calls) and names the outputs it left.
The scheduling loop around them is ``dtmem.experiment.runner``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtmem.config.tracking import TrackingConfig
from dtmem.experiment import (
    TAG_CODE_VERSION,
    TAG_EXPERIMENT,
    TAG_EXPERIMENT_RUN,
    TAG_NODE,
    TAG_NODE_KEY,
    TAG_REPLACES,
    TAG_UPSTREAM,
)
from dtmem.experiment.cache import Output, checkpoint_digest, dataset_digest
from dtmem.experiment.dag import PLACEHOLDER, Node, Plan

if TYPE_CHECKING:
    from dtmem.experiment.runner import NodeOutcome

__all__ = ["bind", "collected_ids"]

PARENT_TAG = "mlflow.parentRunId"

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


def _timed_execute(
    node: Node, cfg: Any, tracking: TrackingConfig, root: Path
) -> tuple[str, list[Output], float]:
    from dtmem.interrupts import cancellable

    t0 = time.perf_counter()
    with cancellable():  # the runner's stop (ray.cancel) interrupts the stage
        run_id, outputs = _execute(node, cfg, tracking, root)
    return run_id, outputs, time.perf_counter() - t0
