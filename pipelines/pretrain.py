"""``dtmem pretrain CONFIG``: DT-Mem (or a plain DT) trained data-parallel on Ray Train,
tracked in MLflow, the final model registered.

Set up (every check before compute), run (Ray Train workers from the last checkpoint to
max_steps), clean up (log the model, the loss curve, the registry entry; print a summary).
Started again with the same ``run_name``, it resumes the same checkpoint and MLflow run.
"""

from __future__ import annotations

from pathlib import Path

from dtmem.config.base import load_config
from dtmem.config.train import PretrainConfig
from dtmem.training.stage import TrainResult


def run_pretrain(cfg: PretrainConfig) -> TrainResult:
    """Pretrain as ``cfg`` says; returns the run id, model directory, losses and counts."""
    from dtmem.training.stage import prepare_pretrain, run_stage

    plan = prepare_pretrain(cfg)  # every check, before any compute
    return run_stage(plan, cfg, stage="pretrain", title="pretrain")


def main(config_path: Path, overrides: list[str]) -> None:
    run_pretrain(load_config(PretrainConfig, config_path, overrides))
