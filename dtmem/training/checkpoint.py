"""Checkpoints: training state saved atomically and resumed, and self-describing model
directories that evaluation and fine-tuning load.

A run directory ``<checkpoint.dir>/<run_name>/`` holds::

    step_00000400/                  a training checkpoint (the last ``keep_last`` are kept)
        model.safetensors           weights of the trained module (peft names in LoRA runs)
        model_config.json           the ModelConfig
        state_stats.json            observation mean/std, when states are normalised
        optimizer.pt                AdamW state (torch.save of tensors and numbers only)
        trainer.json                step, scheduler state, loss history, MLflow run id
        rank<r>.json                worker r's data position (the sampler's state_dict)
        rng_rank<r>.safetensors     worker r's torch RNG state (dropout)
        manifest.json               written last: the checkpoint is complete
    final/model/                    the exported model (plain weights, LoRA merged)
    final/adapter/                  the LoRA adapter (peft format), in LoRA runs

A checkpoint is built in ``.tmp-step_N`` by every worker (each writes its own rank files;
rank 0 the shared ones) and renamed to ``step_N`` by rank 0 once all have written, so an
interrupted save leaves only a ``.tmp-*`` directory that nothing loads and the next run
deletes. Nothing here is unpickled: weights are safetensors, the optimiser state is read
with ``torch.load(weights_only=True)``, the rest is JSON.

``load_checkpoint_model(ref)`` loads a model for evaluation from a directory, an MLflow
logged model (``models:/<model id>``: what training logs), a run (``runs:/<id>``: its logged
model) or a registered version (``models:/<name>@<alias>``, ``models:/<name>/<v>``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from pydantic import ValidationError
from torch import nn

from dtmem.config.model import ModelConfig
from dtmem.data.windows import StateStats, load_state_stats, save_state_stats
from dtmem.fileio import cache_dir
from dtmem.model.transformer import DecisionTransformer

__all__ = [
    "FINAL_ADAPTER",
    "FINAL_MODEL",
    "CheckpointError",
    "LoadedModel",
    "export_model",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint_model",
    "load_model_dir",
    "load_training_state",
    "load_weights",
    "read_optimizer_state",
    "read_trainer_state",
    "resolve_model_dir",
    "save_checkpoint",
]

MODEL_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model_config.json"
STATE_STATS_FILE = "state_stats.json"
META_FILE = "meta.json"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_FILE = "trainer.json"
MANIFEST_FILE = "manifest.json"
FINAL_MODEL = "final/model"
FINAL_ADAPTER = "final/adapter"
ARTIFACT_MODEL = "checkpoint"  # runs:/<id> of a run without a logged model: this directory
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointError(ValueError):
    """A checkpoint or model directory that cannot be used; one-line message."""


# --------------------------------------------------------------------------- small helpers


def _write_json(path: Path, payload: Any) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}


def _save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(_cpu_state(model), str(path))


def load_weights(model: nn.Module, path: Path, device: torch.device | str = "cpu") -> None:
    """Load safetensors weights that must fit ``model`` exactly (one-line error otherwise)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path), device=str(device))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from None
    target = unwrap(model)
    expected = target.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} of another shape (e.g. {k}: {tuple(weights[k].shape)} vs "
                f"{tuple(expected[k].shape)})"
            )
        raise CheckpointError(f"{path}: weights of another architecture: " + ", ".join(parts))
    target.load_state_dict(weights)


def read_model_config(path: Path) -> ModelConfig:
    """The ModelConfig stored in a checkpoint or model directory."""
    file = path / MODEL_CONFIG_FILE
    try:
        return ModelConfig.model_validate_json(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a model checkpoint (no {MODEL_CONFIG_FILE})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CheckpointError(f"{file}: invalid model config: {where}: {first['msg']}") from None


# --------------------------------------------------------------------------- training checkpoints


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, ``[(step, path), ...]`` by step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / MANIFEST_FILE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The most recent complete checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def read_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """``trainer.json`` of a checkpoint merged with its manifest (step, world_size, ...)."""
    checkpoint = Path(checkpoint)
    state = dict(_read_json(checkpoint / TRAINER_FILE))
    state["manifest"] = _read_json(checkpoint / MANIFEST_FILE)
    return state


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    model_config: ModelConfig,
    optimizer: torch.optim.Optimizer,
    trainer_state: Mapping[str, Any],
    sampler_state: Mapping[str, Any],
    state_stats: StateStats | None,
    rank: int,
    world_size: int,
    keep_last: int,
    barrier: Callable[[], None],
) -> Path:
    """Collective: every worker calls it at the same step. Returns the checkpoint's path.

    Rank 0 writes weights, optimiser and trainer state (identical on every DDP worker);
    each worker writes its data position and RNG state. Then rank 0 writes the manifest,
    renames the directory into place and deletes all but the ``keep_last`` newest.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    name = f"step_{step:08d}"
    staging = run_dir / f".tmp-{name}"
    final = run_dir / name
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    barrier()
    _write_json(staging / f"rank{rank}.json", {"sampler": dict(sampler_state)})
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["torch_cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(staging / f"rng_rank{rank}.safetensors"))
    if rank == 0:
        _save_weights(model, staging / MODEL_FILE)
        (staging / MODEL_CONFIG_FILE).write_text(model_config.model_dump_json(indent=1))
        if state_stats is not None:
            save_state_stats(state_stats, staging / STATE_STATS_FILE)
        torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
        _write_json(staging / TRAINER_FILE, dict(trainer_state))
    barrier()
    if rank == 0:
        files = sorted(p.name for p in staging.iterdir())
        _write_json(
            staging / MANIFEST_FILE,
            {"step": step, "world_size": world_size, "files": files, "time": time.time()},
        )
        if final.exists():  # a step saved before (a resumed run that re-saves it): replace
            shutil.rmtree(final)
        os.replace(staging, final)
        _prune(run_dir, keep_last)
    barrier()
    return final


def _prune(run_dir: Path, keep_last: int) -> None:
    for _, path in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def clean_incomplete(run_dir: str | Path) -> list[Path]:
    """Delete the ``.tmp-*`` leftovers of interrupted saves (call on rank 0 before training)."""
    run_dir = Path(run_dir)
    removed = []
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            if child.name.startswith(".tmp-"):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def read_optimizer_state(checkpoint: str | Path, device: torch.device | str = "cpu") -> Any:
    """The optimiser state of a checkpoint: tensors, numbers and lists only
    (``weights_only``); anything else (a pickled object, a truncated or foreign file) is a
    one-line ``CheckpointError``."""
    import pickle

    file = Path(checkpoint) / OPTIMIZER_FILE
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{file}: not a plain tensor file ({first[:200]}); delete this checkpoint to "
            "resume from the one before"
        ) from None


def load_training_state(
    checkpoint: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
    world_size: int,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore weights, optimiser and this worker's RNG from ``checkpoint``.

    Returns (trainer_state, sampler_state); the caller restores the scheduler and sampler.
    """
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    state = read_trainer_state(checkpoint)
    saved_world = state["manifest"]["world_size"]
    if saved_world != world_size:
        raise CheckpointError(
            f"{checkpoint}: saved by {saved_world} workers, this run has {world_size} "
            "(the data position is per worker: resume with the same scaling.num_workers)"
        )
    load_weights(model, checkpoint / MODEL_FILE, device)
    optimizer.load_state_dict(read_optimizer_state(checkpoint, device))
    rank_state = _read_json(checkpoint / f"rank{rank}.json")
    rng = load_file(str(checkpoint / f"rng_rank{rank}.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["torch_cuda"])
    return state, rank_state["sampler"]


# --------------------------------------------------------------------------- model directories


class LoadedModel(NamedTuple):
    """A model ready for evaluation: ``model, config, state_stats = load_checkpoint_model(..)``."""

    model: DecisionTransformer  # in eval mode
    config: ModelConfig
    state_stats: StateStats | None  # normalise observations with these (None: raw)
    path: Path  # the local model directory
    meta: dict[str, Any]  # meta.json: stage, step, run id, datasets, data settings


def export_model(
    out_dir: str | Path,
    *,
    model: nn.Module,
    model_config: ModelConfig,
    state_stats: StateStats | None,
    meta: Mapping[str, Any],
) -> Path:
    """Write a self-describing model directory atomically: weights (safetensors),
    model_config.json, state_stats.json (if any) and meta.json."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}.", dir=out_dir.parent))
    try:
        _save_weights(model, tmp / MODEL_FILE)
        (tmp / MODEL_CONFIG_FILE).write_text(model_config.model_dump_json(indent=1))
        if state_stats is not None:
            save_state_stats(state_stats, tmp / STATE_STATS_FILE)
        _write_json(tmp / META_FILE, dict(meta))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_model_dir(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Build the model a model (or training checkpoint) directory describes and load it."""
    from dtmem.model import build_model

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    config = read_model_config(path)
    model = build_model(config)
    load_weights(model, path / MODEL_FILE)
    stats_file = path / STATE_STATS_FILE
    stats = load_state_stats(stats_file) if stats_file.is_file() else None
    meta = _read_json(path / META_FILE) if (path / META_FILE).is_file() else {}
    return LoadedModel(model.to(device).eval(), config, stats, path, meta)


def _cache_root() -> Path:
    return cache_dir() / "artifacts"


def resolve_model_dir(
    ref: str | Path, *, tracking_uri: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """A local model directory for ``ref``:

    - a model directory (has model_config.json), or a run directory (its ``final/model``,
      else its latest training checkpoint);
    - ``models:/<model_id>`` (a training run's logged model), ``runs:/<run_id>`` (that run's
      logged model; ``runs:/<run_id>/<artifact dir>`` a directory of its artifacts),
      ``models:/<name>@<alias>`` / ``models:/<name>/<version>`` (a registered version): the
      files are downloaded once into ``cache_dir`` (default ``dtmem.fileio.cache_dir()``:
      ``$DTMEM_CACHE``, else ~/.cache/dtmem).
    """
    text = str(ref)
    if not text.startswith(("runs:/", "models:/")):
        path = Path(text).expanduser()
        if (path / MODEL_CONFIG_FILE).is_file():
            return path
        if (path / FINAL_MODEL / MODEL_CONFIG_FILE).is_file():
            return path / FINAL_MODEL
        latest = latest_checkpoint(path)
        if latest is not None:
            return latest
        if not path.exists():
            raise CheckpointError(f"{path}: no such checkpoint (a directory, runs:/ or models:/)")
        raise CheckpointError(f"{path}: not a model or run directory (no {MODEL_CONFIG_FILE})")

    from dtmem.tracking import (
        check_tracking,
        download_artifacts,
        resolve_artifact_ref,
        resolve_tracking_uri,
    )

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking(uri)
    text = _run_model(text, uri)
    art = resolve_artifact_ref(text, uri, default_path=ARTIFACT_MODEL)
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    local = root / art.run_id / art.artifact_path
    if (local / MODEL_CONFIG_FILE).is_file():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-download.", dir=local.parent))
    try:
        got = download_artifacts(uri, art, tmp)
        if not (got / MODEL_CONFIG_FILE).is_file():
            raise CheckpointError(
                f"{text}: artifact {art.artifact_path!r} of run {art.run_id} is not a model "
                f"checkpoint (no {MODEL_CONFIG_FILE})"
            )
        if local.exists():
            shutil.rmtree(local)
        os.replace(got, local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


def _run_model(ref: str, uri: str) -> str:
    """``runs:/<run_id>`` (no path) of a training run -> its logged model's ``models:/`` URI
    (tag ``dtmem.model_uri``); any other reference unchanged."""
    rest = ref.removeprefix("runs:/").strip("/") if ref.startswith("runs:/") else ""
    if not rest or "/" in rest:
        return ref
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        tags = MlflowClient(tracking_uri=uri).get_run(rest).data.tags
    except MlflowException:
        return ref  # resolve_artifact_ref says what is wrong
    return tags.get("dtmem.model_uri", ref)


def load_checkpoint_model(
    ref: str | Path,
    *,
    tracking_uri: str | None = None,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
) -> LoadedModel:
    """The model behind ``ref`` (see ``resolve_model_dir``), in eval mode on ``device``."""
    return load_model_dir(
        resolve_model_dir(ref, tracking_uri=tracking_uri, cache_dir=cache_dir), device
    )
