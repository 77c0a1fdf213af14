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
- ``trainable_params`` and ``finetune_wall_s``: from ``finetune`` runs; the wall time is the
  run's end minus start time in MLflow (the stages log no wall-time metric).

A cell never invents: a (row, measure, task) with no finished run is a dash and a note; a
cell resting on fewer seeds than its measure's others says so.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dtmem import metrics as M
from dtmem.experiment import (
    EVAL_KINDS,
    NODES_ARTIFACT,
    STAGE,
    TAG_ARM,
    TAG_EVAL_KIND,
    TAG_EXPERIMENT,
    TAG_EXPERIMENT_RUN,
    TAG_FT_MODE,
    TAG_NODE,
    TAG_SEED,
    TAG_STAGE,
    TAG_TASK,
)
from dtmem.stats import Statistic, stratified_bootstrap_ci

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = ["AGGREGATE", "MEASURES", "Cell", "Report", "ReportError", "build_report"]

T = TypeVar("T")

TRAINABLE_PARAM = "model.params_trainable"  # dtmem.training.finish.log_model_size
CACHED_TAG = "dtmem.cached"  # optional: a run reused as cached may also say so itself
AGGREGATE = "all tasks"

# measure -> its column title; the order of the table's columns.
MEASURES: dict[str, str] = {
    "finetuned": "after fine-tuning",
    "zero_shot": "zero-shot",
    "pretrained": "pretraining tasks",
    "forgetting": "forgetting",
    "trainable_params": "trainable params",
    "finetune_wall_s": "fine-tune wall (s)",
}
SCORE_MEASURES = ("finetuned", "zero_shot", "pretrained", "forgetting")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ReportError(ValueError):
    """The experiment run cannot be found, or its id is malformed."""


@dataclass(frozen=True)
class Cell:
    """One number of the report: ``measure`` of row (``arm``, ``ft_mode``) on ``task`` (or
    ``AGGREGATE``), with its bootstrap interval; ``point`` is None where nothing was measured."""

    arm: str
    ft_mode: str
    measure: str
    task: str
    statistic: Statistic
    point: float | None
    low: float | None
    high: float | None
    seeds: tuple[str, ...]  # the seeds it rests on (union over tasks for an aggregate)
    n_tasks: int
    run_ids: tuple[str, ...]

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)


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


# --------------------------------------------------------------------------- reading MLflow


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
    notes, nodes = [], []
    for run in sorted(runs.values(), key=lambda r: (r.info.start_time or 0, r.info.run_id)):
        tags = run.data.tags
        if run.info.status != "FINISHED":
            notes.append(
                f"run {run.info.run_id} ({tags.get(TAG_NODE, '?')}) is {run.info.status}: "
                "not counted"
            )
            continue
        cached = (
            tags.get(TAG_EXPERIMENT_RUN) != experiment_run_id
            or tags.get(CACHED_TAG, "").lower() == "true"
        )
        nodes.append(_Node.from_run(run, cached))
    return parent, nodes, notes


# --------------------------------------------------------------------------- the numbers


@dataclass(frozen=True)
class _Bootstrap:
    confidence: float
    num_resamples: int
    seed: int


@dataclass(frozen=True)
class _Sample:
    value: float
    run_ids: tuple[str, ...]


# (arm, ft_mode, measure) -> task -> seed -> sample
_Samples = dict[tuple[str, str, str], dict[str, dict[str, _Sample]]]


def _scores(node: _Node, score_name: str) -> dict[str, float]:
    """task -> this evaluation run's ``eval/<task>/<score_name>``."""
    out = {}
    for key, value in node.metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval" and parts[2] == score_name:
            out[parts[1]] = float(value)
    return out


def _score_name(nodes: Iterable[_Node]) -> tuple[str, Statistic]:
    """Success rate with the mean (Meta-World), or, where evaluations carry no success rate,
    the human-normalised score with the IQM (Atari, as the paper and rliable report)."""
    evals = [n for n in nodes if n.eval_kind in EVAL_KINDS]
    if any(_scores(n, "success_rate") for n in evals):
        return "success_rate", "mean"
    if any(_scores(n, "score_normalized") for n in evals):
        return "score_normalized", "iqm"
    return "success_rate", "mean"


def _collect(nodes: Sequence[_Node], score_name: str, notes: list[str]) -> _Samples:
    samples: _Samples = defaultdict(lambda: defaultdict(dict))

    def put(arm: str, mode: str, measure: str, task: str, seed: str, sample: _Sample) -> None:
        slot = samples[(arm, mode, measure)][task]
        if seed in slot:
            notes.append(
                f"{arm}/{mode} {measure} {task} seed {seed}: two finished runs "
                f"({', '.join(slot[seed].run_ids)} and {', '.join(sample.run_ids)}); "
                "the later one is used"
            )
        slot[seed] = sample

    pretrained = {
        (n.arm, n.seed): n for n in nodes if n.eval_kind == "pretrained"
    }  # nodes come sorted by start time: a later run replaces an earlier one
    for n in nodes:
        if n.eval_kind in ("finetuned", "zero_shot", "pretrained"):
            for task, value in _scores(n, score_name).items():
                put(n.arm, n.ft_mode, n.eval_kind, task, n.seed, _Sample(value, (n.run_id,)))
        elif n.eval_kind == "forgetting":
            base = pretrained.get((n.arm, n.seed))
            after = _scores(n, score_name)
            before = _scores(base, score_name) if base is not None else {}
            shared = sorted(set(after) & set(before))
            if not shared:
                notes.append(
                    f"{n.arm}/{n.ft_mode} forgetting {n.task or '?'} seed {n.seed}: no "
                    f"pretrained evaluation of arm {n.arm} seed {n.seed} on the same tasks "
                    f"(run {n.run_id}); left out"
                )
                continue
            assert base is not None
            drop = sum(after[t] - before[t] for t in shared) / len(shared)
            put(
                n.arm,
                n.ft_mode,
                "forgetting",
                n.task or "?",
                n.seed,
                _Sample(drop, (n.run_id, base.run_id)),
            )
        elif n.stage == "finetune":
            count = n.metrics.get(M.FINETUNE_TRAINABLE_PARAMS)  # older runs: a metric
            if TRAINABLE_PARAM in n.params:
                count = float(n.params[TRAINABLE_PARAM])
            if count is not None:
                put(
                    n.arm,
                    n.ft_mode,
                    "trainable_params",
                    n.task,
                    n.seed,
                    _Sample(float(count), (n.run_id,)),
                )
            if n.end_ms is not None:
                wall = (n.end_ms - n.start_ms) / 1000.0
                put(n.arm, n.ft_mode, "finetune_wall_s", n.task, n.seed, _Sample(wall, (n.run_id,)))
    return samples


def _cell(
    key: tuple[str, str, str],
    task: str,
    by_task: Mapping[str, Mapping[str, _Sample]],
    statistic: Statistic,
    boot: _Bootstrap,
) -> Cell:
    arm, mode, measure = key
    if not by_task:
        return Cell(arm, mode, measure, task, statistic, None, None, None, (), 0, ())
    values = {t: [s.value for _, s in sorted(by_seed.items())] for t, by_seed in by_task.items()}
    ci = stratified_bootstrap_ci(
        values,
        statistic,
        num_resamples=boot.num_resamples,
        confidence=boot.confidence,
        seed=boot.seed,
    )
    seeds = sorted({s for by_seed in by_task.values() for s in by_seed}, key=_seed_order)
    run_ids = tuple(
        dict.fromkeys(
            r
            for t in sorted(by_task)
            for _, sample in sorted(by_task[t].items())
            for r in sample.run_ids
        )
    )
    return Cell(
        arm,
        mode,
        measure,
        task,
        statistic,
        ci.point,
        ci.low,
        ci.high,
        tuple(seeds),
        len(by_task),
        run_ids,
    )


def _seed_order(seed: str) -> tuple[int, Any]:
    return (0, int(seed)) if seed.lstrip("-").isdigit() else (1, seed)


def _cells(
    samples: _Samples, statistic: Statistic, boot: _Bootstrap, notes: list[str]
) -> list[Cell]:
    """Per task and aggregated cells for every (row, measure) with data; missing ones noted."""
    cells = []
    rows = sorted({(arm, mode) for arm, mode, _ in samples})
    for measure in MEASURES:
        stat: Statistic = statistic if measure in SCORE_MEASURES else "mean"
        keys = [(arm, mode, measure) for arm, mode in rows if (arm, mode, measure) in samples]
        tasks = sorted({t for k in keys for t in samples[k]})
        most_seeds = max((len(s) for k in keys for s in samples[k].values()), default=0)
        for key in keys:
            by_task = samples[key]
            label = f"{key[0]}/{key[1]} {MEASURES[measure]}"
            for task in tasks:
                one = {task: by_task[task]} if task in by_task else {}
                cells.append(_cell(key, task, one, stat, boot))
                if task not in by_task:
                    notes.append(f"{label} on {task}: no finished run (a dash in the table)")
                elif len(by_task[task]) < most_seeds:
                    notes.append(
                        f"{label} on {task}: rests on {len(by_task[task])} of {most_seeds} seeds"
                    )
            if len(by_task) < len(tasks):
                notes.append(
                    f"{label}, all tasks: aggregated over the {len(by_task)} of "
                    f"{len(tasks)} tasks that have runs"
                )
            cells.append(_cell(key, AGGREGATE, by_task, stat, boot))
    if any(c.n_seeds == 1 and c.measure in SCORE_MEASURES for c in cells):
        notes.append(
            "a cell with n=1 rests on one seed: there is nothing to resample, so its interval "
            "is the point itself, not a measure of uncertainty"
        )
    return cells


# --------------------------------------------------------------------------- writing


def _fmt(x: float | None, measure: str) -> str:
    if x is None or math.isnan(x):
        return "–"
    if measure == "trainable_params":
        return f"{x:,.0f}"
    if measure == "finetune_wall_s":
        return f"{x:.1f}"
    return f"{x:.2f}" if measure != "forgetting" else f"{x:+.2f}"


def _cell_text(c: Cell | None, with_runs: bool) -> str:
    if c is None:
        return "·"
    if c.point is None:
        return "–"
    text = f"{_fmt(c.point, c.measure)} [{_fmt(c.low, c.measure)}, {_fmt(c.high, c.measure)}]"
    text += f" n={c.n_seeds}"
    if c.task == AGGREGATE:
        text += f"×{c.n_tasks}"
    if with_runs:
        text += " " + " ".join(f"`{r[:8]}`" for r in c.run_ids)
    return text


def _markdown(
    experiment: str,
    experiment_run_id: str,
    commit: str,
    cells: Sequence[Cell],
    notes: Sequence[str],
    cached: Sequence[tuple[str, str, str]],
    plots: Sequence[Path],
    statistic: Statistic,
    score_name: str,
    boot: _Bootstrap,
    memory: Sequence[tuple[str, str]] = (),
) -> str:
    index = {(c.arm, c.ft_mode, c.measure, c.task): c for c in cells}
    rows = sorted({(c.arm, c.ft_mode) for c in cells})
    measures = [m for m in MEASURES if any(c.measure == m for c in cells)]
    stat_word = "IQM" if statistic == "iqm" else "mean"
    lines = [
        f"# Experiment {experiment}",
        "",
        f"Experiment run `{experiment_run_id}`, commit `{commit or 'unknown'}`; rebuilt from "
        "MLflow. Each cell: "
        f"{stat_word} of `{score_name}` (parameters and wall time: mean) "
        f"[{boot.confidence:.0%} stratified bootstrap interval: seeds resampled within each "
        f"task, {boot.num_resamples} resamples, seed {boot.seed}] n=seeds(×tasks), then "
        "its runs. Forgetting: fine-tuned minus "
        "pretrained score on the pretraining tasks, per seed (negative: forgot). "
        "`–`: expected but no finished run; `·`: not measured for this row.",
        "",
        "## All tasks",
        "",
        "| arm | fine-tune | " + " | ".join(MEASURES[m] for m in measures) + " |",
        "|---|---|" + "---|" * len(measures),
    ]
    for arm, mode in rows:
        texts = [_cell_text(index.get((arm, mode, m, AGGREGATE)), False) for m in measures]
        lines.append(f"| {arm} | {mode} | " + " | ".join(texts) + " |")
    for m in measures:
        tasks = sorted({c.task for c in cells if c.measure == m and c.task != AGGREGATE})
        lines += ["", f"## {MEASURES[m]}, per task", ""]
        lines.append("| arm | fine-tune | " + " | ".join(tasks) + " |")
        lines.append("|---|---|" + "---|" * len(tasks))
        for arm, mode in rows:
            if (arm, mode, m, AGGREGATE) not in index:
                continue
            texts = [_cell_text(index.get((arm, mode, m, t)), True) for t in tasks]
            lines.append(f"| {arm} | {mode} | " + " | ".join(texts) + " |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    if memory:
        lines += ["", "## What the memory does", ""]
        lines += [
            "Write and read addressing (slots x steps) on one demonstration window, before "
            "and after fine-tuning, per probe node:",
            "",
        ]
        lines += [f"- {node}: `{uri}`" for node, uri in memory]
    lines += ["", "## Notes", ""] + ([f"- {n}" for n in notes] or ["- none"])
    if cached:
        lines += ["", "## Nodes skipped as cached", "", "| node | stage | run |", "|---|---|---|"]
        lines += [f"| {node} | {stage} | `{run_id}` |" for node, stage, run_id in cached]
    return "\n".join(lines) + "\n"


def _csv(cells: Sequence[Cell]) -> str:
    buf = io.StringIO()
    columns = [
        "arm",
        "ft_mode",
        "measure",
        "task",
        "statistic",
        "point",
        "ci_low",
        "ci_high",
        "n_seeds",
        "n_tasks",
        "seeds",
        "run_ids",
    ]
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for c in cells:
        writer.writerow(
            {
                "arm": c.arm,
                "ft_mode": c.ft_mode,
                "measure": c.measure,
                "task": c.task,
                "statistic": c.statistic,
                "point": "" if c.point is None else repr(c.point),
                "ci_low": "" if c.low is None else repr(c.low),
                "ci_high": "" if c.high is None else repr(c.high),
                "n_seeds": c.n_seeds,
                "n_tasks": c.n_tasks,
                "seeds": ";".join(c.seeds),
                "run_ids": ";".join(c.run_ids),
            }
        )
    return buf.getvalue()


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
