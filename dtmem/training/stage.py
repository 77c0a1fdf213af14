"""The driver's side of a training stage: check everything before any compute
(``prepare_pretrain`` / ``prepare_finetune`` -> ``TrainPlan``), then, after training, package
and log the result (``finish``).

Checks, each a one-line ``ValueError`` subclass: the tracking store is reachable; model and
data agree (context, returns, observation shape, action space, enough windows for a batch on
every worker); the run directory is writable; a checkpoint being resumed has the same
architecture and worker count; the pretrained reference resolves to a checkpoint whose
weights fit its config (and the config's ``model``, if given); LoRA targets match modules;
Ray has the CPUs/GPUs asked for.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from dtmem import metrics as M
from dtmem.config.model import ModelConfig
from dtmem.config.train import (
    FinetuneConfig,
    PretrainConfig,
    TrainConfig,
    check_model_fits_data,
)
from dtmem.data.minari_io import DatasetInfo
from dtmem.data.sampler import WindowSampler
from dtmem.data.windows import StateStats
from dtmem.model.lora import ParamCounts, parameter_counts
from dtmem.model.transformer import ModelSpec
from dtmem.tracking import RunHandle, TrackingError, check_tracking, resolve_tracking_uri
from dtmem.training.checkpoint import (
    ARTIFACT_MODEL,
    FINAL_ADAPTER,
    FINAL_MODEL,
    CheckpointError,
    export_model,
    latest_checkpoint,
    load_model_dir,
    read_model_config,
    read_trainer_state,
    resolve_model_dir,
)
from dtmem.training.loop import TrainJob

C = TypeVar("C", PretrainConfig, FinetuneConfig)

__all__ = [
    "RunDirError",
    "TrainPlan",
    "TrainResult",
    "finish",
    "prepare_finetune",
    "prepare_pretrain",
]


class RunDirError(ValueError):
    """The run directory cannot be used."""


class ModelDataMismatchError(ValueError):
    """The model cannot read the data (or the checkpoint does not fit the config)."""


@dataclass(frozen=True)
class TrainPlan:
    """A validated stage, ready to run."""

    stage: str
    cfg: TrainConfig
    run_name: str
    run_dir: Path
    tracking_uri: str
    model_config: ModelConfig
    counts: ParamCounts
    state_stats: StateStats | None = None
    datasets: tuple[DatasetInfo, ...] = ()
    resume_step: int = 0
    resume_run_id: str | None = None
    init_from: str | None = None  # local pretrained model directory (fine-tuning)
    pretrained_meta: dict[str, Any] = field(default_factory=dict)
    ray_started: bool = False

    @property
    def train(self) -> bool:
        return not (isinstance(self.cfg, FinetuneConfig) and self.cfg.mode == "frozen")

    @property
    def tags(self) -> dict[str, str]:
        tags = {"dtmem.run_name": self.run_name, "dtmem.run_dir": str(self.run_dir)}
        if self.datasets:
            tags["dtmem.datasets"] = ",".join(d.dataset_id for d in self.datasets)[:5000]
        for info in self.datasets:
            tags.update(info.mlflow_tags())
            tags[f"data.{info.dataset_id}.episodes"] = str(info.total_episodes)
            tags[f"data.{info.dataset_id}.steps"] = str(info.total_steps)
        if isinstance(self.cfg, FinetuneConfig):
            tags["dtmem.pretrained"] = self.cfg.pretrained
            tags["dtmem.finetune_mode"] = self.cfg.mode
            if self.pretrained_meta.get("run_id"):
                tags["dtmem.pretrained_run_id"] = str(self.pretrained_meta["run_id"])
        if self.resume_step:
            tags["dtmem.resumed_from_step"] = str(self.resume_step)
        return tags

    def job(self, run: RunHandle | None) -> TrainJob:
        lora = None
        if isinstance(self.cfg, FinetuneConfig) and self.cfg.mode == "lora":
            lora = self.cfg.lora
        meta: dict[str, Any] = {
            "run_name": self.run_name,
            "datasets": [d.dataset_id for d in self.datasets],
            "data": self.cfg.data.model_dump(
                mode="json", include={"context", "returns", "return_scale", "frame_stack"}
            ),
        }
        if isinstance(self.cfg, FinetuneConfig):
            meta["pretrained"] = self.cfg.pretrained
            meta["mode"] = self.cfg.mode
        return TrainJob(
            stage=self.stage,
            cfg=self.cfg,
            model_config=self.model_config,
            run_dir=str(self.run_dir),
            state_stats=self.state_stats,
            init_from=self.init_from,
            lora=lora,
            tracking_uri=self.tracking_uri if run is not None else None,
            run_id=run.run_id if run is not None else None,
            meta=meta,
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


# --------------------------------------------------------------------------- checks


def _check_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"checkpoint.dir: cannot create {run_dir}: {exc.strerror}") from None
    if not os.access(run_dir, os.W_OK):
        raise RunDirError(f"checkpoint.dir: {run_dir} is not writable")


def _check_data(cfg: TrainConfig, spec: ModelSpec, stats: StateStats | None) -> WindowSampler:
    """Open the data as worker 0 of num_workers would; check shapes and actions."""
    from dtmem.data.sampler import build_sampler

    sampler = build_sampler(
        cfg.data,
        rank=0,
        world_size=cfg.scaling.num_workers,
        state_stats=stats,
        expected_obs_shape=tuple(spec.obs_shape),
    )
    where = sampler.sources[0].reader.path
    if sampler.action_kind != spec.action_kind:
        raise ModelDataMismatchError(
            f"{where}: {sampler.action_kind} actions, but the model predicts {spec.action_kind} ones"
        )
    if spec.action_kind == "discrete" and sampler.num_actions > spec.num_actions:
        raise ModelDataMismatchError(
            f"{where}: {sampler.num_actions} actions, the model has {spec.num_actions}"
        )
    if spec.action_kind == "continuous" and sampler.act_dim != spec.act_dim:
        raise ModelDataMismatchError(
            f"{where}: actions of size {sampler.act_dim}, the model's act_dim is {spec.act_dim}"
        )
    sampler.batches_in_epoch(0)  # DataError when a worker would get no full batch
    return sampler


def _resume_info(
    run_dir: Path, model_config: ModelConfig, num_workers: int, uri: str
) -> tuple[int, str | None]:
    """(step, MLflow run id) of the run directory's latest checkpoint, after checking it fits."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return 0, None
    saved = read_model_config(latest)
    if _architecture(saved) != _architecture(model_config):
        raise CheckpointError(
            f"{latest}: the run's checkpoint has another architecture "
            f"({_first_difference(saved, model_config)}); use another run_name"
        )
    state = read_trainer_state(latest)
    if state["manifest"]["world_size"] != num_workers:
        raise CheckpointError(
            f"{latest}: saved by {state['manifest']['world_size']} workers, "
            f"scaling.num_workers={num_workers}: resume with the same number of workers"
        )
    run_id = state.get("mlflow_run_id")
    if run_id is not None and not _run_exists(uri, run_id):
        run_id = None
    return int(state["step"]), run_id


def _run_exists(uri: str, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException:
        return False
    return True


def _architecture(cfg: ModelConfig) -> dict[str, Any]:
    """Everything that shapes the weights (dropout does not)."""
    return cfg.model_dump(exclude={"dropout"})


def _first_difference(a: ModelConfig, b: ModelConfig) -> str:
    from dtmem.config.base import flatten

    fa, fb = flatten(_architecture(a)), flatten(_architecture(b))
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key) != fb.get(key):
            return f"{key}: {fa.get(key)!r} vs {fb.get(key)!r}"
    return "no difference"


def _check_model_fits_data(model: ModelConfig, cfg: TrainConfig) -> None:
    try:
        check_model_fits_data(model, cfg.data)
    except ValueError as exc:
        raise ModelDataMismatchError(str(exc)) from None


def _run_name(cfg: TrainConfig, stage: str) -> str:
    return cfg.run_name or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"


def _start_ray(cfg: TrainConfig) -> bool:
    if not cfg.scaling.ray:
        return False
    from dtmem.training.launch import check_ray_resources, ensure_ray

    started = ensure_ray()
    try:
        check_ray_resources(cfg.scaling)
    except BaseException:
        if started:
            import ray

            ray.shutdown()
        raise
    return started


# --------------------------------------------------------------------------- plans


def _resolve_data_root(cfg: C) -> C:
    """The config with ``data.root`` resolved here, in the driver: Ray Train workers must not
    resolve it from their own environment (a worker started before the driver set
    MINARI_DATASETS_PATH, or on another node, would look elsewhere)."""
    from dtmem.data.minari_io import resolve_root

    root = str(resolve_root(cfg.data.root))
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": root})})


def prepare_pretrain(cfg: PretrainConfig) -> TrainPlan:
    """Every check of a pretraining run, before any training compute."""
    from dtmem.model import build_model

    cfg = _resolve_data_root(cfg)
    uri = resolve_tracking_uri(cfg.tracking.uri)
    check_tracking(uri)
    run_name = _run_name(cfg, "pretrain")
    run_dir = Path(cfg.checkpoint.dir).resolve() / run_name
    _check_run_dir(run_dir)
    step, run_id = _resume_info(run_dir, cfg.model, cfg.scaling.num_workers, uri)
    stats = None
    latest = latest_checkpoint(run_dir)
    if latest is not None and cfg.data.normalize_states:
        stats = load_model_stats(latest)
    model = build_model(cfg.model)
    sampler = _check_data(cfg, model.spec, stats)
    plan = TrainPlan(
        stage="pretrain",
        cfg=cfg,
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
    return replace(plan, ray_started=_start_ray(cfg))


def load_model_stats(model_dir: Path) -> StateStats | None:
    from dtmem.data.windows import load_state_stats
    from dtmem.training.checkpoint import STATE_STATS_FILE

    file = model_dir / STATE_STATS_FILE
    return load_state_stats(file) if file.is_file() else None


def prepare_finetune(cfg: FinetuneConfig) -> TrainPlan:
    """Every check of a fine-tuning run, before any training compute."""
    cfg = _resolve_data_root(cfg)
    uri = resolve_tracking_uri(cfg.tracking.uri)
    check_tracking(uri)
    model_dir = resolve_model_dir(cfg.pretrained, tracking_uri=uri)
    loaded = load_model_dir(model_dir)  # weights must fit the stored config
    if cfg.model is not None and _architecture(cfg.model) != _architecture(loaded.config):
        raise CheckpointError(
            f"pretrained {cfg.pretrained}: another architecture than model "
            f"({_first_difference(loaded.config, cfg.model)})"
        )
    model_config = cfg.model or loaded.config
    _check_model_fits_data(model_config, cfg)
    if cfg.data.normalize_states != (loaded.state_stats is not None):
        trained = "normalised" if loaded.state_stats is not None else "raw"
        raise ModelDataMismatchError(
            f"data.normalize_states={cfg.data.normalize_states}, but the pretrained model "
            f"was trained on {trained} states"
        )
    run_name = _run_name(cfg, "finetune")
    run_dir = Path(cfg.checkpoint.dir).resolve() / run_name
    _check_run_dir(run_dir)

    model = loaded.model
    if cfg.mode == "lora":
        from dtmem.model.lora import apply_lora_config

        lc = cfg.lora
        model = apply_lora_config(model, lc)
        _check_only_adapters(model, lc.train_initial_memory)
    counts = parameter_counts(model)
    if cfg.mode == "frozen":
        counts = ParamCounts(trainable=0, total=counts.total)
    elif counts.trainable <= 0:
        raise ModelDataMismatchError(f"mode={cfg.mode}: no trainable parameters")

    datasets: tuple[DatasetInfo, ...] = ()
    step, run_id = 0, None
    if cfg.mode != "frozen":
        step, run_id = _resume_info(run_dir, model_config, cfg.scaling.num_workers, uri)
        sampler = _check_data(cfg, loaded.model.spec, loaded.state_stats)
        datasets = tuple(sampler.dataset_infos())
    plan = TrainPlan(
        stage="finetune",
        cfg=cfg,
        run_name=run_name,
        run_dir=run_dir,
        tracking_uri=uri,
        model_config=model_config,
        counts=counts,
        state_stats=loaded.state_stats,
        datasets=datasets,
        resume_step=step,
        resume_run_id=run_id,
        init_from=str(model_dir),
        pretrained_meta=dict(loaded.meta),
    )
    return replace(plan, ray_started=_start_ray(cfg) if cfg.mode != "frozen" else False)


def _check_only_adapters(model: nn.Module, train_initial_memory: bool) -> None:
    """LoRA must leave exactly the adapters (and M_0 when asked) trainable."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ModelDataMismatchError("lora: no adapter parameters were created")
    others = [
        n
        for n in names
        if "lora_" not in n and not (train_initial_memory and n.endswith("initial_memory"))
    ]
    if others:
        raise ModelDataMismatchError(f"lora: non-adapter parameters are trainable: {others[0]}")


# --------------------------------------------------------------------------- after training


def log_model_size(plan: TrainPlan, run: RunHandle) -> None:
    run.log_params(
        {"model.params_total": plan.counts.total, "model.params_trainable": plan.counts.trainable}
    )
    run.log_metrics(
        {M.MODEL_PARAMS: plan.counts.total, M.FINETUNE_TRAINABLE_PARAMS: plan.counts.trainable},
        step=0,
    )


def finish(plan: TrainPlan, run: RunHandle, wall_s: float) -> TrainResult:
    """Package the run: export (frozen mode), log the model, adapter, loss curve; register."""
    import tempfile

    from dtmem.tracking import register_model_dir
    from dtmem.training.report import plot_loss_curve

    final = plan.run_dir / FINAL_MODEL
    adapter = plan.run_dir / FINAL_ADAPTER
    history: list[tuple[int, float]] = []
    steps = 0
    if plan.train:
        latest = latest_checkpoint(plan.run_dir)
        if latest is None or not final.is_dir():
            raise CheckpointError(f"{plan.run_dir}: training ended without a final checkpoint")
        state = read_trainer_state(latest)
        steps = int(state["step"])
        history = [(int(s), float(v)) for s, v in state["loss_history"]]
    else:
        assert plan.init_from is not None
        loaded = load_model_dir(plan.init_from)
        meta = {
            **plan.job(run).meta,
            "stage": plan.stage,
            "step": 0,
            "run_id": run.run_id,
        }
        export_model(
            final,
            model=loaded.model,
            model_config=plan.model_config,
            state_stats=loaded.state_stats,
            meta=meta,
        )
    run.log_artifact(final, ARTIFACT_MODEL)
    has_adapter = isinstance(plan.cfg, FinetuneConfig) and plan.cfg.mode == "lora"
    if has_adapter:
        if not adapter.is_dir():
            raise CheckpointError(f"{plan.run_dir}: LoRA training ended without an adapter")
        run.log_artifact(adapter, "adapter")
    if history:
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_loss_curve(history, Path(tmp) / "loss_curve.png", f"{plan.run_name}")
            run.log_artifact(png)
    version = None
    if plan.cfg.registry.name:
        try:
            version = register_model_dir(
                plan.tracking_uri,
                run.run_id,
                ARTIFACT_MODEL,
                plan.cfg.registry.name,
                plan.cfg.registry.alias,
            )
        except Exception as exc:  # the run is complete; say clearly what failed
            raise TrackingError(
                f"registry: cannot register {plan.cfg.registry.name}: {exc}"
            ) from None
    run.set_tags({"dtmem.final_step": str(steps)})
    return TrainResult(
        run_id=run.run_id,
        run_name=plan.run_name,
        run_dir=plan.run_dir,
        checkpoint_dir=final,
        adapter_dir=adapter if has_adapter else None,
        steps=steps,
        final_loss=history[-1][1] if history else None,
        loss_history=history,
        params_total=plan.counts.total,
        params_trainable=plan.counts.trainable,
        model_version=version,
        wall_s=wall_s,
    )


def summary_rows(result: TrainResult, plan: TrainPlan) -> dict[str, Any]:
    """The end-of-run table."""
    rows: dict[str, Any] = {
        "run": result.run_name,
        "MLflow run id": result.run_id,
        "steps": result.steps,
        "final loss": result.final_loss,
        "parameters": f"{result.params_total:,}",
        "trainable": f"{result.params_trainable:,}",
        "workers": plan.cfg.scaling.num_workers if plan.train else 0,
        "wall time (s)": round(result.wall_s, 1),
        "model": str(result.checkpoint_dir),
    }
    if result.adapter_dir is not None:
        rows["adapter"] = str(result.adapter_dir)
    if result.model_version is not None:
        rows["registered"] = (
            f"models:/{plan.cfg.registry.name}/{result.model_version} (@{plan.cfg.registry.alias})"
        )
    return rows


def run_stage(plan: TrainPlan, cfg: TrainConfig, stage: str, title: str) -> TrainResult:
    """One training stage, shared by pretrain and finetune: open (or resume) its MLflow run,
    train on Ray Train when the plan trains, export and log the model, stop a Ray this plan
    started, print the summary."""
    from rich.console import Console

    from dtmem.tracking import start_run
    from dtmem.training.launch import launch
    from dtmem.training.report import summary_table

    t0 = time.perf_counter()
    try:
        with start_run(
            cfg.tracking,
            stage=stage,
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
        if plan.ray_started:
            import ray

            ray.shutdown()
    Console().print(summary_table(f"dtmem {title}", summary_rows(result, plan)))
    return result
