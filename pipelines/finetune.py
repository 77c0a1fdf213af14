"""``dtmem finetune CONFIG``: adapt a pretrained model to a held-out task.

Modes: ``lora`` trains LoRA adapters on the working memory only (spec section 3), ``full``
trains every weight, ``frozen`` trains nothing (zero-shot) and only packages the pretrained
model as this run's model for evaluation. The trainable parameter count is checked (> 0,
adapters only for LoRA) and logged.

Set up (resolve the pretrained model, every check before compute), run (the same training
loop as pretraining), clean up (log the merged model, the adapter, the loss curve; print a
summary).
"""

from __future__ import annotations

from pathlib import Path

from dtmem.config.base import load_config
from dtmem.config.train import FinetuneConfig
from dtmem.training.plan import TrainResult


def run_finetune(cfg: FinetuneConfig) -> TrainResult:
    """Fine-tune as ``cfg`` says; returns the run id, model/adapter directories and losses."""
    from dtmem.training.stage import prepare_finetune, run_stage

    return run_stage(prepare_finetune(cfg), title=f"finetune ({cfg.mode})")


def main(config_path: Path, overrides: list[str]) -> None:
    run_finetune(load_config(FinetuneConfig, config_path, overrides))
