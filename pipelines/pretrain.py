"""``dtmem pretrain CONFIG``: DT-Mem (or a plain DT) trained data-parallel on Ray Train,
tracked in MLflow, the final model registered.

Set up (every check before compute), run (Ray Train workers from the last checkpoint to
max_steps), clean up (log the model, the loss curve, the registry entry; print a summary).
Started again with the same ``run_name``, it resumes the same checkpoint and MLflow run.
"""

from __future__ import annotations

import time
from pathlib import Path

from dtmem.config.base import load_config
from dtmem.config.train import PretrainConfig
from dtmem.training.stage import TrainPlan, TrainResult


def run_pretrain(cfg: PretrainConfig) -> TrainResult:
    """Pretrain as ``cfg`` says; returns the run id, model directory, losses and counts."""
    from dtmem.tracking import start_run
    from dtmem.training.launch import launch
    from dtmem.training.stage import finish, log_model_size, prepare_pretrain

    plan = prepare_pretrain(cfg)
    t0 = time.perf_counter()
    try:
        with start_run(
            cfg.tracking,
            stage="pretrain",
            config=cfg,
            tags=plan.tags,
            run_name=cfg.tracking.run_name or plan.run_name,
            run_id=plan.resume_run_id,
        ) as run:
            log_model_size(plan, run)
            launch(plan.job(run), cfg.scaling, cfg.failure)
            result = finish(plan, run, wall_s=time.perf_counter() - t0)
    finally:
        _stop_ray(plan)
    _print_summary("pretrain", result, plan)
    return result


def _stop_ray(plan: TrainPlan) -> None:
    if plan.ray_started:
        import ray

        ray.shutdown()


def _print_summary(stage: str, result: TrainResult, plan: TrainPlan) -> None:
    from rich.console import Console

    from dtmem.training.report import summary_table
    from dtmem.training.stage import summary_rows

    Console().print(summary_table(f"dtmem {stage}", summary_rows(result, plan)))


def main(config_path: Path, overrides: list[str]) -> None:
    run_pretrain(load_config(PretrainConfig, config_path, overrides))
