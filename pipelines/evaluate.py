"""``dtmem evaluate CONFIG``: a checkpoint on Atari games and Meta-World tasks, by a pool of
Ray actors (or in this process when one worker is all the pool would be), tracked in MLflow
(stage "evaluate").

Set up (every check before any actor starts: names, tracking store, checkpoint, model against
every env, targets), run (``dtmem.evaluation.evaluate``), clean up (metrics, per-task and
per-episode tables, a bar chart; print a summary). The evaluation itself lives in
``dtmem.evaluation``; this file only wires config, checkpoint, Ray and MLflow together.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from dtmem.config.base import load_config
from dtmem.config.evaluate import EvaluateConfig
from dtmem.evaluation import EvalResult, Payload

__all__ = ["EvalResult", "main", "run_evaluate"]

STAGE = "evaluate"
TABLE_ARTIFACT = "eval_tasks.csv"
EPISODES_ARTIFACT = "eval_episodes.csv"
PLOT_ARTIFACT = "eval_scores.png"
CHECKPOINT_TAG = "dtmem.checkpoint"  # the checkpoint reference, as configured
CHECKPOINT_RUN_TAG = "dtmem.checkpoint_run_id"  # the MLflow run that produced it
BASELINE_TAG = "dtmem.baseline"  # kind:datasets of a baseline evaluated instead of a model


def run_evaluate(cfg: EvaluateConfig) -> EvalResult:
    """Evaluate ``cfg.checkpoint`` (or ``cfg.baseline``) as ``cfg`` says; returns per-task
    statistics, aggregates and the MLflow run id."""
    from rich.console import Console

    from dtmem.evaluation import (
        episode_rows,
        evaluate,
        metrics_of,
        plot_scores,
        requests_from_config,
        table_rows,
    )
    from dtmem.tracking import check_tracking, resolve_tracking_uri, start_run

    console = Console(stderr=True)
    # Set up: everything that can be wrong is found here, before Ray starts.
    requests = requests_from_config(cfg)
    uri = resolve_tracking_uri(cfg.tracking.uri)
    check_tracking(uri)
    payload, step, tags = _payload(cfg, uri)
    payload.check(requests)

    def progress(unit: Any) -> None:
        n = len(unit.episodes)
        mean = sum(e.episode_return for e in unit.episodes) / n
        task, first = unit.key
        # a mixed unit ("reach-v3+push-v3", dtmem.eval_tasks.MixedUnit): each task its own
        # episodes, side by side, so there is no one range of episode numbers to show
        span = f"{n} episodes side by side" if "+" in task else f"episodes {first}..{first + n - 1}"
        console.print(f"  {task} {span}: return {mean:.2f} ({unit.seconds:.1f} s, pid {unit.pid})")

    # Run (Ray actors, entered through dtmem.ray_session, or in this process: see open_pool).
    with start_run(cfg.tracking, stage=STAGE, config=cfg, tags=tags) as run:
        result = evaluate(
            payload,
            requests,
            num_actors=cfg.num_actors,
            envs_per_actor=cfg.envs_per_actor,
            seed=cfg.seed,
            greedy=cfg.greedy,
            cpus_per_actor=cfg.cpus_per_actor,
            max_failures=cfg.max_actor_failures,
            bootstrap_resamples=cfg.bootstrap_resamples,
            on_result=progress,
        )
        # Clean up: metrics at the checkpoint's step, tables, chart.
        run.log_metrics(metrics_of(result), step=step)
        run.log_table(table_rows(result), TABLE_ARTIFACT)
        run.log_table(episode_rows(result), EPISODES_ARTIFACT)
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_scores(
                result, Path(tmp) / PLOT_ARTIFACT, title=cfg.checkpoint or tags[BASELINE_TAG]
            )
            run.log_artifact(png)
        result = replace(result, run_id=run.run_id)
    _print_summary(console, result)
    return result


def _payload(cfg: EvaluateConfig, uri: str) -> tuple[Payload, int, dict[str, str]]:
    """What is evaluated, the step its metrics are logged at, and the run's tags: the
    checkpoint's model (at the checkpoint's step), or the baseline fitted here (step 0)."""
    from dtmem.evaluation import BaselinePayload, ModelPayload

    if cfg.baseline is not None:
        from dtmem.baselines import demonstrations_from_config

        demos = demonstrations_from_config(cfg.baseline.data)
        datasets = ",".join(d.id for d in cfg.baseline.data.datasets)
        return BaselinePayload(demos), 0, {BASELINE_TAG: f"{cfg.baseline.kind}:{datasets}"}
    from dtmem.training.checkpoint import load_checkpoint_model

    assert cfg.checkpoint is not None  # the config has one or the other
    loaded = load_checkpoint_model(cfg.checkpoint, tracking_uri=uri)
    payload = ModelPayload.of(loaded.model, loaded.config, loaded.state_stats)
    tags = {CHECKPOINT_TAG: cfg.checkpoint, "dtmem.checkpoint_dir": str(loaded.path)}
    source_run = _source_run_id(cfg.checkpoint, loaded.meta)
    if source_run:
        tags[CHECKPOINT_RUN_TAG] = source_run
    return payload, int(loaded.meta.get("step", 0) or 0), tags


def _source_run_id(checkpoint: str, meta: dict[str, Any]) -> str | None:
    """The MLflow run that produced the checkpoint: from its meta.json, else a runs:/ ref."""
    if meta.get("run_id"):
        return str(meta["run_id"])
    if checkpoint.startswith("runs:/"):
        return checkpoint[len("runs:/") :].strip("/").split("/")[0] or None
    return None


def _print_summary(console: Any, result: EvalResult) -> None:
    from rich.table import Table

    atari = any(t.suite == "atari" for t in result.tasks)
    meta = any(t.suite == "metaworld" for t in result.tasks)
    columns = ["task", "episodes", "return mean", "top-3"]
    columns += ["human-norm", "DQN-norm"] if atari else []
    columns += ["success"] if meta else []
    table = Table(title="dtmem evaluate")
    for col in columns:
        table.add_column(col, justify="left" if col == "task" else "right", no_wrap=True)

    def num(x: float | None, fmt: str = ".3f") -> str:
        return "-" if x is None else format(x, fmt)

    for t in result.tasks:
        row = [t.task, str(len(t.episodes)), num(t.return_mean, ".2f"), num(t.return_top3, ".2f")]
        row += [num(t.human_normalized), num(t.dqn_normalized)] if atari else []
        row += [num(t.success_rate, ".2f")] if meta else []
        table.add_row(*row)
    console.print(table)
    if result.iqm_human_normalized is not None:
        ci = result.iqm_human_normalized
        console.print(f"IQM human-normalised {ci.point:.3f} (95% CI {ci.low:.3f}..{ci.high:.3f})")
    if result.iqm_dqn_normalized is not None:
        ci = result.iqm_dqn_normalized
        console.print(f"IQM DQN-normalised {ci.point:.3f} (95% CI {ci.low:.3f}..{ci.high:.3f})")
    if result.success_rate_mean is not None:
        console.print(f"mean success rate {result.success_rate_mean:.3f}")
    console.print(
        f"{result.env_steps} env steps in {result.wall_s:.1f} s ({result.steps_per_s:.0f}/s), "
        f"{result.actors} actors ({result.actors_replaced} replaced), MLflow run {result.run_id}"
    )


def main(config_path: Path, overrides: list[str]) -> None:
    run_evaluate(load_config(EvaluateConfig, config_path, overrides))
