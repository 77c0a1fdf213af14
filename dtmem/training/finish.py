"""After training: package and log what a stage produced, and remember that it finished.

- ``log_inputs``: the model size as params, the datasets as MLflow dataset inputs (name,
  content hash as digest, path as source), so the run page and the Dataset column show them.
- ``finish``: the exported model becomes an MLflow *logged model* without a flavour (the
  safetensors weights, model_config.json, state stats and meta.json; nothing pickled) linked
  to the run, loadable with ``load_checkpoint_model("models:/<model id>")``; also the LoRA
  adapter and the loss curve; the registry entry points at the logged model. Last, it writes
  ``<run_dir>/result.json``: from then on the run is finished, and starting it again returns
  that result (``read_finished``) instead of doing zero steps and registering it again.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dtmem.fileio import write_json_atomic
from dtmem.tracking import RunHandle, TrackingError, log_logged_model
from dtmem.training.checkpoint import (
    FINAL_ADAPTER,
    FINAL_MODEL,
    CheckpointError,
    export_model,
    latest_checkpoint,
    load_model_dir,
    read_trainer_state,
)
from dtmem.training.plan import TrainPlan, TrainResult

__all__ = ["RESULT_FILE", "finish", "log_inputs", "log_model_size", "read_finished"]

RESULT_FILE = "result.json"


def log_model_size(plan: TrainPlan, run: RunHandle) -> None:
    """Parameter counts, as params (one number each, not a one-point chart)."""
    run.log_params(
        {"model.params_total": plan.counts.total, "model.params_trainable": plan.counts.trainable}
    )


def log_inputs(plan: TrainPlan, run: RunHandle) -> None:
    """The model size, and every training dataset as an MLflow dataset input."""
    from dtmem.tracking import log_dataset_input

    log_model_size(plan, run)
    for info in plan.datasets:
        profile = {"episodes": info.total_episodes, "steps": info.total_steps}
        digest = info.content_hash or "unknown"
        log_dataset_input(run, info.dataset_id, digest, str(info.path), profile=profile)


def _final_state(plan: TrainPlan, run: RunHandle) -> tuple[int, list[tuple[int, float]]]:
    """(steps, loss history) of a trained run; a frozen run exports the pretrained model."""
    final = plan.run_dir / FINAL_MODEL
    if not plan.trains:
        assert plan.init_from is not None
        loaded = load_model_dir(plan.init_from)
        meta = {**plan.meta, "stage": plan.stage, "step": 0, "run_id": run.run_id}
        export_model(
            final,
            model=loaded.model,
            model_config=plan.model_config,
            state_stats=loaded.state_stats,
            meta=meta,
        )
        return 0, []
    latest = latest_checkpoint(plan.run_dir)
    if latest is None or not final.is_dir():
        raise CheckpointError(f"{plan.run_dir}: training ended without a final checkpoint")
    state = read_trainer_state(latest)
    return int(state["step"]), [(int(s), float(v)) for s, v in state["loss_history"]]


def finish(plan: TrainPlan, run: RunHandle, wall_s: float) -> TrainResult:
    """Package the run: the logged model, adapter and loss curve, the registry entry; then
    mark it finished (``result.json``)."""
    from dtmem.training.report import plot_loss_curve

    steps, history = _final_state(plan, run)
    final = plan.run_dir / FINAL_MODEL
    params = {"params_total": plan.counts.total, "stage": plan.stage, "steps": steps}
    model_uri = "models:/" + log_logged_model(run, final, plan.run_name, step=steps, params=params)
    adapter = plan.run_dir / FINAL_ADAPTER if plan.lora is not None and plan.trains else None
    if adapter is not None:
        if not adapter.is_dir():
            raise CheckpointError(f"{plan.run_dir}: LoRA training ended without an adapter")
        run.log_artifact(adapter, "adapter")
    if history:
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_loss_curve(history, Path(tmp) / "loss_curve.png", f"{plan.run_name}")
            run.log_artifact(png)
    version = _register(plan, run, model_uri) if plan.cfg.registry.name else None
    run.set_tags({"dtmem.final_step": str(steps), "dtmem.model_uri": model_uri})
    result = TrainResult(
        run_id=run.run_id,
        run_name=plan.run_name,
        run_dir=plan.run_dir,
        checkpoint_dir=final,
        adapter_dir=adapter,
        steps=steps,
        final_loss=history[-1][1] if history else None,
        loss_history=history,
        params_total=plan.counts.total,
        params_trainable=plan.counts.trainable,
        model_version=version,
        wall_s=wall_s,
        model_uri=model_uri,
    )
    _write_result(plan.run_dir / RESULT_FILE, result)
    return result


def _register(plan: TrainPlan, run: RunHandle, model_uri: str) -> str:
    """A new version of ``registry.name`` from the logged model; the alias moves to it."""
    from mlflow.exceptions import MlflowException

    name, alias = plan.cfg.registry.name, plan.cfg.registry.alias
    assert name is not None
    client = run.client
    try:
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name)
        model_id = model_uri.removeprefix("models:/")
        mv = client.create_model_version(name, model_uri, run_id=run.run_id, model_id=model_id)
        client.set_registered_model_alias(name, alias, mv.version)
    except MlflowException as exc:  # the run is complete; say clearly what failed
        raise TrackingError(f"registry: cannot register {name}: {exc}") from None
    return str(mv.version)


# --------------------------------------------------------------------------- finished runs


def _write_result(path: Path, result: TrainResult) -> None:
    payload = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
    write_json_atomic(path, payload)


def read_finished(run_dir: Path, max_steps: int) -> TrainResult | None:
    """The result of a run that finished in ``run_dir`` with ``max_steps`` steps (a frozen
    run: 0), or None (never finished, or a longer run asked for: it resumes)."""
    try:
        payload: dict[str, Any] = json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if payload["steps"] not in (0, max_steps):
        return None
    for key in ("run_dir", "checkpoint_dir", "adapter_dir"):
        payload[key] = Path(payload[key]) if payload[key] is not None else None
    payload["loss_history"] = [tuple(p) for p in payload["loss_history"]]
    return TrainResult(**{**payload, "already_finished": True})
