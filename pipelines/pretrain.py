"""``dtmem pretrain CONFIG``: DT-Mem (or a plain DT) trained from scratch on a task mixture,
tracked in MLflow, the final model logged and registered.

Set up (every check before compute), run (the training loop from the last checkpoint to
max_steps: in this process for one worker, Ray Train for several), clean up (log the model,
the loss curve, the registry entry; print a summary). Started again with the same
``run_name``, it resumes the same checkpoint and MLflow run; once finished, it reports the
run and leaves it alone.
"""

from __future__ import annotations

from pathlib import Path

from dtmem.config.base import load_config
from dtmem.config.train import PretrainConfig
from dtmem.training.plan import TrainResult


def run_pretrain(cfg: PretrainConfig) -> TrainResult:
    """Pretrain as ``cfg`` says; returns the run id, model directory, losses and counts."""
    from dtmem.training.stage import prepare_pretrain, run_stage

    return run_stage(prepare_pretrain(cfg), title="pretrain")


def main(config_path: Path, overrides: list[str]) -> None:
    run_pretrain(load_config(PretrainConfig, config_path, overrides))
