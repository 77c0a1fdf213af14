"""What every part of a sweep shares: its error, the names of what a trial reports, the
layout of the sweep directory, atomic JSON files and the events log (``events.jsonl``: the
driver's and the trials' view of each trial's timing, read by ``benchmarks/bench_sweep.py``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dtmem import metrics as M
from dtmem.metrics import EVAL_SUCCESS_RATE_MEAN

__all__ = [
    "CHECKPOINT_METRICS",
    "EVAL_SUCCESS_RATE_MEAN",
    "EVENTS_FILE",
    "FINAL_FILE",
    "PG_FILE",
    "RESULTS_ARTIFACT",
    "RESULT_FILE",
    "RUNS_DIR",
    "STAGE",
    "STATE_FILE",
    "STEP",
    "STOPPED_MARKER",
    "TRAIN_LOSS",
    "TUNE_DIR",
    "SweepError",
    "log_event",
    "plain_values",
    "read_events",
    "read_json",
    "write_json",
]

STAGE = "sweep"
STEP = "step"  # optimiser steps: ASHA's time attribute
TRAIN_LOSS = M.TRAIN_LOSS
CHECKPOINT_METRICS: tuple[str, ...] = (M.VAL_LOSS, M.VAL_LOSS_ACTION, TRAIN_LOSS)

TUNE_DIR = "tune"  # Tune's experiment (storage_path=<sweep dir>, name="tune")
RUNS_DIR = "runs"  # the trials' run directories (checkpoint.dir)
STATE_FILE = "sweep.json"  # the sweep's MLflow run id
EVENTS_FILE = "events.jsonl"
RESULT_FILE = "sweep_result.json"  # in a trial's run dir, written last: the trial is done
FINAL_FILE = "final_metrics.json"  # rank 0's final report (metrics and samples)
STOPPED_MARKER = ".stopped_early"
PG_FILE = ".train_placement_group"
RESULTS_ARTIFACT = "sweep_results.csv"


class SweepError(ValueError):
    """A sweep that cannot run as configured; one line."""


# --------------------------------------------------------------------------- files


def write_json(path: Path, payload: Any) -> None:
    """Atomically: a temp file in the same directory, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def log_event(sweep_dir: str | Path, event: str, **fields: Any) -> None:
    """Append one line to the sweep's ``events.jsonl`` (O_APPEND: lines never interleave)."""
    line = json.dumps({"t": time.time(), "event": event, **fields}, default=_json_default)
    path = Path(sweep_dir) / EVENTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_events(sweep_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(sweep_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plain_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Tune's sampled values as plain Python (numpy scalars -> int/float)."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}
