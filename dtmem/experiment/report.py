"""The experiment report, rebuilt from MLflow alone: a table of arms x measures (per task and
aggregated), each cell a mean (IQM for Atari) with a 95% stratified bootstrap interval over
seeds within tasks, its seed count and its runs; bar, heatmap and training-curve plots.

What it reads (the runner's tags on each node's run, all carrying
``dtmem.experiment_run_id``): ``dtmem.stage``, ``dtmem.arm``, ``dtmem.ft_mode``,
``dtmem.seed``, ``dtmem.task``, ``dtmem.eval_kind``, ``dtmem.node``, ``dtmem.cached``; the
metrics ``eval/<task>/success_rate`` (Meta-World) or ``eval/<task>/score_normalized`` (Atari,
human-normalised), ``train/loss``, and the param ``model.params_trainable``. Only FINISHED runs count.

The measures, each keyed by (arm, fine-tune mode, task, seed):

- ``finetuned``: an ``eval_kind=finetuned`` run's score on each task it evaluated.
- ``zero_shot`` and ``pretrained``: the same from ``zero_shot`` and ``pretrained`` runs.
- ``forgetting``: a ``forgetting`` run evaluates the model fine-tuned on task H (its
  ``dtmem.task``) back on the pretraining tasks j; its value for task H and seed s is
  mean_j [score_j(fine-tuned) - score_j(pretrained, same arm and seed)] (negative: forgot).
- the row ``EXPERTS_ARM`` of ``pretrained``: the scripted experts' success rate on the
  pretraining tasks, ``collect/<task>/success_rate`` of each ``collect`` node run (the data
  the models learnt from); absent where no node collected data (datasets given by id).
- ``trainable_params`` and ``finetune_wall_s``: from ``finetune`` runs; the wall time is the
  run's end minus start time in MLflow (the stages log no wall-time metric).

A cell never invents: a (row, measure, task) with no finished run is a dash and a note; a
cell resting on fewer seeds than its measure's others says so.

This module holds the entry point ``build_report``, ``Report``, the training curves, the
memory heatmaps and the atomic write; reading MLflow is in ``report_runs``, the numbers and
``Cell`` in ``report_cells``, the markdown and CSV in ``report_tables``, the figures in
``report_plots``. Everything public is importable from here.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from dtmem import metrics as M
from dtmem.experiment import TAG_EXPERIMENT
from dtmem.experiment.report_cells import (
    AGGREGATE,
    EXPERTS_ARM,
    MEASURES,
    SCORE_MEASURES,
    TRAINABLE_PARAM,
    Cell,
    _Bootstrap,
    _cells,
    _collect,
    _score_name,
)
from dtmem.experiment.report_runs import CACHED_TAG, ReportError, _Node, _node_runs
from dtmem.experiment.report_tables import _csv, _markdown
from dtmem.stats import Statistic

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "AGGREGATE",
    "CACHED_TAG",
    "EXPERTS_ARM",
    "MEASURES",
    "SCORE_MEASURES",
    "TRAINABLE_PARAM",
    "Cell",
    "Report",
    "ReportError",
    "build_report",
]

T = TypeVar("T")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Report:
    """The rows of the report and the files written (all inside ``out_dir``)."""

    experiment: str
    experiment_run_id: str
    cells: tuple[Cell, ...]
    notes: tuple[str, ...]
    cached: tuple[tuple[str, str, str], ...]  # (node, stage, run id) of nodes skipped as cached
    markdown: str
    markdown_path: Path
    csv_path: Path
    plot_paths: tuple[Path, ...]
    memory_plots: tuple[str, ...] = ()  # runs:/<probe run>/memory/<task>-<mode>.png

    def cell(self, arm: str, ft_mode: str, measure: str, task: str = AGGREGATE) -> Cell:
        for c in self.cells:
            if (c.arm, c.ft_mode, c.measure, c.task) == (arm, ft_mode, measure, task):
                return c
        raise KeyError((arm, ft_mode, measure, task))


# --------------------------------------------------------------------------- curves


def _curves(
    client: MlflowClient, nodes: Sequence[_Node], notes: list[str]
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """stage -> row label -> ``train/loss`` mean over its runs (seeds; for fine-tunes also
    tasks) at the steps every one of them logged."""
    groups: dict[tuple[str, str], list[_Node]] = defaultdict(list)
    for n in nodes:
        if n.stage == "pretrain":
            groups[("pretrain", n.arm)].append(n)
        elif n.stage == "finetune":
            groups[("finetune", f"{n.arm}/{n.ft_mode}")].append(n)
    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(dict)
    for (stage, label), group in sorted(groups.items()):
        histories = [
            {m.step: m.value for m in client.get_metric_history(n.run_id, M.TRAIN_LOSS)}
            for n in group
        ]
        histories = [h for h in histories if h]
        if not histories:
            continue
        steps = sorted(set.intersection(*(set(h) for h in histories)))
        if not steps:
            notes.append(f"{stage} {label}: its runs share no logged step; no curve drawn")
            continue
        out[stage][label] = [(s, sum(h[s] for h in histories) / len(histories)) for s in steps]
    return dict(out)


def _memory_plots(client: MlflowClient, nodes: Sequence[_Node]) -> list[tuple[str, str]]:
    """(node, runs:/ URI) of each heatmap a ``probe`` node logged (``memory_probe``)."""
    from dtmem.experiment.memory_probe import ARTIFACT_DIR
    from dtmem.experiment.memory_probe import STAGE as PROBE

    found = []
    for n in nodes:
        if n.stage == PROBE:
            for art in client.list_artifacts(n.run_id, ARTIFACT_DIR):
                if art.path.endswith(".png"):
                    found.append((n.node, f"runs:/{n.run_id}/{art.path}"))
    return found


def _plots(
    cells: Sequence[Cell], curves: Mapping[str, Mapping[str, list[tuple[int, float]]]], out: Path
) -> list[Path]:
    from dtmem.experiment.report_plots import plot_report  # matplotlib: only when writing

    return plot_report(cells, curves, out)


def _write_atomic(out_dir: Path, write: Callable[[Path], T]) -> T:
    """Run ``write(tmp_dir)`` on a temp directory beside ``out_dir``, then swap it in:
    ``out_dir`` holds a whole report (the old one or the new one), never half of one."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        result = write(tmp)
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


# --------------------------------------------------------------------------- entry point


def build_report(
    tracking_uri: str,
    experiment_run_id: str,
    out_dir: Path,
    *,
    statistic: Statistic | None = None,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> Report:
    """Read every finished node run of ``experiment_run_id`` from MLflow, write
    ``report.md``, ``report.csv`` and the plots into ``out_dir`` (atomically), log them as
    the artifact folder ``report`` of the experiment's parent run, and return them.

    ``statistic`` aggregates scores across seeds and tasks; None chooses from the metrics:
    the mean of success rates (Meta-World), else the IQM of normalised scores (Atari).
    Intervals: ``confidence``, ``num_resamples`` stratified bootstrap resamples, ``seed``.
    """
    from mlflow.tracking import MlflowClient

    if not _SAFE_ID.match(experiment_run_id):
        raise ReportError(f"experiment run id {experiment_run_id!r}: letters, digits, _ and -")
    client = MlflowClient(tracking_uri=tracking_uri)
    parent, nodes, notes = _node_runs(client, experiment_run_id)
    score_name, default_statistic = _score_name(nodes)
    statistic = statistic or default_statistic
    boot = _Bootstrap(confidence, num_resamples, seed)
    samples = _collect(nodes, score_name, notes)
    cells = _cells(samples, statistic, boot, notes)
    curves = _curves(client, nodes, notes)
    cached = tuple((n.node, n.stage, n.run_id) for n in nodes if n.cached)
    memory = _memory_plots(client, nodes)
    experiment = parent.data.tags.get(TAG_EXPERIMENT, parent.info.run_name or "")
    commit = parent.data.tags.get("dtmem.git_commit", "")

    def write(tmp: Path) -> tuple[list[Path], str]:
        plots = _plots(cells, curves, tmp)
        markdown = _markdown(
            experiment,
            experiment_run_id,
            commit,
            cells,
            notes,
            cached,
            plots,
            statistic,
            score_name,
            boot,
            memory,
        )
        (tmp / "report.md").write_text(markdown)
        (tmp / "report.csv").write_text(_csv(cells))
        return [out_dir / p.name for p in plots], markdown

    out_dir = Path(out_dir)
    plots, markdown = _write_atomic(out_dir, write)
    client.log_artifacts(parent.info.run_id, str(out_dir), "report")
    return Report(
        experiment=experiment,
        experiment_run_id=experiment_run_id,
        cells=tuple(cells),
        notes=tuple(notes),
        cached=cached,
        markdown=markdown,
        markdown_path=out_dir / "report.md",
        csv_path=out_dir / "report.csv",
        plot_paths=tuple(plots),
        memory_plots=tuple(uri for _, uri in memory),
    )
