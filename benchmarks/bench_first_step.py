"""Time to the first training step of ``dtmem pretrain pipelines/configs/smoke/pretrain.yaml``.

Writes the smoke datasets' ids with Meta-World-shaped synthetic episodes into a temporary
dataset root, then runs the CLI in a subprocess, as a user would, with the smoke config as it
is (only where data, checkpoints and MLflow go are redirected into the temporary directory,
``log_every=1`` and a short run). The time to the first step is the MLflow timestamp of
``train/loss`` at step 1 (logged right after the first optimiser step) minus the moment the
subprocess was started: interpreter start, imports, checks, Ray (if any), model and data set
up and the first step itself.

The MLflow store is created before the timed runs (a user's first run also creates it once).
``--baseline DIR`` (a checkout of other code, e.g. ``git archive <commit> | tar -x -C DIR``)
measures that code too, in turn with this one (its own smoke config, on PYTHONPATH), and
prints ``BENCH first_step_seconds_baseline`` and the ratio.

    python benchmarks/bench_first_step.py [--repeats 1] [--steps 20] [--baseline DIR]

Prints last ``BENCH first_step_seconds <median over repeats>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "pipelines" / "configs" / "smoke" / "pretrain.yaml"
TASKS = ("reach-v3", "push-v3", "pick-place-v3")


def first_step_seconds(tmp: Path, steps: int, name: str, code: Path | None = None) -> float:
    """One ``dtmem pretrain`` run in a subprocess (of the code in ``code``, default this
    checkout); seconds from its start to step 1."""
    from dtmem import metrics as M
    from dtmem.config.tracking import TrackingConfig
    from dtmem.tracking import attach, find_run

    uri = f"sqlite:///{tmp}/mlflow.db"
    smoke = SMOKE if code is None else code / SMOKE.relative_to(REPO)
    cmd = [
        str(Path(sys.executable).parent / "dtmem"),
        "pretrain",
        str(smoke),
        *("--set", f"data.root={tmp / 'data'}"),
        *("--set", f"tracking.uri={uri}"),
        *("--set", f"checkpoint.dir={tmp / 'ckpt'}"),
        *("--set", f"run_name={name}"),
        *("--set", f"optim.max_steps={steps}"),
        *("--set", "log_every=1"),
        *("--set", "registry.name=null"),
    ]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"dtmem pretrain failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cfg = TrackingConfig(uri=uri, experiment="dtmem-smoke")
    run_id = find_run(cfg, name, "pretrain")
    if run_id is None:
        raise SystemExit(f"no MLflow run named {name}")
    history = attach(uri, run_id).client.get_metric_history(run_id, M.TRAIN_LOSS)
    first = min(history, key=lambda m: m.step)
    if first.step != 1:
        raise SystemExit(f"the first logged step is {first.step}, not 1")
    return first.timestamp / 1000.0 - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--baseline", type=Path, default=None, help="other code to compare")
    args = parser.parse_args()

    from dtmem.data.synthetic import write_metaworld_like
    from dtmem.tracking import ensure_experiment

    times: list[float] = []
    base: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for i, task in enumerate(TASKS):
            dataset_id = f"dtmem/smoke/{task}-expert-v0"
            write_metaworld_like(tmp / "data", dataset_id, task, episodes=8, steps=60, seed=i)
        ensure_experiment(f"sqlite:///{tmp}/mlflow.db", "dtmem-smoke")
        for r in range(args.repeats):
            if args.baseline is not None:
                seconds = first_step_seconds(tmp, args.steps, f"baseline-{r}", args.baseline)
                print(f"repeat {r}: baseline {seconds:.1f} s to the first step", flush=True)
                base.append(seconds)
            seconds = first_step_seconds(tmp, args.steps, f"first-step-{r}")
            print(f"repeat {r}: {seconds:.1f} s to the first step", flush=True)
            times.append(seconds)
    if base:
        ratios = [t / b for t, b in zip(times, base, strict=True)]
        print(f"BENCH first_step_seconds_baseline {statistics.median(base):.2f}")
        print(f"BENCH first_step_vs_baseline {statistics.median(ratios):.3f}")
    print(f"BENCH first_step_seconds {statistics.median(times):.2f}")


if __name__ == "__main__":
    main()
