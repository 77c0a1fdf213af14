"""``dtmem collect CONFIG``: episodes of a behaviour policy, collected by parallel Ray actors,
written by this process as one Minari dataset per task.

Set up: validate the config, check the tracking store, find which datasets already exist
(one made by this same config is reused; another one is an error unless ``overwrite``),
start the actors (on the actor pool shared with evaluation, before the MLflow run so that
their start-up overlaps it; with RLlib, after training the agents whose checkpoints are
missing, which need the same CPUs).
Run: the tasks' episodes are cut into chunks of consecutive indices and handed to whichever
actor is free (two queued per actor); each chunk comes back whole, and every task's episodes
are written in index order by its own ``DatasetWriter`` as soon as the next one is in, so
the dataset is the same whatever the number of actors or the order chunks finish in.
Clean up: commit each dataset when its last episode is written (the writer renames it into
place atomically), print and log the summary and where the call's time went
(``perf/collect_<phase>_s``), stop the actors. An error or Ctrl-C aborts
every open writer: what is left is the datasets already complete, and nothing that loads
as complete when it is not; a re-run reuses the complete ones and does the rest.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from dtmem import metrics
from dtmem.collect.driver import (
    CollectResult,
    DatasetSummary,
    Timeline,
    check_checkpoints,
    collect_pool,
    collect_tasks,
    existing_summary,
    report,
    train_agents,
)
from dtmem.config.base import load_config
from dtmem.config.collect import CollectConfig
from dtmem.data.minari_io import check_dataset_root
from dtmem.ray_session import ray_session
from dtmem.tracking import check_tracking, resolve_tracking_uri, start_run

__all__ = ["CollectResult", "main", "run_collect"]


def run_collect(cfg: CollectConfig, *, console: Console | None = None) -> CollectResult:
    """Run the collection of ``cfg`` (see the module docstring)."""
    timeline = Timeline(time.time())
    if console is None:
        console = Console(stderr=True)
        if not console.is_terminal:  # a log file: rich's 80 columns would cut the table
            console = Console(stderr=True, width=120)
    check_tracking(resolve_tracking_uri(cfg.tracking.uri))
    root = check_dataset_root(cfg.root)  # read-only or full: refused before any compute
    reused = {t: s for t in cfg.tasks if (s := existing_summary(cfg, t, root)) is not None}
    todo = [t for t in cfg.tasks if t not in reused]
    if cfg.policy.rllib is not None and not cfg.policy.rllib.train_missing:
        check_checkpoints(cfg, todo)

    with ExitStack() as stack:
        pool = None
        if todo:
            ray = stack.enter_context(ray_session())
            if cfg.policy.rllib is None:  # start the actors now, while MLflow starts its run
                pool = stack.enter_context(collect_pool(cfg, ray))
        run = stack.enter_context(start_run(cfg.tracking, stage="collect", config=cfg))
        written: dict[str, DatasetSummary] = {}
        counts = (0, 0, 0.0)
        if todo:
            if pool is None:  # RLlib: the agents train first, on the CPUs the actors take
                train_agents(cfg, todo, run, console)
                pool = stack.enter_context(collect_pool(cfg, ray))
            written, counts = collect_tasks(cfg, todo, root, pool, run, console, timeline)
        summaries = [written.get(t) or reused[t] for t in cfg.tasks]
        report(summaries, run, console, root)
        # up to here: stopping the actors and ending the run come after, in the result only
        phases = timeline.breakdown(time.time())
        run.log_metrics({metrics.collect_phase_metric(k): v for k, v in phases.items()}, step=0)
    return CollectResult(summaries, run.run_id, *counts, timeline.breakdown(time.time()))


def main(config_path: Path, overrides: list[str]) -> None:
    """The ``dtmem collect`` entry point."""
    cfg = load_config(CollectConfig, config_path, overrides)
    run_collect(cfg)
