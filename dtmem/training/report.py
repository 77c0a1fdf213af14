"""What a person sees: progress while training, a summary table and a loss-curve PNG."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Progress", "plot_loss_curve", "summary_table"]


class Progress:
    """Step, loss, steps/s and time left. A rich progress bar on a terminal; elsewhere (a Ray
    worker's log, CI) one plain line per update, to ``stream`` (default stdout; Ray Train
    workers pass the process's real stdout, as Train V2's patched print would log it twice)."""

    def __init__(
        self, total: int, start: int = 0, enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self.total, self.enabled, self.stream = total, enabled, stream
        self._bar: Any = None
        self._task: Any = None
        self._console: Any = None
        if not enabled:
            return
        from rich.console import Console

        self._console = Console()
        if self._console.is_terminal and stream is None:
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.2f} steps/s"),
                TimeRemainingColumn(),
                console=self._console,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                "train", total=total, completed=start, loss=0.0, rate=0.0
            )
        self._t0 = time.perf_counter()

    def update(self, step: int, loss: float, steps_per_s: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=loss, rate=steps_per_s)
            return
        left = (self.total - step) / steps_per_s if steps_per_s > 0 else float("nan")
        print(
            f"step {step}/{self.total}  loss {loss:.4f}  {steps_per_s:.2f} steps/s  "
            f"left {_duration(left)}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _duration(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def summary_table(title: str, rows: Mapping[str, Any]) -> Any:
    """A two-column rich Table of ``rows`` (name -> value)."""
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        table.add_row(key, "-" if value is None else str(value))
    return table


def plot_loss_curve(history: Sequence[Sequence[float]], path: str | Path, title: str) -> Path:
    """Write the (step, loss) curve as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if history:
        steps, losses = zip(*[(s, v) for s, v in history], strict=True)
        ax.plot(steps, losses)
        if min(losses) > 0:
            ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("train/loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
