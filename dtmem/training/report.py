"""What a person sees: one progress bar on the driver, a summary table, a loss-curve PNG."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ProgressBar", "plot_loss_curve", "quiet_libraries", "summary_table", "ui_hint"]


def quiet_libraries(verbose: bool) -> None:
    """Keep Ray's and MLflow's own log lines and download bars out of the terminal (they go
    on logging at WARNING); ``verbose`` lets everything through."""
    if verbose:
        return
    import mlflow  # noqa: F401  # its import sets its loggers to INFO: quiet them after it

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "ray", "ray.train", "ray.tune", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


class ProgressBar:
    """The driver's one progress bar (step, loss, steps/s, time left), fed by the progress
    file rank 0 writes (``monitor.write_progress``) and polled from a thread, so it is the
    same bar whether the loop runs in this process or in Ray Train workers. Not on a
    terminal (CI, a Ray job's log), a plain line at every tenth of the run instead."""

    def __init__(
        self, run_dir: Path, total: int, start: int = 0, enabled: bool = True, poll_s: float = 0.5
    ):
        self.run_dir, self.total, self.enabled, self.poll_s = run_dir, total, enabled, poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = start
        self._last_line = start

    def __enter__(self) -> ProgressBar:
        from dtmem.training.monitor import PROGRESS_FILE

        (self.run_dir / PROGRESS_FILE).unlink(missing_ok=True)  # a previous attempt's
        if self.enabled and self.total > self._start:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:
            self._poll(self._line)
            return
        from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        columns = (
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.2f} steps/s"),
            TimeRemainingColumn(),
        )
        with RichProgress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(
                "train", total=self.total, completed=self._start, loss=0.0, rate=0.0
            )

            def show(p: dict[str, Any]) -> None:
                bar.update(task, completed=p["step"], loss=p["loss"], rate=p["steps_per_s"])

            self._poll(show)

    def _poll(self, show: Any) -> None:
        from dtmem.training.monitor import read_progress

        seen = None
        while True:
            stopping = self._stop.wait(self.poll_s)
            p = read_progress(self.run_dir)
            if p is not None and p.get("time") != seen:
                seen = p.get("time")
                show(p)
            if stopping:
                return

    def _line(self, p: dict[str, Any]) -> None:
        step, rate = int(p["step"]), float(p["steps_per_s"])
        if step < self.total and step - self._last_line < max(1, self.total // 10):
            return
        self._last_line = step
        left = (self.total - step) / rate if rate > 0 else float("nan")
        print(
            f"step {step}/{self.total}  loss {p['loss']:.4f}  {rate:.2f} steps/s  "
            f"left {_duration(left)}",
            flush=True,
        )


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


def ui_hint(tracking_uri: str, experiment: str, run_id: str) -> str:
    """The line that opens the run: ``dtmem ui`` on a local store, the server's page else."""
    from dtmem.tracking import redact_uri

    if tracking_uri.startswith(("http://", "https://")):
        return f"run {run_id}: open {redact_uri(tracking_uri).rstrip('/')}/#/experiments (experiment {experiment})"
    return (
        f"run {run_id}: see it with `dtmem ui --backend-store-uri {redact_uri(tracking_uri)}` "
        f"(experiment {experiment})"
    )
