"""The ``dtmem`` command line: one subcommand per pipeline stage.

Every stage reads ``CONFIG.yaml`` and takes ``--set dotted.key=value`` overrides. Heavy
libraries (torch, Ray, MLflow, peft) are imported inside the commands, so ``dtmem --help``
answers at once, and each stage says at once what starts and where its results go.

Errors: anything the user can cause and fix (a bad file or field, an unreachable tracking
server or Ray cluster, a full disk, an unknown model reference) ends in one line
``error: ...`` and exit code 2; a crash of dtmem itself prints one line saying where the
full traceback was written, exit code 1 (``dtmem.errors``). ``DTMEM_DEBUG=1`` lets every
traceback through instead. Ctrl-C and SIGTERM (``ray job stop``, ``kill``, a pod being
stopped) end the stage as an interruption: its MLflow runs end KILLED, not left RUNNING, and
the exit code is 130 or 143.
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


VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Let Ray's and MLflow's own log lines through.")
]


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit."""
    typer.echo(f"error: {message.splitlines()[0] if message else 'failed'}", err=True)
    raise typer.Exit(code)


def _debug() -> bool:
    return os.environ.get("DTMEM_DEBUG", "") not in ("", "0", "false")


def guarded(fn: Callable[[], T]) -> T:
    """Runs a stage: a user's error becomes one line and exit code 2, a crash one line naming
    the file that holds its traceback and exit code 1, Ctrl-C exit code 130, SIGTERM 143."""
    from dtmem.interrupts import Terminated, sigterm_interrupts

    try:
        with sigterm_interrupts():
            return fn()
    except (typer.Exit, typer.Abort):
        raise
    except Terminated:
        typer.echo("terminated", err=True)
        raise typer.Exit(143) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:
        if _debug():
            raise
        from dtmem.errors import redact_text, user_error, write_crash_report

        message = user_error(exc)
        if message is not None:
            fail(message)
        report = write_crash_report(exc)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        what = redact_text(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
        fail(f"dtmem crashed ({what}); full traceback in {report}", code=1)
        raise  # unreachable: fail() raises


def announce(stage: str, config: Path, overrides: list[str]) -> None:
    """Say at once what starts and where its results go (before the heavy imports). Only a
    peek at the YAML: a file that cannot be read is left for the stage to report."""
    from dtmem.config.base import ConfigError, apply_overrides
    from dtmem.tracking import TrackingError, redact_uri, resolve_tracking_uri

    try:
        import yaml

        data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        data = apply_overrides(data if isinstance(data, dict) else {}, overrides)
        tracking = data.get("tracking") or {}
        uri = redact_uri(resolve_tracking_uri(tracking.get("uri")))
        experiment = tracking.get("experiment", "dtmem")
    except (
        OSError,
        UnicodeDecodeError,
        yaml.YAMLError,
        ConfigError,
        TrackingError,
        AttributeError,
    ):
        return
    typer.echo(
        f"dtmem {stage} {config}: results to MLflow {uri}, experiment {experiment!r}", err=True
    )


def _stage(
    module: str, config: Path, overrides: list[str] | None, *, verbose: bool = False
) -> None:
    """Runs ``<module>.main(config, overrides)`` behind the one-line error guard;
    ``verbose`` becomes the override ``verbose=true`` (configs that have the field)."""
    import importlib

    sets = list(overrides or []) + (["verbose=true"] if verbose else [])
    announce(module.rsplit(".", 1)[-1], config, sets)

    def go() -> None:
        importlib.import_module(module).main(config, sets)

    guarded(go)


@app.command()
def collect(config: ConfigArg, set_: SetOpt = None) -> None:
    """Collect offline episodes with parallel Ray actors into a Minari dataset."""
    _stage("pipelines.collect", config, set_)


@app.command()
def pretrain(config: ConfigArg, set_: SetOpt = None, verbose: VerboseOpt = False) -> None:
    """Pretrain DT-Mem (or a plain DT) data-parallel on Ray Train, tracked in MLflow."""
    _stage("pipelines.pretrain", config, set_, verbose=verbose)


@app.command()
def finetune(config: ConfigArg, set_: SetOpt = None, verbose: VerboseOpt = False) -> None:
    """Fine-tune a pretrained model on a held-out task: LoRA on the memory, full, or frozen."""
    _stage("pipelines.finetune", config, set_, verbose=verbose)


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


experiment_app = typer.Typer(
    help="A whole study from one file: a cached, resumable DAG of the stages (make run).",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")
ExperimentArg = Annotated[
    Path, typer.Argument(help="The experiment YAML (pipelines/experiments/).", show_default=False)
]


def _experiment(command: str, file: Path, overrides: list[str] | None, **kw: bool) -> None:
    """Runs ``pipelines.experiment.<command>_main`` behind the error guard; exits with its code."""
    import pipelines.experiment as entry

    main = getattr(entry, f"{command}_main")
    raise typer.Exit(guarded(lambda: main(file, list(overrides or []), **kw)))


@experiment_app.command("plan")
def experiment_plan(file: ExperimentArg, set_: SetOpt = None) -> None:
    """The DAG: nodes, edges, keys, what each node asks for, which are cached; runs nothing."""
    _experiment("plan", file, set_)


@experiment_app.command("run")
def experiment_run(
    file: ExperimentArg,
    set_: SetOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Ray's logs too.")] = False,
) -> None:
    """Run every node not cached; exit 1 listing each failed node."""
    _experiment("run", file, set_, verbose=verbose)


@experiment_app.command("status")
def experiment_status(file: ExperimentArg, set_: SetOpt = None) -> None:
    """Each node's state, MLflow run and wall time, from MLflow alone."""
    _experiment("status", file, set_)


@experiment_app.command("report")
def experiment_report(file: ExperimentArg, set_: SetOpt = None) -> None:
    """Rebuild the comparison report of the experiment's latest run from MLflow."""
    _experiment("report", file, set_)


@app.command()
def sweep(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Finish the sweep of this name (after a crash).")
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Sweep config fields (memory slots, LoRA rank/alpha/dropout, ...) with Ray Tune + ASHA."""
    announce("sweep", config, list(set_ or []))

    def go() -> None:
        from tuning.sweep import main as sweep_main

        sweep_main(config, list(set_ or []), resume, verbose)

    guarded(go)


@app.command("convert-rllib")
def convert_rllib(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="RLlib algorithm checkpoint directories.")
    ],
) -> None:
    """Make RLlib checkpoints usable by `dtmem collect`: writes each one's acting module as
    safetensors + JSON beside it. This UNPICKLES the checkpoints, which runs any code they
    hold: use it only on checkpoints you trust."""

    def go() -> None:
        from dtmem.collect.rllib_agent import export_checkpoint

        for checkpoint in checkpoints:
            typer.echo(f"exported {checkpoint} -> {export_checkpoint(checkpoint)}")

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
