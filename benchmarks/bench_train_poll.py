"""Ray Train's fixed cost per run: how often Train V2's controller polls its workers.

A 1-worker Ray Train pretrain of the smoke-size DT-Mem (``bench_train``'s model and
synthetic data, 20 steps, one checkpoint), with the controller polling every 2 s (Ray's
default) and every ``TRAIN_POLL_S`` (dtmem's, ``dtmem.training.launch.train_poll``), in
turn in one Ray session; the figure is the median over pairs of the stage's wall time,
dtmem's over Ray's default (below 1 is faster). Every multi-worker pretrain or fine-tune and
every sweep trial on Ray Train pays this start and end.

    python benchmarks/bench_train_poll.py [--pairs 4] [--steps 20]

Prints last: ``BENCH train_poll_wall_ratio``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_train import config, write_data  # this directory: benchmarks run as scripts

RAY_DEFAULT_S = "2.0"
ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop(ENV, None)
    from dtmem.ray_session import ray_session
    from dtmem.training.launch import TRAIN_POLL_S
    from pipelines.pretrain import run_pretrain

    run = argparse.Namespace(steps=args.steps, global_batch=32, log_every=10, cpus=2)
    walls: dict[str, list[float]] = {"ray": [], "dtmem": []}
    with tempfile.TemporaryDirectory() as d, ray_session(num_cpus=2):
        tmp = Path(d)
        write_data(tmp / "data", episodes=10, steps=100)
        for i in range(args.pairs):
            for arm in ("ray", "dtmem"):
                if arm == "ray":
                    os.environ[ENV] = RAY_DEFAULT_S  # set: train_poll leaves it alone
                t0 = time.perf_counter()
                run_pretrain(config(tmp, f"{arm}-{i}", 1, True, run))
                walls[arm].append(time.perf_counter() - t0)
                os.environ.pop(ENV, None)
                print(f"pair {i}, poll {arm}: {walls[arm][-1]:.1f} s", flush=True)
    ratios = [b / a for a, b in zip(walls["ray"], walls["dtmem"], strict=True)]
    print(
        f"\n1 Ray Train worker, {args.steps} steps; wall s, poll {RAY_DEFAULT_S} s: "
        + ", ".join(f"{w:.1f}" for w in walls["ray"])
        + f"; poll {TRAIN_POLL_S} s: "
        + ", ".join(f"{w:.1f}" for w in walls["dtmem"])
    )
    print(f"BENCH train_poll_wall_ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
