"""The training recipe, shared by ``dtmem pretrain`` and ``dtmem finetune``; top to bottom:

1. plan: every check before any compute (``plan.prepare_pretrain`` / ``prepare_finetune``,
   the only place the two stages differ: what model they start from, what trains);
2. a run that already finished under this name is reported and returned, untouched;
3. open (or resume) the MLflow run; log the model size and the datasets;
4. train: the loop (``loop.run_worker``) from the run directory's latest checkpoint to
   ``optim.max_steps``, in this process for one worker, on Ray Train for several
   (``launch.launch``), with one progress bar here;
5. export: the model as an MLflow logged model, the registry entry, ``result.json``
   (``finish.finish``); print the summary, ending with the run id and how to open it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dtmem.training.finish import finish, log_inputs, log_model_size, read_finished
from dtmem.training.plan import TrainPlan, TrainResult, prepare_finetune, prepare_pretrain

__all__ = [
    "TrainPlan",
    "TrainResult",
    "finish",
    "log_model_size",
    "prepare_finetune",
    "prepare_pretrain",
    "run_stage",
]


def run_stage(plan: TrainPlan, title: str) -> TrainResult:
    """Run a checked plan (see the module's steps 2-5)."""
    from rich.console import Console

    from dtmem.tracking import redact_uri, start_run
    from dtmem.training.launch import launch
    from dtmem.training.report import ProgressBar, quiet_libraries

    cfg, console = plan.cfg, Console()
    quiet_libraries(cfg.verbose)
    done = read_finished(plan.run_dir, cfg.optim.max_steps if plan.trains else 0)
    if done is not None:
        console.print(
            f"dtmem {title}: run {plan.run_name} finished before ({done.steps} steps); "
            "left alone. Set run_name to train a new one.",
            soft_wrap=True,
        )
        _print_summary(console, title, done, plan)
        return done
    n = cfg.scaling.num_workers
    where = (
        f"{n} Ray Train worker{'s' if n > 1 else ''}" if cfg.scaling.on_ray else "in this process"
    )
    console.print(
        f"dtmem {title}: {plan.run_name}, {plan.resume_step}/{cfg.optim.max_steps} steps, "
        f"{where}; checkpoints in {plan.run_dir}, MLflow {redact_uri(plan.tracking_uri)}",
        soft_wrap=True,
    )
    t0 = time.perf_counter()
    with (
        _ray_for(plan),
        start_run(
            cfg.tracking,
            stage=plan.stage,
            config=cfg,
            tags=plan.tags,
            run_name=cfg.tracking.run_name or plan.run_name,
            run_id=plan.resume_run_id,
        ) as run,
    ):
        log_inputs(plan, run)
        if plan.trains:
            bar = ProgressBar(plan.run_dir, cfg.optim.max_steps, plan.resume_step, cfg.progress)
            with bar:
                launch(plan.job(run), cfg.scaling, cfg.failure, verbose=cfg.verbose)
        result = finish(plan, run, wall_s=time.perf_counter() - t0)
    _print_summary(console, title, result, plan)
    return result


@contextmanager
def _ray_for(plan: TrainPlan) -> Iterator[Any]:
    """Ray for the whole stage when it trains on Ray Train (its resources checked before the
    MLflow run opens); nothing otherwise."""
    if not (plan.trains and plan.cfg.scaling.on_ray):
        yield None
        return
    from dtmem.ray_session import ray_session
    from dtmem.training.launch import check_ray_resources

    with ray_session(verbose=plan.cfg.verbose) as ray:
        check_ray_resources(plan.cfg.scaling)
        yield ray


def summary_rows(result: TrainResult, plan: TrainPlan) -> dict[str, Any]:
    """The end-of-run table."""
    rows: dict[str, Any] = {
        "run": result.run_name,
        "steps": result.steps,
        "final loss": result.final_loss,
        "parameters": f"{result.params_total:,}",
        "trainable": f"{result.params_trainable:,}",
        "workers": plan.cfg.scaling.num_workers if plan.trains else 0,
        "wall time (s)": round(result.wall_s, 1),
        "model": str(result.checkpoint_dir),
        "MLflow model": result.model_uri,
    }
    if result.adapter_dir is not None:
        rows["adapter"] = str(result.adapter_dir)
    if result.model_version is not None:
        name, alias = plan.cfg.registry.name, plan.cfg.registry.alias
        rows["registered"] = f"models:/{name}/{result.model_version} (@{alias})"
    rows["MLflow run id"] = result.run_id
    return rows


def _print_summary(console: Any, title: str, result: TrainResult, plan: TrainPlan) -> None:
    from dtmem.training.report import summary_table, ui_hint

    console.print(summary_table(f"dtmem {title}", summary_rows(result, plan)))
    hint = ui_hint(plan.tracking_uri, plan.cfg.tracking.experiment, result.run_id)
    console.print(hint, soft_wrap=True, markup=False)
