"""Writing the report's cells as text: ``_markdown`` (the all-tasks table, one per-task
table per measure with each cell's runs, the plots, the memory heatmaps, the notes and the
nodes skipped as cached) and ``_csv`` (one row per cell, full precision), with the number
formatting they share.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from dtmem.experiment.report_cells import (
    AGGREGATE,
    EXPERTS_ARM,
    MEASURES,
    Cell,
    _Bootstrap,
    _row_order,
)
from dtmem.stats import Statistic


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
    if c.arm == EXPERTS_ARM and c.n_seeds == 1:  # one collect run: nothing to resample
        text = _fmt(c.point, c.measure)
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
    rows = sorted({(c.arm, c.ft_mode) for c in cells}, key=_row_order)
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
        f"`{EXPERTS_ARM}`: the scripted experts' success rate in the episodes the "
        "experiment collected, beside the pretrained models'. "
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
