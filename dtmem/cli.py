"""The ``dtmem`` command line: one subcommand per pipeline stage.

Every stage reads ``CONFIG.yaml`` and takes ``--set dotted.key=value`` overrides. Heavy
libraries (torch, Ray, MLflow, peft) are imported inside the commands, so ``dtmem --help``
answers at once. Bad input ends with a one-line ``error: ...`` and exit code 2; set
``DTMEM_DEBUG=1`` for the full traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

app = typer.Typer(
    name="dtmem",
    help="DT-Mem: Decision Transformers with working memory, on Ray and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigArg = Annotated[Path, typer.Argument(help="The stage's YAML config.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config field: dotted.key=value (repeatable)."),
]

T = TypeVar("T")


@app.callback()
def _root() -> None:
    """DT-Mem: Decision Transformers with working memory, on Ray and MLflow."""


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit."""
    typer.echo(f"error: {message.splitlines()[0] if message else 'failed'}", err=True)
    raise typer.Exit(code)


def guarded(fn: Callable[[], T]) -> T:
    """Runs a stage; bad input becomes a one-line error and exit code 2."""
    try:
        return fn()
    except (ValueError, FileNotFoundError, PermissionError, TypeError) as exc:
        if os.environ.get("DTMEM_DEBUG"):
            raise
        fail(str(exc))
        raise  # unreachable: fail() raises
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def _stage(module: str, config: Path, overrides: list[str] | None) -> None:
    """Runs ``<module>.main(config, overrides)`` behind the one-line error guard."""
    import importlib

    def go() -> None:
        importlib.import_module(module).main(config, list(overrides or []))

    guarded(go)


@app.command()
def collect(config: ConfigArg, set_: SetOpt = None) -> None:
    """Collect offline episodes with parallel Ray actors into a Minari dataset."""
    _stage("pipelines.collect", config, set_)


@app.command()
def pretrain(config: ConfigArg, set_: SetOpt = None) -> None:
    """Pretrain DT-Mem (or a plain DT) data-parallel on Ray Train, tracked in MLflow."""
    _stage("pipelines.pretrain", config, set_)


@app.command()
def finetune(config: ConfigArg, set_: SetOpt = None) -> None:
    """Fine-tune a pretrained model on a held-out task: LoRA on the memory, full, or frozen."""
    _stage("pipelines.finetune", config, set_)


@app.command()
def evaluate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Evaluate a checkpoint on Atari games and Meta-World tasks with Ray actors."""
    _stage("pipelines.evaluate", config, set_)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    command: Annotated[
        list[str] | None,
        typer.Argument(
            help="The command to run, after --: dtmem STAGE CONFIG ...", show_default=False
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray dashboard URL (default $RAY_ADDRESS or local :8265).")
    ] = None,
    runtime_env: Annotated[
        Path, typer.Option(help="Ray runtime env YAML (working dir, excludes, env vars).")
    ] = Path("cluster/runtime_env.yaml"),
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the logs.")] = True,
) -> None:
    """Run a command on a Ray cluster (Jobs API), follow its logs, exit with its status."""
    from dtmem.submit import submit as submit_job

    cmd = list(command or [])
    raise typer.Exit(
        guarded(lambda: submit_job(cmd, address=address, runtime_env=runtime_env, wait=wait))
    )


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes it.")] = "127.0.0.1",
    backend_store_uri: Annotated[
        str | None,
        typer.Option(help="Tracking store (default $MLFLOW_TRACKING_URI or ./mlflow.db)."),
    ] = None,
) -> None:
    """Serve the MLflow UI on the project's tracking store and print its URL."""
    from dtmem.ui import run_ui

    raise typer.Exit(guarded(lambda: run_ui(backend_store_uri, host, port)))


@app.command()
def quickstart(
    config: Annotated[
        Path | None, typer.Argument(help="Optional quickstart YAML.", show_default=False)
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Every stage once on tiny Meta-World data: collect, pretrain DT-Mem and a plain DT,
    LoRA fine-tune, evaluate, sweep memory slots; then a summary (the README's main job)."""
    from pipelines.quickstart import main as run

    guarded(lambda: run(config, list(set_ or [])))


@app.command()
def sweep(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Finish the sweep of this name (after a crash).")
    ] = False,
) -> None:
    """Sweep config fields (memory slots, LoRA rank/alpha/dropout, ...) with Ray Tune + ASHA."""

    def go() -> None:
        from tuning.sweep import main as sweep_main

        sweep_main(config, list(set_ or []), resume)

    guarded(go)


@app.command()
def demo(
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 300,
    slots: Annotated[int, typer.Option(help="Memory slots.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train a tiny DT-Mem on synthetic data and print its loss falling (no Ray, no MLflow)."""
    from pipelines.demo import run_demo

    guarded(lambda: run_demo(steps=steps, slots=slots, seed=seed))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
