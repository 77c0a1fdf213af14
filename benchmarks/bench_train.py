"""Training throughput on Ray Train: 1 worker vs 2 workers at the same global batch.

Writes a Meta-World-sized synthetic dataset (39-dim states, 4-dim actions) into a temporary
directory, pretrains the smoke-size DT-Mem (2 layers, d=64, 64 memory slots, K=10) with
1 and then 2 CPU workers on one local Ray, and reads the loop's own metrics back from MLflow:
steps/s (median over logging intervals, the first one excluded: start-up) and the peak
resident memory of a worker. The CPUs are split evenly (1 worker x N CPUs, 2 x N/2), so each
setting uses the whole machine.

    python benchmarks/bench_train.py [--steps 120] [--global-batch 32] [--cpus 2]
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


def config(tmp: Path, workers: int, args: argparse.Namespace) -> PretrainConfig:
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
        scaling=ScalingConfig(num_workers=workers, cpus_per_worker=args.cpus / workers),
        checkpoint=CheckpointConfig(every_steps=args.steps, dir=str(tmp / "ckpt")),
        tracking=TrackingConfig(uri=f"sqlite:///{tmp}/mlflow.db", system_metrics=False),
        log_every=args.log_every,
        run_name=f"bench-{workers}w",
        progress=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from dtmem.tracking import attach
    from pipelines.pretrain import run_pretrain

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_data(tmp / "data")
        for workers in (1, 2):
            t0 = time.perf_counter()
            result = run_pretrain(config(tmp, workers, args))
            wall = time.perf_counter() - t0
            run = attach(f"sqlite:///{tmp}/mlflow.db", result.run_id)
            rates = [v for _, v in run.metric_history(M.PERF_STEPS_PER_S)][1:]
            tokens = [v for _, v in run.metric_history(M.PERF_TOKENS_PER_S)][1:]
            rss = max(v for _, v in run.metric_history(M.PERF_PEAK_RSS_MB))
            rows.append((workers, statistics.median(rates), statistics.median(tokens), rss, wall))
    ray.shutdown()

    print(
        f"\nglobal batch {args.global_batch} windows x K=10, {args.steps} steps, {args.cpus} CPUs"
    )
    print(f"{'workers':>7} {'steps/s':>8} {'tokens/s':>9} {'peak RSS/worker MB':>19} {'wall s':>7}")
    for workers, rate, tok, rss, wall in rows:
        print(f"{workers:>7} {rate:>8.2f} {tok:>9.0f} {rss:>19.0f} {wall:>7.1f}")
    print(f"speed-up 2 vs 1 worker: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
