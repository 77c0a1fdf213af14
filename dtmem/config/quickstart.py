"""The quickstart: every stage once, on tiny Meta-World data, on one machine."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from dtmem.config.base import FrozenConfig


class QuickstartConfig(FrozenConfig):
    """Which stage configs the quickstart composes, and what it changes in them."""

    collect: Path = Field(
        Path("pipelines/configs/smoke/collect.yaml"), description="Collection config."
    )
    pretrain: Path = Field(
        Path("pipelines/configs/smoke/pretrain.yaml"), description="Pretraining config (DT-Mem)."
    )
    finetune: Path = Field(
        Path("pipelines/configs/smoke/finetune.yaml"), description="LoRA fine-tuning config."
    )
    evaluate: Path = Field(
        Path("pipelines/configs/smoke/evaluate.yaml"), description="Evaluation config."
    )
    sweep: Path = Field(Path("tuning/smoke.yaml"), description="Memory-slot sweep config.")
    sweep_slots: tuple[int, ...] = Field(
        (16, 64, 256), min_length=1, description="Memory slots, one sweep trial each."
    )
    collect_episodes: int = Field(10, gt=0, description="Expert episodes collected per task.")
    pretrain_steps: int = Field(600, gt=0, description="Optimiser steps of each pretraining.")
    finetune_steps: int = Field(150, gt=0, description="Optimiser steps of the fine-tuning.")
    eval_episodes: int = Field(4, gt=0, description="Evaluation episodes per task.")
    datasets_dir: Path = Field(
        Path("datasets"),
        description="Minari root used when MINARI_DATASETS_PATH is not set.",
    )
    experiment: str = Field("dtmem-quickstart", description="MLflow experiment of every run.")
    run_prefix: str | None = Field(
        None, description="Prefix of every run name; null: quickstart-<date>-<time>."
    )
