"""Where a sweep trial's wall time goes: Ray/Tune start-up and scheduling vs the training loop.

Writes Meta-World-sized synthetic data under the smoke dataset ids into a temporary
directory, then runs ``tuning/smoke.yaml`` (the smoke-size DT-Mem: 2 layers, d=64, 64 slots,
K=10, batch 16) as a sequential sweep of ``--trials`` trials (seeds; FIFO, no early stops)
twice: trials that train in-process (``executor=local``) and trials that fit a one-worker
Ray Train ``TorchTrainer`` (``executor=train``). From the sweep's ``events.jsonl`` and each
trial's ``sweep_result.json`` it splits a trial's wall time into

- sched: from the previous trial's end (or the sweep's start) until the trial function runs
  (Tune's placement group, the trial actor's process and imports);
- setup: inside the trial, before training (stage checks, MLflow run and params,
  validation windows);
- train: the training call (local: the loop; train: ``TorchTrainer.fit``, i.e. the Train
  controller, worker group, torch.distributed set-up and the loop);
- loop: the training loop's own wall time (``run_worker``: optimiser steps, checkpoints,
  validation at each checkpoint), measured inside it;
- log: after training (model artifacts, loss curve, result files).

and reports overhead = trial wall - loop.

    python benchmarks/bench_sweep.py [--steps 200] [--trials 2] [--cpus 2] [--executors local,train]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from dtmem.config.base import load_config
from dtmem.config.sweep import SweepConfig
from dtmem.data.synthetic import write_metaworld_like
from dtmem.sweep.base import RESULT_FILE, RUNS_DIR, read_events
from dtmem.sweep.plan import resolve_base
from tuning.sweep import run_sweep

SMOKE = Path(__file__).resolve().parents[1] / "tuning" / "smoke.yaml"
TASKS = ("reach-v3", "push-v3", "pick-place-v3")


def write_data(root: Path, episodes: int = 10, steps: int = 150) -> None:
    """One Meta-World-shaped synthetic dataset per task (dtmem.data.synthetic)."""
    for i, task in enumerate(TASKS):
        write_metaworld_like(
            root, f"dtmem/smoke/{task}-expert-v0", task, episodes=episodes, steps=steps, seed=i
        )


def sweep_config(tmp: Path, executor: str, steps: int, trials: int) -> SweepConfig:
    every = max(1, steps // 4)
    overrides = [
        f"name=bench-{executor}",
        f"overrides=[scaling.num_workers=1, optim.max_steps={steps}, optim.warmup_steps=10, "
        f"checkpoint.every_steps={every}, log_every=10, data.episode_fraction=0.8, "
        f"data.root={tmp / 'data'}]",
        f"space={{seed: {{grid: {list(range(trials))}}}}}",
        "scheduler.kind=fifo",
        "evaluation=null",
        f"resources.executor={executor}",
        "resources.max_concurrent_trials=1",
        f"storage_dir={tmp / 'sweeps'}",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        "tracking.experiment=bench-sweep",
    ]
    cfg = load_config(SweepConfig, SMOKE, overrides)
    return cfg.model_copy(update={"base": str(resolve_base(cfg.base, SMOKE.parent))})


def breakdown(sweep_dir: Path) -> list[dict[str, float | str]]:
    """Per trial, in the order they ran: the phases of its wall time (seconds)."""
    events = read_events(sweep_dir)
    previous_end = next(e["t"] for e in events if e["event"] == "sweep_start")
    rows: list[dict[str, float | str]] = []
    for begin in (e for e in events if e["event"] == "trial_begin"):
        trial = begin["trial_id"]
        end = next(
            e["t"] for e in events if e["event"] == "trial_complete" and e["trial_id"] == trial
        )
        timings = json.loads((sweep_dir / RUNS_DIR / trial / RESULT_FILE).read_text())["timings"]
        wall = end - previous_end
        rows.append(
            {
                "trial": trial,
                "wall": wall,
                "sched": begin["t"] - previous_end,
                "setup": timings["setup_s"],
                "train": timings["train_s"],
                "loop": timings["loop_s"],
                "log": timings["log_s"],
                "overhead": wall - timings["loop_s"],
            }
        )
        previous_end = end
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps per trial")
    parser.add_argument("--trials", type=int, default=2, help="trials per executor")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--executors", default="local,train", help="local and/or train")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        write_data(tmp / "data")
        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        print(f"ray.init: {time.perf_counter() - t0:.1f} s ({args.cpus} CPUs)")
        try:
            for executor in args.executors.split(","):
                result = run_sweep(sweep_config(tmp, executor, args.steps, args.trials))
                rows = breakdown(result.sweep_dir)
                print(
                    f"\nexecutor={executor}: {len(rows)} trials of {args.steps} steps, "
                    f"sweep wall {result.wall_s:.1f} s"
                )
                keys = ["wall", "sched", "setup", "train", "loop", "log", "overhead"]
                print(f"{'trial':<14}" + "".join(f"{k:>10}" for k in keys))
                for r in rows:
                    print(f"{r['trial']!s:<14}" + "".join(f"{float(r[k]):>10.1f}" for k in keys))
                median = {k: statistics.median(float(r[k]) for r in rows) for k in keys}
                print(f"{'median':<14}" + "".join(f"{median[k]:>10.1f}" for k in keys))
                print(
                    f"loop = {median['loop'] / median['wall']:.0%} of a trial's wall time; "
                    f"{median['overhead']:.1f} s per trial is Ray/Tune/Train start-up, "
                    "scheduling, set-up and logging"
                )
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
