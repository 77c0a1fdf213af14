"""Evaluation results: per-task statistics and the aggregates, and how they are reported.

``aggregate``: per task the mean and top-3 mean of raw returns, DQN- and human-normalised
scores (Atari), success rate (Meta-World); across Atari games the IQM of the per-game
normalised means with a stratified bootstrap CI (``dtmem.scores``); the mean success rate.
``metrics_of`` / ``table_rows`` / ``episode_rows`` / ``plot_scores``: MLflow metrics, the CSV
tables and the bar chart of a result.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dtmem.envs import Suite
from dtmem.eval_tasks import EvaluationError, TaskRequest
from dtmem.metrics import (
    EVAL_ACTORS_REPLACED,
    EVAL_IQM_DQN,
    EVAL_IQM_DQN_HIGH,
    EVAL_IQM_DQN_LOW,
    EVAL_IQM_HUMAN,
    EVAL_IQM_HUMAN_HIGH,
    EVAL_IQM_HUMAN_LOW,
    EVAL_SUCCESS_RATE_MEAN,
    PERF_EVAL_STEPS_PER_S,
    eval_metric,
)
from dtmem.rollout import EpisodeStats
from dtmem.scores import (
    ScoreInterval,
    UndefinedNormalizationError,
    dqn_normalized_score,
    human_normalized_score,
    iqm_bootstrap_ci,
    top_k_mean,
)

__all__ = [
    "EvalResult",
    "TaskResult",
    "aggregate",
    "episode_rows",
    "metrics_of",
    "plot_scores",
    "table_rows",
    "task_result",
]


@dataclass(frozen=True)
class TaskResult:
    """One game or task: its episodes (in episode order) and their statistics.

    ``return_top3``: mean of the best 3 episodes (of all, when fewer than 3).
    ``human_normalized`` / ``dqn_normalized``: the normalised mean score (Atari; the DQN one
    is None where the reference table cannot define it). ``success_rate``: Meta-World.
    """

    suite: Suite
    task: str
    episodes: tuple[EpisodeStats, ...]
    return_mean: float
    return_top3: float
    length_mean: float
    human_normalized: float | None
    dqn_normalized: float | None
    success_rate: float | None

    @property
    def returns(self) -> np.ndarray:
        """(n,) float64: the raw return of each episode, in episode order."""
        return np.array([e.episode_return for e in self.episodes])


@dataclass(frozen=True)
class EvalResult:
    """Per-task results, aggregates across tasks, throughput and the MLflow run (if any)."""

    tasks: tuple[TaskResult, ...]
    iqm_human_normalized: ScoreInterval | None  # across Atari games, with bootstrap CI
    iqm_dqn_normalized: ScoreInterval | None  # across games whose DQN score is defined
    success_rate_mean: float | None  # across Meta-World tasks
    env_steps: int  # agent steps of all counted episodes
    wall_s: float  # from the model's upload to the last result
    actors: int  # size of the actor pool (num_actors, capped by units and cluster CPUs)
    actors_replaced: int
    run_id: str | None = None

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.wall_s if self.wall_s > 0 else math.nan

    def task(self, name: str) -> TaskResult:
        for t in self.tasks:
            if t.task == name:
                return t
        raise KeyError(f"no result for {name!r}; have {', '.join(t.task for t in self.tasks)}")


def task_result(request: TaskRequest, episodes: Iterable[EpisodeStats]) -> TaskResult:
    """Statistics of exactly ``request.episodes`` episodes, indices 0..n-1 each once;
    anything else raises EvaluationError."""
    eps = tuple(sorted(episodes, key=lambda s: s.episode))
    indices = [s.episode for s in eps]
    if indices != list(range(request.episodes)):
        raise EvaluationError(
            f"{request.task}: expected episodes 0..{request.episodes - 1} once each, got "
            f"{len(indices)} episodes"
        )
    returns = np.array([s.episode_return for s in eps])
    human = dqn = success = None
    if request.suite == "atari":
        human = float(human_normalized_score(request.task, returns.mean()))
        try:
            dqn = float(dqn_normalized_score(request.task, returns.mean()))
        except UndefinedNormalizationError:
            dqn = None
    else:
        success = float(np.mean([bool(s.success) for s in eps]))
    return TaskResult(
        suite=request.suite,
        task=request.task,
        episodes=eps,
        return_mean=float(returns.mean()),
        return_top3=top_k_mean(returns, min(3, len(returns))),
        length_mean=float(np.mean([s.length for s in eps])),
        human_normalized=human,
        dqn_normalized=dqn,
        success_rate=success,
    )


def aggregate(
    requests: Sequence[TaskRequest],
    episodes_by_task: Mapping[str, Sequence[EpisodeStats]],
    *,
    wall_s: float,
    actors: int = 1,
    actors_replaced: int = 0,
    bootstrap_resamples: int = 2000,
    seed: int = 0,
) -> EvalResult:
    """Per-task statistics and the aggregates: IQM across Atari games of the human- (and
    DQN-) normalised mean scores, with a stratified bootstrap 95% CI over episodes; the mean
    Meta-World success rate."""
    tasks = tuple(task_result(r, episodes_by_task.get(r.task, ())) for r in requests)
    atari = [t for t in tasks if t.suite == "atari"]
    human = dqn = None
    if atari:
        human = iqm_bootstrap_ci(
            {t.task: human_normalized_score(t.task, t.returns) for t in atari},
            num_resamples=bootstrap_resamples,
            seed=seed,
        )
        defined = [t for t in atari if t.dqn_normalized is not None]
        if defined:
            dqn = iqm_bootstrap_ci(
                {t.task: dqn_normalized_score(t.task, t.returns) for t in defined},
                num_resamples=bootstrap_resamples,
                seed=seed,
            )
    rates = [t.success_rate for t in tasks if t.success_rate is not None]
    return EvalResult(
        tasks=tasks,
        iqm_human_normalized=human,
        iqm_dqn_normalized=dqn,
        success_rate_mean=float(np.mean(rates)) if rates else None,
        env_steps=sum(s.length for t in tasks for s in t.episodes),
        wall_s=wall_s,
        actors=actors,
        actors_replaced=actors_replaced,
    )


def metrics_of(result: EvalResult) -> dict[str, float]:
    """The MLflow metrics of a result: ``eval/<task>/...`` per task, then the aggregates."""
    out: dict[str, float] = {}
    for t in result.tasks:
        out[eval_metric(t.task, "return_mean")] = t.return_mean
        out[eval_metric(t.task, "return_top3")] = t.return_top3
        out[eval_metric(t.task, "length_mean")] = t.length_mean
        out[eval_metric(t.task, "episodes")] = float(len(t.episodes))
        if t.human_normalized is not None:
            out[eval_metric(t.task, "score_normalized")] = t.human_normalized
        if t.dqn_normalized is not None:
            out[eval_metric(t.task, "score_dqn_normalized")] = t.dqn_normalized
        if t.success_rate is not None:
            out[eval_metric(t.task, "success_rate")] = t.success_rate
    for ci, (name, low, high) in (
        (result.iqm_human_normalized, (EVAL_IQM_HUMAN, EVAL_IQM_HUMAN_LOW, EVAL_IQM_HUMAN_HIGH)),
        (result.iqm_dqn_normalized, (EVAL_IQM_DQN, EVAL_IQM_DQN_LOW, EVAL_IQM_DQN_HIGH)),
    ):
        if ci is not None:
            out.update({name: ci.point, low: ci.low, high: ci.high})
    if result.success_rate_mean is not None:
        out[EVAL_SUCCESS_RATE_MEAN] = result.success_rate_mean
    out[EVAL_ACTORS_REPLACED] = float(result.actors_replaced)
    out[PERF_EVAL_STEPS_PER_S] = result.steps_per_s
    return out


def table_rows(result: EvalResult) -> list[dict[str, Any]]:
    """One row per task for the CSV artifact (empty cells where a number does not apply)."""

    def cell(x: float | None) -> float | str:
        return "" if x is None else round(x, 6)

    return [
        {
            "suite": t.suite,
            "task": t.task,
            "episodes": len(t.episodes),
            "return_mean": cell(t.return_mean),
            "return_top3": cell(t.return_top3),
            "return_std": cell(float(t.returns.std())),
            "length_mean": cell(t.length_mean),
            "human_normalized": cell(t.human_normalized),
            "dqn_normalized": cell(t.dqn_normalized),
            "success_rate": cell(t.success_rate),
        }
        for t in result.tasks
    ]


def episode_rows(result: EvalResult) -> list[dict[str, Any]]:
    """One row per episode (task, index, env seed, return, length, success, truncated)."""
    return [
        {
            "task": t.task,
            "episode": s.episode,
            "seed": s.seed,
            "return": s.episode_return,
            "length": s.length,
            "success": "" if s.success is None else int(s.success),
            "truncated": int(s.truncated),
        }
        for t in result.tasks
        for s in t.episodes
    ]


def plot_scores(result: EvalResult, path: str | Path, title: str = "evaluation") -> Path:
    """A bar chart per suite: human-normalised score per Atari game (with the IQM as a line),
    success rate per Meta-World task. Written with matplotlib's Agg backend; returns path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    panels = []
    atari = [t for t in result.tasks if t.suite == "atari"]
    meta = [t for t in result.tasks if t.suite == "metaworld"]
    if atari:
        panels.append(("atari", atari))
    if meta:
        panels.append(("metaworld", meta))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(4.0, 0.7 * len(result.tasks) + 2.5), 3.6), squeeze=False
    )
    for ax, (suite, tasks) in zip(axes[0], panels, strict=True):
        names = [t.task for t in tasks]
        if suite == "atari":
            values = [t.human_normalized or 0.0 for t in tasks]
            bars = ax.bar(names, values, color="tab:blue")
            if result.iqm_human_normalized is not None:
                iqm = result.iqm_human_normalized
                ax.axhline(iqm.point, color="k", lw=1, ls="--", label=f"IQM {iqm.point:.3f}")
                ax.legend(fontsize=8)
            ax.set_ylabel("human-normalised score")
        else:
            bars = ax.bar(names, [t.success_rate or 0.0 for t in tasks], color="tab:green")
            ax.set_ylim(0, 1.1)
            ax.set_ylabel("success rate")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
