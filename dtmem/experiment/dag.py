"""The experiment as a DAG: one node per stage run, edges from what each node reads.

``build_plan(path, overrides)`` reads the experiment file and every stage YAML it names,
validates each stage config as its command would, wires the nodes and orders them. Every
problem is a one-line ``ExperimentError`` naming the experiment file and the field (and,
for a stage config, that file and its field), raised before anything runs.

Nodes (names are also the MLflow tag ``dtmem.node``):

    collect/<dataset>   dataset/<dataset>   import/<dataset>
    pretrain/<arm>/s<seed>
    finetune/<arm>/s<seed>/<task>/<mode>
    evaluate/<arm>/s<seed>/pretrained                    train tasks
    evaluate/<arm>/s<seed>/<task>/zero_shot              a held-out task
    evaluate/<arm>/s<seed>/<task>/<mode>/finetuned       its held-out task
    evaluate/<arm>/s<seed>/<task>/<mode>/forgetting      the train tasks again
    evaluate/<baseline>/s<seed>/<task>/finetuned         a baseline on a held-out task
    probe/<arm>/s<seed>/<task>/<mode>                    the memory before / after
    sweep/<name>

Edges: a training node (or a sweep's base) reads the dataset nodes that produce its
``data.datasets`` ids; a fine-tune reads its pretraining; an evaluation reads the model it
evaluates (a baseline's, the datasets of its demonstrations); ``after:`` adds explicit edges (and so can make a cycle, which is refused).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dtmem.config.base import ConfigError, load_config
from dtmem.experiment.keys import code_version, node_key
from dtmem.experiment.nodes import _Builder
from dtmem.experiment.plan import PLACEHOLDER, ExperimentError, Node, Plan
from dtmem.experiment.spec import ExperimentSpec

__all__ = ["PLACEHOLDER", "ExperimentError", "Node", "Plan", "build_plan"]


def _explicit_edges(b: _Builder) -> None:
    """The file's ``after:`` entries as extra upstream edges (each must name a node)."""
    extra: dict[str, tuple[str, tuple[str, ...]]] = {}
    for arm, arm_spec in b.spec.arms.items():
        for seed in b.spec.seeds:
            extra[f"pretrain/{arm}/s{seed}"] = (f"arms.{arm}.after", arm_spec.after)
    for name, sweep in b.spec.sweeps.items():
        extra[f"sweep/{name}"] = (f"sweeps.{name}.after", sweep.after)
    for node_name, (field_, after) in extra.items():
        for ref in after:
            if ref not in b.nodes:
                raise ExperimentError(f"{b.where(field_)}: {ref!r} is not a node of the experiment")
        if after:
            node = b.nodes[node_name]
            ups = tuple(dict.fromkeys((*node.upstream, *after)))
            b.nodes[node_name] = replace(node, upstream=ups)


def _ordered(b: _Builder) -> dict[str, Node]:
    """Depth-first topological order (declaration order among independent nodes)."""
    order: dict[str, Node] = {}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(name: str) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*stack[stack.index(name) :], name]
            raise ExperimentError(f"{b.where(b.nodes[name].declared)}: cycle: {' -> '.join(cycle)}")
        state[name] = 1
        stack.append(name)
        for up in b.nodes[name].upstream:
            visit(up)
        stack.pop()
        state[name] = 2
        order[name] = b.nodes[name]

    for name in b.nodes:
        visit(name)
    return order


def build_plan(path: str | Path, overrides: list[str] | None = None) -> Plan:
    """Read, validate and wire the experiment file; every error before anything runs."""
    path = Path(path)
    try:
        spec = load_config(ExperimentSpec, path, list(overrides or []))
    except ConfigError as exc:
        raise ExperimentError(str(exc).replace("Value error, ", "")) from None
    b = _Builder(spec, path)
    b.datasets()
    b.pretrains()
    b.finetunes()
    b.evaluations()
    b.sweeps()
    _explicit_edges(b)
    ordered = _ordered(b)
    code = code_version()
    keyed: dict[str, Node] = {}
    for name, node in ordered.items():
        ups = [keyed[u].key for u in node.upstream]
        key = node_key(node.stage, node.config, ups, code, node.key_extra)
        keyed[name] = replace(node, key=key)
    return Plan(spec=spec, path=path, nodes=keyed, code=code)
