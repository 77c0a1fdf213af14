"""What rank 0 reports while training: interval sums of the losses (``Interval``, averaged
over workers by ``reduce_interval``), MLflow logging that survives a tracking server going
away (``MetricSink``), and the progress file the driver's progress bar reads
(``write_progress``).

A lost server does not stop training: metrics wait in the sink and are retried with
exponential backoff (1 s doubling to 60 s between attempts, never blocking a step for longer
than one attempt). At each checkpoint the metrics still waiting are written beside it
(``unlogged_metrics.json``), so a run resumed after a crash sends them once the server is
back; at the end of training the sink tries for ``FINAL_WAIT_S`` more, then stops with one
line saying what was not logged. Steps that MLflow already has (a failed attempt that logged
past its last checkpoint) are never sent again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dtmem import metrics as M
from dtmem.model import LossParts
from dtmem.tracking import TrackingError, redact_uri

__all__ = [
    "PROGRESS_FILE",
    "UNLOGGED_FILE",
    "Interval",
    "MetricSink",
    "read_progress",
    "reduce_interval",
    "write_progress",
]

PROGRESS_FILE = "progress.json"
UNLOGGED_FILE = "unlogged_metrics.json"
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
FINAL_WAIT_S = 60.0


class Interval:
    """Sums over the steps since the last log (on device; read at log time only)."""

    def __init__(self, device: torch.device) -> None:
        # total, action, return, reward, grad_norm, steps, tokens
        self.sums = torch.zeros(7, dtype=torch.float64, device=device)
        self.t0 = time.perf_counter()

    def add(self, parts: LossParts, grad_norm: torch.Tensor, tokens: torch.Tensor) -> None:
        one = torch.ones((), dtype=torch.float64, device=self.sums.device)
        values = [parts.total, parts.action, parts.returns, parts.reward, grad_norm, one, tokens]
        self.sums += torch.stack([v.double() for v in values])


def reduce_interval(interval: Interval, ctx: Any, lr: float) -> dict[str, float]:
    """Mean losses over the interval's steps and workers; throughput of all workers."""
    sums = ctx.all_reduce_sum(interval.sums.clone()).tolist()
    rss = ctx.all_reduce_max(torch.tensor([_peak_rss_mb()], dtype=torch.float64))
    seconds = max(time.perf_counter() - interval.t0, 1e-9)
    n = sums[5]  # (worker, step) pairs
    return {
        M.TRAIN_LOSS: sums[0] / n,
        M.TRAIN_LOSS_ACTION: sums[1] / n,
        M.TRAIN_LOSS_RETURN: sums[2] / n,
        M.TRAIN_LOSS_REWARD: sums[3] / n,
        M.TRAIN_GRAD_NORM: sums[4] / n,
        M.TRAIN_LR: lr,
        M.PERF_STEPS_PER_S: n / ctx.world_size / seconds,
        M.PERF_TOKENS_PER_S: sums[6] / seconds,
        M.PERF_PEAK_RSS_MB: float(rss.item()),
    }


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _atomic_json(path: Path, payload: Any) -> None:
    # Not dtmem.fileio.write_json_atomic: progress and pending metrics are rewritten often,
    # and an fsync each time would cost the loop more than a lost line is worth.
    tmp = path.with_name(f"{path.name}.part")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


class MetricSink:
    """Rank 0's MLflow logging, resilient to a tracking server that goes away.

    ``log`` queues ``(step, metrics)`` and sends the queue when the backoff allows;
    ``checkpoint(step)`` writes what is still queued up to ``step`` beside the checkpoint;
    ``close()`` waits (bounded) for the rest, else raises ``TrackingError``.
    """

    def __init__(self, uri: str | None, run_id: str | None, run_dir: Path, resume_step: int):
        from dtmem.tracking import attach

        self.handle = attach(uri, run_id) if uri is not None and run_id is not None else None
        self.run_dir = run_dir
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.delay = FIRST_BACKOFF_S
        self.next_try = 0.0
        self.failing_since: int | None = None
        self.last_error = ""
        self.logged_up_to = 0
        if self.handle is None:
            return
        self.logged_up_to = max((s for s, _ in self.handle.metric_history(M.TRAIN_LOSS)), default=0)
        saved = run_dir / UNLOGGED_FILE
        if saved.is_file():  # a crashed attempt's queue: send what MLflow lacks and we won't redo
            for step, values in json.loads(saved.read_text()):
                if self.logged_up_to < step <= resume_step:
                    self.pending.append((int(step), values))

    def log(self, values: dict[str, float], step: int) -> None:
        if self.handle is None or step <= self.logged_up_to:
            return
        self.pending.append((step, dict(values)))
        if time.monotonic() >= self.next_try:
            self._send()

    def _send(self) -> bool:
        assert self.handle is not None
        while self.pending:
            step, values = self.pending[0]
            try:
                self.handle.log_metrics(values, step=step)
            except Exception as exc:  # any client or network error: keep it, back off
                self.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                self.failing_since = self.failing_since or step
                self.next_try = time.monotonic() + self.delay
                self.delay = min(self.delay * 2, MAX_BACKOFF_S)
                return False
            self.pending.pop(0)
        self.delay, self.failing_since = FIRST_BACKOFF_S, None
        return True

    def checkpoint(self, step: int) -> None:
        """Write the queue (steps <= ``step``) beside the checkpoint just saved."""
        if self.handle is None:
            return
        file = self.run_dir / UNLOGGED_FILE
        queued = [[s, v] for s, v in self.pending if s <= step]
        if queued:
            _atomic_json(file, queued)
        else:
            file.unlink(missing_ok=True)

    def close(self, wait_s: float | None = None) -> None:
        """Send what is queued, retrying with backoff for up to ``wait_s`` (default
        ``FINAL_WAIT_S``); raise ``TrackingError`` if the server never came back."""
        if self.handle is None:
            return
        deadline = time.monotonic() + (FINAL_WAIT_S if wait_s is None else wait_s)
        while self.pending and not self._send():
            if time.monotonic() + self.delay > deadline:
                break
            time.sleep(max(0.0, self.next_try - time.monotonic()))
        if self.pending:
            first, last = self.pending[0][0], self.pending[-1][0]
            _atomic_json(self.run_dir / UNLOGGED_FILE, [[s, v] for s, v in self.pending])
            raise TrackingError(
                f"tracking server {redact_uri(self.handle.uri)} unreachable ({self.last_error}): metrics of "
                f"steps {first}..{last} not logged; the checkpoints are saved: run the same "
                "run_name again once it is back"
            )
        (self.run_dir / UNLOGGED_FILE).unlink(missing_ok=True)


def write_progress(run_dir: Path, **fields: Any) -> None:
    """Rank 0's latest numbers, for the driver's progress bar (atomic replace)."""
    _atomic_json(run_dir / PROGRESS_FILE, {**fields, "time": time.time()})


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((run_dir / PROGRESS_FILE).read_text()))
    except (OSError, ValueError):
        return None
