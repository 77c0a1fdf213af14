"""The planned experiment's types: a ``Node`` per stage run and the ordered ``Plan``.

Built by ``dtmem.experiment.dag.build_plan``; read by the runner, the cache, the estimate
and ``experiment status``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dtmem.experiment.spec import ExperimentSpec

__all__ = ["PLACEHOLDER", "ExperimentError", "Node", "Plan"]

PLACEHOLDER = "node:"  # a wiring field's plan-time value: node:<upstream node name>


class ExperimentError(ValueError):
    """The experiment file cannot be planned (one line naming the file and field)."""


@dataclass(frozen=True)
class Node:
    """One stage run of the experiment."""

    name: str
    stage: str  # collect | dataset | import | pretrain | finetune | evaluate | probe | sweep
    config: BaseModel  # the validated stage config, as planned (wiring fields: placeholders)
    upstream: tuple[str, ...]
    labels: Mapping[str, str]  # arm, seed, task, ft_mode, eval_kind (the MLflow tags)
    resources: Mapping[str, float]  # what the node asks Ray for: {"CPU": n, "GPU": g}
    declared: str  # the field of the experiment file that declares it
    produces: tuple[str, ...] = ()  # dataset ids (dataset nodes)
    key_extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. a sweep's base config
    key: str = ""

    @property
    def run_slug(self) -> str:
        """A run/directory name derived from the node and its key (resume finds it again)."""
        return f"{self.name.replace('/', '-')}-{self.key[:10]}"


@dataclass(frozen=True)
class Plan:
    """The validated DAG of one experiment file, in topological order."""

    spec: ExperimentSpec
    path: Path
    nodes: dict[str, Node]  # topological order
    code: str

    def edges(self) -> Iterator[tuple[str, str]]:
        for node in self.nodes.values():
            for up in node.upstream:
                yield up, node.name

    def downstream(self, name: str) -> set[str]:
        """Every node that reads ``name``, directly or not."""
        out: set[str] = set()
        frontier = [name]
        while frontier:
            cur = frontier.pop()
            for node in self.nodes.values():
                if cur in node.upstream and node.name not in out:
                    out.add(node.name)
                    frontier.append(node.name)
        return out
