"""What a training stage will do, settled before any compute: ``prepare_pretrain`` and
``prepare_finetune`` check everything (``checks.py``) and return a ``TrainPlan``. They are
the only place the two stages differ: pretraining builds a fresh model; fine-tuning resolves
the pretrained one and says which of its weights train (LoRA adapters, all, or none). The
recipe (``stage.run_stage``) then runs either plan the same way."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtmem.config.model import LoRAConfig, ModelConfig
from dtmem.config.train import FinetuneConfig, PretrainConfig, TrainConfig
from dtmem.data.minari_io import DatasetInfo
from dtmem.data.windows import StateStats
from dtmem.model.lora import ParamCounts, parameter_counts
from dtmem.tracking import RunHandle, check_tracking, resolve_tracking_uri
from dtmem.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_model_dir,
    resolve_model_dir,
)
from dtmem.training.checks import (
    ModelDataMismatchError,
    architecture,
    check_data,
    check_device,
    check_model_fits_data_or_raise,
    check_only_adapters,
    check_run_dir,
    first_difference,
    resume_info,
)
from dtmem.training.loop import TrainJob

__all__ = ["TrainPlan", "TrainResult", "prepare_finetune", "prepare_pretrain"]


@dataclass(frozen=True)
class TrainPlan:
    """A validated stage, ready to run."""

    stage: str  # "pretrain" or "finetune": the MLflow stage tag and the export's meta
    cfg: TrainConfig
    run_name: str
    run_dir: Path
    tracking_uri: str  # resolved once, here
    model_config: ModelConfig
    counts: ParamCounts
    trains: bool = True  # false: the model is only packaged (fine-tuning's frozen mode)
    lora: LoRAConfig | None = None  # adapters on the memory; None trains every weight
    init_from: str | None = None  # local model directory to start from (fine-tuning)
    state_stats: StateStats | None = None
    datasets: tuple[DatasetInfo, ...] = ()
    resume_step: int = 0
    resume_run_id: str | None = None
    stage_tags: dict[str, str] = field(default_factory=dict)  # what only this stage knows
    stage_meta: dict[str, Any] = field(default_factory=dict)  # into the exported meta.json

    @property
    def tags(self) -> dict[str, str]:
        tags = {"dtmem.run_name": self.run_name, "dtmem.run_dir": str(self.run_dir)}
        if self.datasets:
            tags["dtmem.datasets"] = ",".join(d.dataset_id for d in self.datasets)[:5000]
        for info in self.datasets:
            tags.update(info.mlflow_tags())
            tags[f"data.{info.dataset_id}.episodes"] = str(info.total_episodes)
            tags[f"data.{info.dataset_id}.steps"] = str(info.total_steps)
        if self.resume_step:
            tags["dtmem.resumed_from_step"] = str(self.resume_step)
        return {**tags, **self.stage_tags}

    @property
    def meta(self) -> dict[str, Any]:
        """What the exported model says about its training."""
        data = self.cfg.data.model_dump(
            mode="json", include={"context", "returns", "return_scale", "frame_stack"}
        )
        datasets = [d.dataset_id for d in self.datasets]
        return {"run_name": self.run_name, "datasets": datasets, "data": data, **self.stage_meta}

    def job(self, run: RunHandle | None) -> TrainJob:
        """What every worker needs (picklable)."""
        return TrainJob(
            stage=self.stage,
            cfg=self.cfg,
            model_config=self.model_config,
            run_dir=str(self.run_dir),
            state_stats=self.state_stats,
            init_from=self.init_from,
            lora=self.lora,
            tracking_uri=self.tracking_uri if run is not None else None,
            run_id=run.run_id if run is not None else None,
            meta=self.meta,
            resume_step=self.resume_step,
        )


@dataclass(frozen=True)
class TrainResult:
    """What a stage produced."""

    run_id: str
    run_name: str
    run_dir: Path
    checkpoint_dir: Path  # the exported model (load_checkpoint_model accepts it)
    adapter_dir: Path | None  # LoRA runs
    steps: int
    final_loss: float | None
    loss_history: list[tuple[int, float]]
    params_total: int
    params_trainable: int
    model_version: str | None  # registry version, when registered
    wall_s: float
    model_uri: str | None = None  # models:/<model id> of the MLflow logged model
    already_finished: bool = False  # the run had finished before; nothing was done


# --------------------------------------------------------------------------- shared steps


def _open(cfg: TrainConfig, stage: str) -> tuple[TrainConfig, str, str, Path]:
    """(config with data.root and tracking.uri resolved, tracking URI, run name, run
    directory), checked.

    The data root is resolved here, in the driver: Ray Train workers must not resolve it
    from their own environment (a worker started before the driver set
    MINARI_DATASETS_PATH, or on another node, would look elsewhere)."""
    from dtmem.data.minari_io import resolve_root

    root = str(resolve_root(cfg.data.root))
    uri = resolve_tracking_uri(cfg.tracking.uri)  # once per stage: every later use gets it
    check_tracking(uri)
    cfg = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"root": root}),
            "tracking": cfg.tracking.model_copy(update={"uri": uri}),
        }
    )
    check_device(cfg.scaling)
    run_name = cfg.run_name or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.checkpoint.dir).resolve() / run_name
    check_run_dir(run_dir)
    return cfg, uri, run_name, run_dir


def _resume(
    run_dir: Path, model_config: ModelConfig, cfg: TrainConfig, uri: str
) -> tuple[int, str | None]:
    """(step, MLflow run id) to resume from; a run id the store no longer has is dropped."""
    step, run_id = resume_info(run_dir, model_config, cfg.scaling.num_workers)
    if run_id is not None and not _run_exists(uri, run_id):
        run_id = None
    return step, run_id


def _run_exists(uri: str, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException:
        return False
    return True


# --------------------------------------------------------------------------- the two stages


def prepare_pretrain(cfg: PretrainConfig) -> TrainPlan:
    """A fresh model of ``cfg.model``, every weight trained."""
    from dtmem.model import build_model
    from dtmem.training.checkpoint import STATE_STATS_FILE

    checked, uri, run_name, run_dir = _open(cfg, "pretrain")
    step, run_id = _resume(run_dir, cfg.model, checked, uri)
    stats = None
    latest = latest_checkpoint(run_dir)
    if latest is not None and (latest / STATE_STATS_FILE).is_file():
        from dtmem.data.windows import load_state_stats

        stats = load_state_stats(latest / STATE_STATS_FILE)
    model = build_model(cfg.model)
    sampler = check_data(checked, model.spec, stats)
    return TrainPlan(
        stage="pretrain",
        cfg=checked,
        run_name=run_name,
        run_dir=run_dir,
        tracking_uri=uri,
        model_config=cfg.model,
        counts=parameter_counts(model),
        state_stats=sampler.state_stats,
        datasets=tuple(sampler.dataset_infos()),
        resume_step=step,
        resume_run_id=run_id,
    )


def prepare_finetune(cfg: FinetuneConfig) -> TrainPlan:
    """The pretrained model (``cfg.pretrained``) with LoRA adapters on its memory, every
    weight, or nothing trainable (``cfg.mode``)."""
    checked, uri, run_name, run_dir = _open(cfg, "finetune")
    model_dir = resolve_model_dir(cfg.pretrained, tracking_uri=uri)
    loaded = load_model_dir(model_dir)  # weights must fit the stored config
    if cfg.model is not None and architecture(cfg.model) != architecture(loaded.config):
        raise CheckpointError(
            f"pretrained {cfg.pretrained}: another architecture than model "
            f"({first_difference(loaded.config, cfg.model)})"
        )
    model_config = cfg.model or loaded.config
    check_model_fits_data_or_raise(model_config, checked)
    normalised = loaded.state_stats is not None and loaded.state_stats.normalizes_states
    if cfg.data.normalize_states != normalised:  # stats may carry only action bounds
        trained = "normalised" if normalised else "raw"
        raise ModelDataMismatchError(
            f"data.normalize_states={cfg.data.normalize_states}, but the pretrained model "
            f"was trained on {trained} states"
        )
    model, lora = loaded.model, cfg.lora if cfg.mode == "lora" else None
    if lora is not None:
        from dtmem.model.lora import apply_lora_config

        model = apply_lora_config(model, lora)
        check_only_adapters(model, lora.train_initial_memory)
    trains = cfg.mode != "frozen"
    counts = parameter_counts(model)
    if not trains:
        counts = ParamCounts(trainable=0, total=counts.total)
    elif counts.trainable <= 0:
        raise ModelDataMismatchError(f"mode={cfg.mode}: no trainable parameters")
    datasets: tuple[DatasetInfo, ...] = ()
    step, run_id = 0, None
    if trains:
        step, run_id = _resume(run_dir, model_config, checked, uri)
        datasets = tuple(check_data(checked, loaded.model.spec, loaded.state_stats).dataset_infos())
    stage_tags = {"dtmem.pretrained": cfg.pretrained, "dtmem.finetune_mode": cfg.mode}
    if loaded.meta.get("run_id"):
        stage_tags["dtmem.pretrained_run_id"] = str(loaded.meta["run_id"])
    return TrainPlan(
        stage="finetune",
        cfg=checked,
        run_name=run_name,
        run_dir=run_dir,
        tracking_uri=uri,
        model_config=model_config,
        counts=counts,
        trains=trains,
        lora=lora,
        init_from=str(model_dir),
        state_stats=loaded.state_stats,
        datasets=datasets,
        resume_step=step,
        resume_run_id=run_id,
        stage_tags=stage_tags,
        stage_meta={"pretrained": cfg.pretrained, "mode": cfg.mode},
    )
