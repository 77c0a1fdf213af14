"""The results of a sweep: one row per trial (its name, status, swept values, metrics and
MLflow run, which is brought to its final status), the best trial, bootstrap confidence
intervals, the results table and plots (matplotlib, Agg) on the sweep's MLflow run, and the
printed summary.

One score, ``SweepPlan.score`` (``plot.score``; by default the mean evaluation return with an
evaluation, else the sweep's metric), is what the plots show and what picks the best trial;
ASHA judges trials on the sweep's ``metric`` at every checkpoint, which can differ (a
validation loss), since the score may exist only once a trial has ended. Each point of the
score plot says what its interval rests on: the seeds (trials) sharing the value, or, with
one trial per value, that trial's evaluation episodes or validation batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtmem import metrics as M
from dtmem.fileio import csv_text, write_text_atomic
from dtmem.sweep.base import RESULT_FILE, RESULTS_ARTIFACT, STEP, plain_values, read_json
from dtmem.sweep.plan import SweepPlan
from dtmem.sweep.tracking import end_trial_run, find_trial_run, mlflow_client

if TYPE_CHECKING:
    from dtmem.tracking import RunHandle

__all__ = [
    "SweepResult",
    "best_row",
    "bootstrap_ci",
    "collect_rows",
    "plot_heatmap",
    "plot_score",
    "print_summary",
    "report_results",
    "score_points",
]


@dataclass(frozen=True)
class SweepResult:
    """What a sweep produced: one row per trial, the best, the MLflow run, the artifacts."""

    name: str
    sweep_dir: Path
    run_id: str  # the sweep's MLflow run
    metric: str  # what ASHA judged at each checkpoint
    score: str  # what the plots show and the best trial is chosen by
    score_mode: str  # "min" | "max"
    rows: list[dict[str, Any]]  # trial, trial_id, status, run_id, swept values, step, metrics
    best: dict[str, Any] | None  # the finished trial with the best score
    interval: str | None  # what the score plot's 95% CIs rest on ("bootstrap over 3 seeds")
    table: Path  # results.csv in the sweep directory (also on the MLflow run)
    plots: list[Path]
    wall_s: float

    def trials(self, status: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == status]


def collect_rows(plan: SweepPlan, grid: Any) -> list[dict[str, Any]]:
    """One row per trial: status (finished, early_stopped, failed, not_started), the swept
    values, the final or last-reported metrics; trials' MLflow runs are brought to their
    final status."""
    spec = plan.spec
    rows = []
    for res in grid:
        trial_id = str(res.metrics.get("trial_id") or Path(res.path).name)
        run_dir = spec.runs_dir / trial_id
        done = read_json(run_dir / RESULT_FILE)
        values = {a.path: plain_values(res.config).get(a.path) for a in plan.axes}
        row: dict[str, Any] = {"trial": spec.label(values), "trial_id": trial_id}
        if done is not None:
            row["status"] = "finished"
            metrics = done["metrics"]
        else:
            metrics = {k: res.metrics.get(k) for k in (STEP, *plan.metrics)}
            row["status"] = (
                "failed"
                if res.error is not None
                else "early_stopped"
                if metrics[STEP] is not None
                else "not_started"
            )
        if res.error is not None and done is None:
            text = str(res.error).strip()
            row["error"] = text.splitlines()[-1] if text else type(res.error).__name__
        row.update(values)
        row[STEP] = metrics.get(STEP)
        row.update({k: metrics.get(k) for k in plan.metrics})
        run_id = done["run_id"] if done else None
        if run_id is None and spec.parent_run_id is not None:
            run_id = find_trial_run(spec.tracking, spec.parent_run_id, trial_id)
        row["run_id"] = run_id
        if done is not None:
            row.update({k: round(v, 3) for k, v in done["timings"].items()})
        elif run_id is not None:  # a trial the driver could not close (killed, errored)
            assert spec.tracking.uri is not None
            status = mlflow_client(spec.tracking.uri).get_run(run_id).info.status
            if status == "RUNNING":
                final = "FAILED" if row["status"] == "failed" else "KILLED"
                end_trial_run(spec.tracking.uri, run_id, final, row["status"])
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"])


def best_row(rows: Sequence[Mapping[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The finished trial with the best finite ``metric`` (None if there is none)."""
    scored = [
        dict(r)
        for r in rows
        if r["status"] == "finished" and isinstance(r.get(metric), int | float)
        if math.isfinite(r[metric])
    ]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda r: r[metric])


def bootstrap_ci(
    values: Sequence[float], resamples: int, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean of ``values``."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)  # (resamples,)
    alpha = (1.0 - level) / 2
    return mean, float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def _samples(plan: SweepPlan, trial_id: str, score: str) -> list[float]:
    """The units of one trial's score, for a bootstrap: its evaluation episodes (eval/ scores;
    every task has the same number of episodes, so their mean is the score) or its
    validation batches (val/loss)."""
    done = read_json(plan.spec.runs_dir / trial_id / RESULT_FILE) or {}
    parts = score.split("/")
    if parts[0] == "eval":
        key = "success" if parts[-1].startswith("success_rate") else "return"
        episodes = done.get("episodes", [])
        if len(parts) == 3:  # eval/<task>/<name>
            episodes = [e for e in episodes if e["task"] == parts[1]]
        return [float(e[key] or 0.0) for e in episodes]
    if score == M.VAL_LOSS:
        return [float(v) for v in done.get("val_batches", [])]
    return []


def score_points(
    plan: SweepPlan, rows: Sequence[Mapping[str, Any]], x: str, score: str
) -> tuple[list[dict[str, Any]], str]:
    """Per value of ``x``: mean score and 95% CI over the finished trials sharing it (``n``),
    and what the CI rests on, in words: a bootstrap over those trials when every x has at
    least 2 (``seeds`` when the seed is all that else varies), else over each trial's
    evaluation episodes (eval/) or validation batches (val/loss)."""
    finished = [r for r in rows if r["status"] == "finished" and r.get(score) is not None]
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for r in finished:
        groups.setdefault(r[x], []).append(r)
    n_boot = plan.cfg.plot.bootstrap_resamples
    across = bool(groups) and all(len(g) >= 2 for g in groups.values())
    others = {a.path for a in plan.axes} - {x}
    trials = "seeds" if others <= {"seed"} else "trials"
    sizes = sorted({len(g) for g in groups.values()})
    span = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}" if sizes else "0"
    if across:
        method = f"bootstrap over {span} {trials}"
    else:
        units = "episodes" if score.startswith("eval/") else "validation batches"
        one = "1 seed" if trials == "seeds" else "1 trial"
        method = (
            f"bootstrap over {units} of {one}"
            if sizes == [1]
            else f"mean of {span} {trials}, bootstrap over {units}"
        )
    points = []
    for value in sorted(groups):
        g = groups[value]
        scores = [float(r[score]) for r in g]
        if across:
            mean, low, high = bootstrap_ci(scores, n_boot)
        else:
            mean = sum(scores) / len(scores)
            samples = [u for r in g for u in _samples(plan, r["trial_id"], score)]
            _, low, high = bootstrap_ci(samples, n_boot) if samples else (mean, mean, mean)
        points.append({x: value, "score": mean, "ci_low": low, "ci_high": high, "n": len(g)})
    return points, method


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    return write_text_atomic(path, csv_text(rows))


def report_results(
    plan: SweepPlan, parent: RunHandle, rows: list[dict[str, Any]], wall_s: float
) -> SweepResult:
    """The results table, the plots and the summary metrics on the sweep's run."""
    cfg = plan.cfg
    swept = {a.path for a in plan.axes}
    table = _write_csv(rows, plan.sweep_dir / "results.csv")
    parent.log_table(rows, RESULTS_ARTIFACT)
    plots: list[Path] = []
    interval = None
    if cfg.plot.x in swept:
        points, method = score_points(plan, rows, cfg.plot.x, plan.score)
        if points:
            interval = method
            slug = cfg.plot.x.split(".")[-1]
            path = plot_score(
                points, cfg.plot.x, plan.score, method, plan.sweep_dir / f"score_vs_{slug}.png"
            )
            plots.append(path)
            _write_csv(
                [{**p, "ci": method} for p in points], plan.sweep_dir / f"score_vs_{slug}.csv"
            )
            parent.log_table([{**p, "ci": method} for p in points], f"score_vs_{slug}.csv")
    a, b = cfg.plot.heatmap
    if a in swept and b in swept and any(r["status"] == "finished" for r in rows):
        path = plot_heatmap(
            rows,
            a,
            b,
            plan.score,
            cfg.mode,
            plan.sweep_dir / f"heatmap_{a.split('.')[-1]}_{b.split('.')[-1]}.png",
        )
        plots.append(path)
    for p in plots:
        parent.log_artifact(p, "plots")
    best = best_row(rows, plan.score, plan.score_mode)
    counts = {
        s: sum(r["status"] == s for r in rows) for s in ("finished", "early_stopped", "failed")
    }
    metrics = {
        "sweep/trials": float(len(rows)),
        "sweep/trials_finished": float(counts["finished"]),
        "sweep/trials_early_stopped": float(counts["early_stopped"]),
        "sweep/trials_failed": float(counts["failed"]),
        "sweep/wall_s": wall_s,
    }
    if best is not None:
        metrics["sweep/best_score"] = float(best[plan.score])
        parent.set_tags(
            {
                "dtmem.best_trial": best["trial"],
                "dtmem.best_trial_id": best["trial_id"],
                "dtmem.best_run_id": str(best["run_id"]),
                "dtmem.sweep_metric": cfg.metric,
                "dtmem.sweep_score": plan.score,
            }
        )
    parent.log_metrics(metrics, step=0)
    return SweepResult(
        name=cfg.name,
        sweep_dir=plan.sweep_dir,
        run_id=parent.run_id,
        metric=cfg.metric,
        score=plan.score,
        score_mode=plan.score_mode,
        rows=rows,
        best=best,
        interval=interval,
        table=table,
        plots=plots,
        wall_s=wall_s,
    )


def print_summary(result: SweepResult, plan: SweepPlan) -> None:
    """The trials' table, the failures, the best trial, the plots; last, the sweep's run
    and the line that opens it."""
    from rich.console import Console
    from rich.table import Table

    from dtmem.training.report import ui_hint

    table = Table(title=f"dtmem sweep {result.name}")
    columns = ["trial", "status", STEP, result.metric]
    if result.score != result.metric:
        columns.append(result.score)
    for col in columns:
        table.add_column(col, no_wrap=True)
    for row in result.rows:
        cells = []
        for col in columns:
            v = row.get(col)
            cells.append(f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v))
        table.add_row(*cells)
    console = Console(soft_wrap=True)  # paths and the ui line unbroken
    console.print(table)
    for row in result.trials("failed"):
        console.print(f"failed: {row['trial']} ({row['trial_id']}): {row.get('error', '?')}")
    if result.best is not None:
        console.print(
            f"best by {result.score} ({result.score_mode}): {result.best['trial']} "
            f"{result.score}={result.best[result.score]:.4g} (MLflow run {result.best['run_id']})"
        )
    for path in result.plots:
        ci = f" (95% CI: {result.interval})" if path.name.startswith("score_vs") else ""
        console.print(f"plot: {path}{ci}")
    console.print(f"{len(result.rows)} trials in {result.wall_s:.1f} s; results {result.table}")
    assert plan.spec.tracking.uri is not None  # plan_sweep resolved it
    console.print(ui_hint(plan.spec.tracking.uri, plan.spec.tracking.experiment, result.run_id))


# --------------------------------------------------------------------------- plots


def plot_score(
    points: Sequence[Mapping[str, Any]], x: str, score: str, method: str, path: Path
) -> Path:
    """Score against ``x`` (log2 axis) with 95% CI error bars (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p[x] for p in points]
    ys = [p["score"] for p in points]
    lo = [p["score"] - p["ci_low"] for p in points]
    hi = [p["ci_high"] - p["score"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4)
    if xs and all(isinstance(v, int | float) and v > 0 for v in xs):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(score)
    ax.set_title(f"{score} vs {x} (95% CI: {method})", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_heatmap(
    rows: Sequence[Mapping[str, Any]], a: str, b: str, score: str, mode: str, path: Path
) -> Path:
    """Mean score of the finished trials per (a, b), averaged over the other swept values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    finished = [r for r in rows if r["status"] == "finished" and r.get(score) is not None]
    av = sorted({r[a] for r in finished})
    bv = sorted({r[b] for r in finished})
    grid = np.full((len(av), len(bv)), np.nan)  # (rows: a, cols: b)
    for i, va in enumerate(av):
        for j, vb in enumerate(bv):
            cell = [float(r[score]) for r in finished if r[a] == va and r[b] == vb]
            if cell:
                grid[i, j] = float(np.mean(cell))
    fig, ax = plt.subplots(figsize=(1.2 * len(bv) + 2.5, 0.8 * len(av) + 2), dpi=100)
    image = ax.imshow(grid, cmap="viridis_r" if mode == "min" else "viridis", aspect="auto")
    for i in range(len(av)):
        for j in range(len(bv)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(bv)), [f"{v:g}" if isinstance(v, float) else str(v) for v in bv])
    ax.set_yticks(range(len(av)), [f"{v:g}" if isinstance(v, float) else str(v) for v in av])
    ax.set_xlabel(b)
    ax.set_ylabel(a)
    ax.set_title(f"{score} (mean over other values)", fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
