"""``dtmem quickstart``: every stage once, on one machine, in a few minutes.

Set up: one embedded Ray for every stage, the local MLflow store (``sqlite:///mlflow.db``
unless ``MLFLOW_TRACKING_URI`` says otherwise) and a dataset root in the working directory.
Run: collect a small Meta-World dataset with the scripted experts on a few tasks; pretrain a
small DT-Mem and a plain DT on the training tasks; fine-tune DT-Mem with LoRA on a held-out
task; evaluate all three; run a small memory-slot sweep. Clean up: print a summary table and
how to open the UI, then stop Ray.

Each stage is the same function its own command runs (``dtmem collect`` etc.), with the smoke
configs and a few overrides; the run names share a prefix so the runs group in the UI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich import box
from rich.console import Console
from rich.table import Table

from dtmem.config.base import FrozenConfig, load_config
from dtmem.config.quickstart import QuickstartConfig

C = TypeVar("C", bound=FrozenConfig)


@dataclass
class StageTimes:
    """Wall seconds of each stage, in the order they ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, console: Console, name: str, what: str) -> Iterator[None]:
        console.rule(f"[bold]{len(self.seconds) + 1}. {name}[/]: {what}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - t0
            console.print(f"[dim]{name} took {self.seconds[name]:.0f}s[/]")


@dataclass
class QuickstartResult:
    experiment: str
    times: StageTimes
    rows: list[dict[str, Any]]
    sweep_rows: list[dict[str, Any]]


def _stage_config(cls: type[C], path: Path, overrides: list[str]) -> C:
    return load_config(cls, path, overrides)


def run_quickstart(cfg: QuickstartConfig, console: Console | None = None) -> QuickstartResult:
    """Runs every stage and returns their times and the summary rows."""
    import ray

    from dtmem.config.collect import CollectConfig
    from dtmem.config.evaluate import EvaluateConfig
    from dtmem.config.sweep import SweepConfig
    from dtmem.config.train import FinetuneConfig, PretrainConfig
    from pipelines.collect import run_collect
    from pipelines.evaluate import run_evaluate
    from pipelines.finetune import run_finetune
    from pipelines.pretrain import run_pretrain
    from tuning.sweep import run_sweep

    console = console or Console()
    prefix = cfg.run_prefix or time.strftime("quickstart-%Y%m%d-%H%M%S")
    os.environ.setdefault("MINARI_DATASETS_PATH", str(cfg.datasets_dir.resolve()))
    exp = [f"tracking.experiment={cfg.experiment}"]

    # Validate every stage's config before any compute.
    collect_cfg = _stage_config(
        CollectConfig,
        cfg.collect,
        [
            *exp,
            f"tracking.run_name={prefix}-collect",
            f"episodes_per_task={cfg.collect_episodes}",
            "overwrite=true",  # the smoke ids, remade if an earlier run used other settings
        ],
    )
    pretrain_overrides = [
        *exp,
        f"optim.max_steps={cfg.pretrain_steps}",
    ]
    dtmem_cfg = _stage_config(
        PretrainConfig, cfg.pretrain, [*pretrain_overrides, f"run_name={prefix}-dtmem"]
    )
    dt_cfg = _stage_config(
        PretrainConfig,
        cfg.pretrain,
        [
            *pretrain_overrides,
            f"run_name={prefix}-dt",
            "model.memory=null",
            "registry.name=dtmem-quickstart-dt",
        ],
    )
    sweep_cfg = _stage_config(
        SweepConfig,
        cfg.sweep,
        [
            *exp,
            f"name={prefix}-sweep",
            f"space={{model.memory.slots: {{grid: {list(cfg.sweep_slots)}}}}}",  # one seed
        ],
    )
    eval_base = _stage_config(EvaluateConfig, cfg.evaluate, [])
    if eval_base.metaworld is None:
        raise ValueError(f"{cfg.evaluate}: the quickstart evaluates Meta-World tasks")
    eval_tasks = list(eval_base.metaworld.tasks)
    held_out = _held_out_task(cfg.finetune)

    times = StageTimes()
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        with times.stage(console, "collect", f"scripted experts on {len(eval_tasks)} tasks"):
            run_collect(collect_cfg)
        with times.stage(console, "pretrain DT-Mem", "2 Ray Train workers"):
            mem = run_pretrain(dtmem_cfg)
        with times.stage(console, "pretrain DT", "the same, without memory"):
            dt = run_pretrain(dt_cfg)
        with times.stage(console, "finetune", f"LoRA on DT-Mem's memory, held-out {held_out}"):
            lora = run_finetune(
                _stage_config(
                    FinetuneConfig,
                    cfg.finetune,
                    [
                        *exp,
                        f"run_name={prefix}-lora",
                        f"pretrained={mem.checkpoint_dir}",
                        f"optim.max_steps={cfg.finetune_steps}",
                    ],
                )
            )
        models = [
            ("DT-Mem", mem, eval_tasks),
            ("plain DT", dt, eval_tasks),
            ("DT-Mem + LoRA", lora, [held_out]),
        ]
        rows: list[dict[str, Any]] = []
        with times.stage(console, "evaluate", "3 models, Ray actors, batched envs"):
            for name, trained, tasks in models:
                evaluated = run_evaluate(
                    _stage_config(
                        EvaluateConfig,
                        cfg.evaluate,
                        [
                            *exp,
                            f"tracking.run_name={prefix}-eval-{name.replace(' ', '').lower()}",
                            f"checkpoint={trained.checkpoint_dir}",
                            f"metaworld.tasks={tasks}",
                            f"metaworld.episodes={cfg.eval_episodes}",
                        ],
                    )
                )
                rows.append(
                    {
                        "model": name,
                        "parameters": trained.params_total,
                        "trained": trained.params_trainable,
                        "final loss": trained.final_loss,
                        **{t.task: t.success_rate for t in evaluated.tasks},
                    }
                )
        with times.stage(console, "sweep", f"{len(cfg.sweep_slots)} trials over memory slots"):
            sweep = run_sweep(sweep_cfg)
    finally:
        if started:
            ray.shutdown()

    result = QuickstartResult(
        experiment=cfg.experiment, times=times, rows=rows, sweep_rows=list(sweep.rows)
    )
    _print_summary(console, result, eval_tasks, held_out)
    return result


def _held_out_task(finetune_path: Path) -> str:
    from dtmem.config.train import FinetuneConfig

    cfg = load_config(FinetuneConfig, finetune_path, [])
    env = cfg.data.datasets[0].env
    if env is None:
        raise ValueError(f"{finetune_path}: data.datasets[0].env must name the held-out task")
    return env


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _print_summary(
    console: Console, result: QuickstartResult, tasks: list[str], held_out: str
) -> None:
    train_tasks = [t for t in tasks if t != held_out]
    table = Table(title="dtmem quickstart", box=box.SIMPLE_HEAVY)
    for name in ("model", "params", "trained", "loss", "train tasks", held_out):
        table.add_column(name, justify="left" if name == "model" else "right")
    for row in result.rows:
        seen = [row[t] for t in train_tasks if row.get(t) is not None]
        table.add_row(
            row["model"],
            _fmt(row["parameters"]),
            _fmt(row["trained"]),
            _fmt(row["final loss"]),
            _fmt(sum(seen) / len(seen)) if seen else "-",
            _fmt(row.get(held_out)),
        )
    table.caption = (
        f"success rate: mean over {', '.join(train_tasks)}; and on the held-out {held_out}"
    )
    console.print(table)
    if result.sweep_rows:
        sweep = Table(title="memory-slot sweep", box=box.SIMPLE_HEAVY)
        columns = ("model.memory.slots", "status", "step", "val/loss", "eval/success_rate_mean")
        for name in ("slots", "status", "step", "val loss", "success"):
            sweep.add_column(name, justify="right")
        for r in result.sweep_rows:
            sweep.add_row(*(_fmt(r.get(k)) for k in columns))
        console.print(sweep)
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in result.times.seconds.items())
    console.print(f"[bold]time[/]: {sum(result.times.seconds.values()):.0f}s ({stages})")
    console.print(
        "Browse every run: [bold]dtmem ui[/] (MLflow on http://127.0.0.1:5000), "
        f"experiment {result.experiment!r}"
    )


def main(config_path: Path | None, overrides: list[str]) -> None:
    run_quickstart(load_config(QuickstartConfig, config_path, overrides))
