"""``dtmem finetune CONFIG``: adapt a pretrained model to a held-out task.

Modes: ``lora`` trains LoRA adapters on the working memory only (spec section 3), ``full``
trains every weight, ``frozen`` trains nothing (zero-shot) and only packages the pretrained
model as this run's checkpoint for evaluation. The trainable parameter count is checked
(> 0, adapters only for LoRA) and logged.

Set up (resolve the pretrained model, every check before compute), run (Ray Train workers),
clean up (log the merged model, the adapter, the loss curve; print a summary).
"""

from __future__ import annotations

import time
from pathlib import Path

from dtmem.config.base import load_config
from dtmem.config.train import FinetuneConfig
from dtmem.training.stage import TrainResult
from pipelines.pretrain import _print_summary, _stop_ray


def run_finetune(cfg: FinetuneConfig) -> TrainResult:
    """Fine-tune as ``cfg`` says; returns the run id, model/adapter directories and losses."""
    from dtmem.tracking import start_run
    from dtmem.training.launch import launch
    from dtmem.training.stage import finish, log_model_size, prepare_finetune

    plan = prepare_finetune(cfg)
    t0 = time.perf_counter()
    try:
        with start_run(
            cfg.tracking,
            stage="finetune",
            config=cfg,
            tags=plan.tags,
            run_name=cfg.tracking.run_name or plan.run_name,
            run_id=plan.resume_run_id,
        ) as run:
            log_model_size(plan, run)
            if plan.train:
                launch(plan.job(run), cfg.scaling, cfg.failure)
            result = finish(plan, run, wall_s=time.perf_counter() - t0)
    finally:
        _stop_ray(plan)
    _print_summary(f"finetune ({cfg.mode})", result, plan)
    return result


def main(config_path: Path, overrides: list[str]) -> None:
    run_finetune(load_config(FinetuneConfig, config_path, overrides))
