"""``dtmem sweep CONFIG``: Ray Tune trials of a pretraining or fine-tuning config, each with some
fields replaced (memory slots, LoRA rank/alpha/dropout, any dotted path), weak trials stopped
early by ASHA, everything tracked in MLflow, resumable after the driver dies.

Set up (``plan_sweep``: every check that needs no Ray; a bad path, an empty or ill-typed
space, a metric no trial reports end here with one line; then Ray, through
``dtmem.ray_session``, and the cluster's resources), run (``Tuner.fit``, or
``Tuner.restore(..., resume_errored=True)`` with ``--resume``), clean up (a results table and
plots on the sweep's MLflow run; a summary).

The sweep definitions are the YAML files beside this one (``tuning/*.yaml``); the machinery
lives in ``dtmem.sweep`` (its docstring tells what a trial does and reports, how early-stopped
trials give their resources back, the MLflow runs, resume and timing).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from dtmem.config.base import load_config
from dtmem.config.sweep import SweepConfig
from dtmem.sweep.base import STAGE, STATE_FILE, log_event, write_json
from dtmem.sweep.driver import (
    build_tuner,
    check_storage,
    quiet_ray,
    resources_per_trial,
    tune_interrupts,
)
from dtmem.sweep.plan import plan_sweep, resolve_base
from dtmem.sweep.results import SweepResult, collect_rows, print_summary, report_results
from dtmem.sweep.tracking import (
    SWEEP_DIR_TAG,
    SWEEP_TAG,
    end_open_trial_runs,
    trial_config_yaml,
)

__all__ = ["main", "run_sweep"]


def run_sweep(cfg: SweepConfig, resume: bool = False, *, verbose: bool = False) -> SweepResult:
    """Run (or, with ``resume``, finish) the sweep; returns one row per trial, the best and
    the sweep's MLflow run id. The sweep's run is a child of ``cfg.tracking.parent_run_id``
    when one is given, and carries ``cfg.tracking.tags``. ``verbose``: Ray's and Tune's own
    output too."""
    from dtmem.ray_session import ray_session
    from dtmem.tracking import check_tracking, start_run
    from dtmem.training.report import quiet_libraries

    t0 = time.time()
    quiet_libraries(verbose)  # MLflow's and Ray's INFO lines, as every stage does
    plan = plan_sweep(cfg)
    assert plan.spec.tracking.uri is not None  # plan_sweep resolved it
    check_tracking(plan.spec.tracking.uri)
    parent_id, restore = check_storage(plan, resume)
    with ray_session(verbose=verbose), quiet_ray(verbose):
        trial_resources, concurrency = resources_per_trial(plan)
        tags = {SWEEP_TAG: cfg.name, SWEEP_DIR_TAG: str(plan.sweep_dir)}
        with start_run(
            cfg.tracking,
            stage=STAGE,
            config=cfg,
            tags=tags,
            run_name=cfg.tracking.run_name or cfg.name,
            run_id=parent_id,
        ) as parent:
            if parent_id is None:
                plan.sweep_dir.mkdir(parents=True, exist_ok=True)
                write_json(plan.sweep_dir / STATE_FILE, {"run_id": parent.run_id})
                parent.log_text(trial_config_yaml(plan.base_config), "base_config.yaml")
            log_event(plan.sweep_dir, "sweep_resume" if resume else "sweep_start")
            plan = replace(plan, spec=replace(plan.spec, parent_run_id=parent.run_id))
            tuner = build_tuner(plan, trial_resources, concurrency, restore, verbose)
            try:
                with tune_interrupts():
                    grid = tuner.fit()
            except BaseException as exc:  # interrupted or failed: no trial run stays RUNNING
                end_open_trial_runs(parent, exc)
                raise
            rows = collect_rows(plan, grid)
            result = report_results(plan, parent, rows, time.time() - t0)
            log_event(plan.sweep_dir, "sweep_end", wall_s=result.wall_s)
    print_summary(result, plan)
    return result


def main(
    config_path: Path, overrides: list[str], resume: bool = False, verbose: bool = False
) -> SweepResult:
    """``dtmem sweep CONFIG [--set ...] [--resume]``."""
    cfg = load_config(SweepConfig, config_path, overrides)
    base = resolve_base(cfg.base, Path(config_path).parent)
    return run_sweep(cfg.model_copy(update={"base": str(base)}), resume=resume, verbose=verbose)


if __name__ == "__main__":  # python -m tuning.sweep CONFIG [--set k=v ...] [--resume] [--verbose]
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tuning.sweep")
    parser.add_argument("config", type=Path)
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    main(args.config, args.overrides, args.resume, args.verbose)
