"""The report's plots (matplotlib, Agg): bars with intervals per row, a heatmap per measure
(rows x tasks), ``train/loss`` curves per arm."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dtmem import metrics as M
from dtmem.experiment.report import AGGREGATE, EXPERTS_ARM, MEASURES, SCORE_MEASURES, Cell
from dtmem.experiment.report_cells import _row_order

__all__ = ["plot_report"]


def plot_report(
    cells: Sequence[Cell], curves: Mapping[str, Mapping[str, list[tuple[int, float]]]], out: Path
) -> list[Path]:
    """bars.png (aggregate with intervals per row), heatmap_<measure>.png (rows x tasks) and
    curves.png (``train/loss`` mean over seeds per arm); only those with data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    agg = [c for c in cells if c.task == AGGREGATE and c.point is not None]
    measures = [m for m in SCORE_MEASURES if any(c.measure == m for c in agg)]
    if measures:
        fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.6))
        for ax, m in zip(np.atleast_1d(axes), measures, strict=True):
            cs = [c for c in agg if c.measure == m]
            points, low, high = (
                np.array([getattr(c, a) for c in cs]) for a in ("point", "low", "high")
            )
            err = np.stack([points - low, high - points])  # (2, rows)
            colors = ["tab:gray" if c.arm == EXPERTS_ARM else "tab:blue" for c in cs]  # reference
            ax.bar(range(len(cs)), points, yerr=err, capsize=4, color=colors)
            ax.set_xticks(range(len(cs)), [f"{c.arm}\n{c.ft_mode}" for c in cs], fontsize=8)
            ax.set_title(MEASURES[m])
            ax.axhline(0.0, color="black", linewidth=0.5)
        fig.tight_layout()
        paths.append(_save(fig, out / "bars.png"))
    for m in measures:
        per_task = [c for c in cells if c.measure == m and c.task != AGGREGATE]
        rows = sorted({(c.arm, c.ft_mode) for c in per_task}, key=_row_order)
        tasks = sorted({c.task for c in per_task})
        grid = np.full((len(rows), len(tasks)), np.nan)
        for c in per_task:
            if c.point is not None:
                grid[rows.index((c.arm, c.ft_mode)), tasks.index(c.task)] = c.point
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(tasks), 1.0 + 0.5 * len(rows)))
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")  # missing: grey
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), [f"{a} / {mo}" for a, mo in rows], fontsize=8)
        for (i, j), v in np.ndenumerate(grid):
            missing = bool(np.isnan(v))
            ax.text(
                j,
                i,
                "–" if missing else f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if missing else "white",
            )
        ax.set_title(f"{MEASURES[m]}, per task")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        paths.append(_save(fig, out / f"heatmap_{m}.png"))
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
        stages = sorted(curves, key=lambda st: (st != "pretrain", st))  # pretraining first
        for ax, stage in zip(axes[0], stages, strict=True):
            by_label = curves[stage]
            for label, curve in sorted(by_label.items()):
                steps, values = zip(*curve, strict=True)
                ax.plot(steps, values, label=label)
            ax.set_xlabel("step")
            ax.set_ylabel(M.TRAIN_LOSS)
            ax.set_title(
                f"{stage}: mean over seeds" + (" and tasks" if stage == "finetune" else "")
            )
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(_save(fig, out / "curves.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path
