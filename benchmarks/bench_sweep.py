"""Where a sweep trial's wall time goes: the training loop vs everything else (Ray/Tune
scheduling, the trial's process and imports, set-up, logging).

Writes Meta-World-sized synthetic data under the smoke dataset ids into a temporary
directory, then runs ``tuning/smoke.yaml`` (the smoke-size DT-Mem: 2 layers, d=64, 64 slots,
K=10, batch 16) as a sequential sweep of ``--trials`` trials (seeds; FIFO, no early stops),
one Ray for everything (``dtmem.ray_session``). From the sweep's ``events.jsonl`` and each
trial's ``sweep_result.json`` it splits each trial's wall time into

- sched: from the previous trial's end (or the sweep's start) until the trial function runs
  (Tune's placement group, the trial actor's process and imports, or a reused actor's reset);
- setup: inside the trial, before training (stage checks, MLflow run and params,
  validation windows);
- train: the training call (in-process: the loop; ``--executor train``: ``TorchTrainer.fit``,
  i.e. the Train controller, worker group, torch.distributed set-up and the loop);
- loop: the training loop's own wall time (``run_worker``: optimiser steps, checkpoints,
  validation at each checkpoint), measured inside it;
- log: after training (the logged model, loss curve, result files).

``sweep_overhead_share`` = (wall - loop) / wall of a trial, the median over the trials: what
a typical trial of a sweep spends not training. The first trial of each Tune actor also
starts the process and imports torch and MLflow; that cold start is printed apart, and with
it the share over all the trials run (``sweep_overhead_share_all``), which falls as a sweep
has more trials per actor.

    python benchmarks/bench_sweep.py [--steps 150] [--trials 3] [--cpus 2]
        [--executor local|train] [--no-reuse]

The defaults are what ``dtmem sweep`` does with one worker (in-process trials, one reused
actor); ``--no-reuse`` gives every trial a fresh process, ``--executor train`` a fresh Ray
Train ``TorchTrainer`` (the sweep's path before in-process trials, and today's for several
workers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from dtmem.config.base import load_config
from dtmem.config.sweep import SweepConfig
from dtmem.data.synthetic import write_metaworld_like
from dtmem.sweep.base import RESULT_FILE, RUNS_DIR, read_events
from dtmem.sweep.plan import resolve_base

SMOKE = Path(__file__).resolve().parents[1] / "tuning" / "smoke.yaml"
TASKS = ("reach-v3", "push-v3", "pick-place-v3")
PHASES = ("wall", "sched", "setup", "train", "loop", "log", "overhead")


def write_data(root: Path, episodes: int = 10, steps: int = 150) -> None:
    """One Meta-World-shaped synthetic dataset per task (dtmem.data.synthetic)."""
    for i, task in enumerate(TASKS):
        write_metaworld_like(
            root, f"dtmem/smoke/{task}-expert-v0", task, episodes=episodes, steps=steps, seed=i
        )


def sweep_config(tmp: Path, executor: str, steps: int, trials: int, reuse: bool) -> SweepConfig:
    every = max(1, steps // 4)
    overrides = [
        f"name=bench-{executor}-{'reuse' if reuse else 'fresh'}",
        f"overrides=[scaling.num_workers=1, optim.max_steps={steps}, optim.warmup_steps=10, "
        f"checkpoint.every_steps={every}, log_every=10, data.episode_fraction=0.8, "
        f"data.root={tmp / 'data'}]",
        f"space={{seed: {{grid: {list(range(trials))}}}}}",
        "scheduler.kind=fifo",
        "evaluation=null",
        f"resources.executor={executor}",
        "resources.max_concurrent_trials=1",
        f"resources.reuse_actors={str(reuse).lower()}",
        f"storage_dir={tmp / 'sweeps'}",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        "tracking.experiment=bench-sweep",
    ]
    cfg = load_config(SweepConfig, SMOKE, overrides)
    return cfg.model_copy(update={"base": str(resolve_base(cfg.base, SMOKE.parent))})


def breakdown(sweep_dir: Path) -> list[dict[str, float]]:
    """Per trial, in the order they ran: the phases of its wall time (seconds)."""
    events = read_events(sweep_dir)
    previous_end = next(e["t"] for e in events if e["event"] == "sweep_start")
    rows: list[dict[str, float]] = []
    for begin in (e for e in events if e["event"] == "trial_begin"):
        trial = begin["trial_id"]
        end = next(
            e["t"] for e in events if e["event"] == "trial_complete" and e["trial_id"] == trial
        )
        timings = json.loads((sweep_dir / RUNS_DIR / trial / RESULT_FILE).read_text())["timings"]
        wall = end - previous_end
        rows.append(
            {
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
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps per trial")
    parser.add_argument("--trials", type=int, default=3, help="trials, one after another")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--executor", choices=("local", "train"), default="local")
    parser.add_argument("--no-reuse", action="store_true", help="a fresh process per trial")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from dtmem.ray_session import ray_session
    from tuning.sweep import run_sweep

    with tempfile.TemporaryDirectory() as name, ray_session(num_cpus=args.cpus):
        tmp = Path(name)
        write_data(tmp / "data")
        cfg = sweep_config(tmp, args.executor, args.steps, args.trials, not args.no_reuse)
        result = run_sweep(cfg)
        rows = breakdown(result.sweep_dir)

    print(
        f"\nexecutor={args.executor}, reuse={not args.no_reuse}: {len(rows)} trials of "
        f"{args.steps} steps, one at a time on {args.cpus} CPUs; sweep wall {result.wall_s:.1f} s"
    )
    print(f"{'trial':<8}" + "".join(f"{k:>10}" for k in PHASES) + f"{'share':>10}")
    for i, r in enumerate(rows):
        share = r["overhead"] / r["wall"]
        print(f"{i:<8}" + "".join(f"{r[k]:>10.1f}" for k in PHASES) + f"{share:>10.0%}")
    total = {k: sum(r[k] for r in rows) for k in PHASES}
    share_all = total["overhead"] / total["wall"]
    shares = [r["overhead"] / r["wall"] for r in rows]
    print(
        f"not training: {statistics.median(shares):.0%} of a trial's wall time (median); "
        f"the first trial, which starts the process, {shares[0]:.0%}; all {len(rows)} trials "
        f"together {share_all:.0%} ({total['overhead']:.1f} of {total['wall']:.1f} s)"
    )
    print(f"BENCH sweep_trial_seconds {statistics.median(r['wall'] for r in rows):.2f}")
    print(f"BENCH sweep_overhead_share_all {share_all:.3f}")
    print(f"BENCH sweep_overhead_share {statistics.median(shares):.3f}")


if __name__ == "__main__":
    main()
