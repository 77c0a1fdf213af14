"""Windows per second from the data sampler, on synthetic datasets written to a temp dir.

Meta-World-like: vector states (39 float32), 4-dim actions, 500-step episodes, several tasks,
normalised states, K = 20. Atari-like: 84x84 uint8 frames stacked x4, 18 discrete actions,
MDT return bins, K = 28. Also prints the cost of writing the datasets, of building the index
and of the first epoch's plan.

    python benchmarks/bench_sampler.py            # about a minute on 2 cores
    python benchmarks/bench_sampler.py --quick    # a few seconds

The last lines are ``BENCH sampler_atari_windows_per_s`` and ``BENCH sampler_windows_per_s``
(the Meta-World-like figure).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from dtmem.config.data import DataConfig
from dtmem.data.episodes import Episode
from dtmem.data.minari_io import write_dataset
from dtmem.data.sampler import build_sampler


def write_metaworld_like(root: Path, tasks: int, episodes: int, steps: int) -> list[str]:
    rng = np.random.default_rng(0)
    ids = []
    for t in range(tasks):
        eps = [
            Episode(
                observations=rng.standard_normal((steps + 1, 39)).astype(np.float32),
                actions=rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
                rewards=rng.uniform(0, 10, steps).astype(np.float32),
                terminations=np.zeros(steps, bool),
                truncations=np.r_[np.zeros(steps - 1, bool), True],
                infos={"success": rng.integers(0, 2, steps + 1)},
            )
            for _ in range(episodes)
        ]
        dataset_id = f"bench/mw/task{t}-v0"
        write_dataset(
            dataset_id,
            eps,
            observation_space=gym.spaces.Box(-np.inf, np.inf, (39,), np.float32),
            action_space=gym.spaces.Box(-1, 1, (4,), np.float32),
            env_id=f"Meta-World/task{t}-v3",
            root=root,
        )
        ids.append(dataset_id)
    return ids


def write_atari_like(root: Path, games: int, episodes: int, steps: int) -> list[str]:
    rng = np.random.default_rng(1)
    ids = []
    for g in range(games):
        dataset_id = f"bench/atari/game{g}-v0"
        lengths = rng.integers(steps // 2, steps * 3 // 2, episodes)
        eps = (
            Episode(
                observations=rng.integers(0, 256, (T + 1, 84, 84), dtype=np.uint8),
                actions=rng.integers(0, 18, T),
                rewards=rng.choice([0.0, 0.0, 0.0, 1.0, -1.0], T).astype(np.float32),
                terminations=np.r_[np.zeros(T - 1, bool), True],
                truncations=np.zeros(T, bool),
            )
            for T in lengths
        )
        write_dataset(
            dataset_id,
            eps,
            observation_space=gym.spaces.Box(0, 255, (84, 84), np.uint8),
            action_space=gym.spaces.Discrete(18),
            env_id=f"ALE/Game{g}-v5",
            root=root,
        )
        ids.append(dataset_id)
    return ids


def measure(cfg: DataConfig, batches: int, label: str) -> float:
    t0 = time.perf_counter()
    sampler = build_sampler(cfg)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_epoch = sampler.batches_in_epoch(0)
    planned = time.perf_counter() - t0
    it = iter(sampler)
    next(it)  # warm up (first episode reads)
    n = batches  # may run past the epoch: the iterator goes on with the next
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    seconds = time.perf_counter() - t0
    windows = n * cfg.batch_size
    stats = sampler.cache_stats
    print(
        f"{label}: {windows / seconds:,.0f} windows/s ({n} batches of {cfg.batch_size}, "
        f"K={cfg.context}); index {sampler.index_seconds * 1e3:.1f} ms, build incl. state "
        f"stats {built:.2f} s, epoch plan {planned * 1e3:.0f} ms for {per_epoch} batches; "
        f"cache peak {stats['peak_bytes'] / 2**20:.0f} MB, {stats['loads']} episode loads"
    )
    return windows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small datasets, few batches")
    args = parser.parse_args()
    mw = (4, 10, 500) if args.quick else (10, 40, 500)
    atari = (1, 12, 400) if args.quick else (2, 15, 1000)
    batches = 20 if args.quick else 200

    with tempfile.TemporaryDirectory(prefix="dtmem-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        mw_ids = write_metaworld_like(root, *mw)
        steps = mw[0] * mw[1] * mw[2]
        print(
            f"wrote Meta-World-like: {mw[0]} tasks x {mw[1]} episodes x {mw[2]} steps "
            f"({steps:,} steps) in {time.perf_counter() - t0:.1f} s"
        )
        t0 = time.perf_counter()
        atari_ids = write_atari_like(root, *atari)
        print(
            f"wrote Atari-like: {atari[0]} games x {atari[1]} episodes x ~{atari[2]} frames "
            f"in {time.perf_counter() - t0:.1f} s"
        )

        mw_rate = measure(
            DataConfig(
                datasets=[{"id": i} for i in mw_ids],
                root=str(root),
                context=20,
                batch_size=64,
                return_scale=1000.0,
                normalize_states=True,
            ),
            batches,
            "Meta-World-like",
        )
        atari_rate = measure(
            DataConfig(
                datasets=[{"id": i} for i in atari_ids],
                root=str(root),
                context=28,
                batch_size=64,
                returns="atari_bins",
                frame_stack=4,
            ),
            batches // 4,
            "Atari-like",
        )
    print(f"BENCH sampler_atari_windows_per_s {atari_rate:.0f}")
    print(f"BENCH sampler_windows_per_s {mw_rate:.0f}")


if __name__ == "__main__":
    main()
