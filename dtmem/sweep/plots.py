"""The sweep's plots (matplotlib, Agg): the score against one swept value with 95% CI error
bars, and a heatmap of the mean score over two swept values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "plot_heatmap",
    "plot_score",
]


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
