"""Training throughput: one worker in this process (the default for one worker), the same
worker on Ray Train (what one worker cost before), and 2 Ray Train workers, at the same
global batch.

Writes a Meta-World-sized synthetic dataset (39-dim states, 4-dim actions) into a temporary
directory, pretrains the smoke-size DT-Mem (2 layers, d=64, 64 memory slots, K=10) in each
setting, and reads the loop's own metrics back from MLflow: steps/s (median over logging
intervals, the first one excluded: start-up) and the peak resident memory of a worker, and
the stage's wall time. The CPUs are split evenly (1 worker x N CPUs, 2 x N/2), so each
setting uses the whole machine. Ray is entered once, through ``ray_session``.

    python benchmarks/bench_train.py [--steps 120] [--global-batch 32] [--cpus 2]

Prints last, one per line: ``BENCH train_steps_per_s_inprocess``, ``..._ray_1w``,
``..._ray_2w``, ``BENCH train_inprocess_vs_ray_1w`` and ``BENCH train_wall_s_inprocess`` /
``train_wall_s_ray_1w`` (the whole stage, start-up included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from dtmem import metrics as M
from dtmem.config.data import DataConfig, DatasetSpec
from dtmem.config.model import MemoryConfig, ModelConfig
from dtmem.config.tracking import TrackingConfig
from dtmem.config.train import CheckpointConfig, OptimConfig, PretrainConfig, ScalingConfig
from dtmem.data.synthetic import write_metaworld_like

TASKS = ("reach-v3", "push-v3", "pick-place-v3")


def write_data(root: Path, episodes: int = 30, steps: int = 150) -> None:
    """One Meta-World-shaped synthetic dataset per task (dtmem.data.synthetic)."""
    for i, task in enumerate(TASKS):
        write_metaworld_like(root, f"bench/{task}-v0", task, episodes=episodes, steps=steps, seed=i)


def config(
    tmp: Path, name: str, workers: int, ray: bool, args: argparse.Namespace
) -> PretrainConfig:
    return PretrainConfig(
        model=ModelConfig(
            obs_dim=39,
            act_dim=4,
            context=10,
            n_layer=2,
            n_head=2,
            d_model=64,
            dropout=0.1,
            return_scale=100.0,
            memory=MemoryConfig(slots=64, heads=2),
        ),
        data=DataConfig(
            datasets=tuple(DatasetSpec(id=f"bench/{t}-v0") for t in TASKS),
            root=str(tmp / "data"),
            context=10,
            batch_size=args.global_batch // workers,
            return_scale=100.0,
            normalize_states=True,
        ),
        optim=OptimConfig(lr=1e-3, warmup_steps=10, max_steps=args.steps),
        scaling=ScalingConfig(num_workers=workers, cpus_per_worker=args.cpus / workers, ray=ray),
        checkpoint=CheckpointConfig(every_steps=args.steps, dir=str(tmp / "ckpt")),
        tracking=TrackingConfig(uri=f"sqlite:///{tmp}/mlflow.db", system_metrics=False),
        log_every=args.log_every,
        run_name=f"bench-{name}",
        progress=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from dtmem.ray_session import ray_session
    from dtmem.tracking import attach
    from pipelines.pretrain import run_pretrain

    settings = (("inprocess", 1, False), ("ray_1w", 1, True), ("ray_2w", 2, True))
    rows = []
    with tempfile.TemporaryDirectory() as d, ray_session(num_cpus=args.cpus):
        tmp = Path(d)
        write_data(tmp / "data")
        for name, workers, ray in settings:
            t0 = time.perf_counter()
            result = run_pretrain(config(tmp, name, workers, ray, args))
            wall = time.perf_counter() - t0
            run = attach(f"sqlite:///{tmp}/mlflow.db", result.run_id)
            rates = [v for _, v in run.metric_history(M.PERF_STEPS_PER_S)][1:]
            tokens = [v for _, v in run.metric_history(M.PERF_TOKENS_PER_S)][1:]
            rss = max(v for _, v in run.metric_history(M.PERF_PEAK_RSS_MB))
            rows.append((name, statistics.median(rates), statistics.median(tokens), rss, wall))

    print(
        f"\nglobal batch {args.global_batch} windows x K=10, {args.steps} steps, {args.cpus} CPUs"
    )
    print(f"{'setting':>9} {'steps/s':>8} {'tokens/s':>9} {'peak RSS/worker MB':>19} {'wall s':>7}")
    for name, rate, tok, rss, wall in rows:
        print(f"{name:>9} {rate:>8.2f} {tok:>9.0f} {rss:>19.0f} {wall:>7.1f}")
    by = {r[0]: r for r in rows}
    for name, rate, *_ in rows:
        print(f"BENCH train_steps_per_s_{name} {rate:.3f}")
    print(f"BENCH train_wall_s_inprocess {by['inprocess'][4]:.1f}")
    print(f"BENCH train_wall_s_ray_1w {by['ray_1w'][4]:.1f}")
    print(f"BENCH train_inprocess_vs_ray_1w {by['inprocess'][1] / by['ray_1w'][1]:.3f}")


if __name__ == "__main__":
    main()
