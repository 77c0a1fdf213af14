"""Collection throughput (env steps/s): ``dtmem collect`` with 2 Ray actors against 1, as the
median of pairs measured in turn in one run; Meta-World experts (noise 0.1, epsilon 0.05)
on two tasks, full 500-step episodes. A plain single-process loop gives the context.

The pipeline's rate is env steps over the whole ``run_collect`` call (actors started, envs
built in them, episodes recorded and written to a temp dir, datasets committed, the MLflow
run and the summary), what a user waits for. The plain loop is ``record_episodes`` on one
env in this process, no Ray, nothing written. Ray is started once beforehand, as a cluster
would be. On a machine shared with other work, ``collect_machine_2_vs_1`` says how much a
second process can add at all right now: the plain loop in 2 warm processes at once against
1, measured in each pair's turn, the same episodes split evenly (each process half of every
task's; one task per process would measure the tasks' unequal lengths, not the machine).
Before the figures, where the calls' wall time went (``CollectResult.phases``, medians over
pairs; per-actor phases are means over actors). Figures last, one per line:
``BENCH <name> <value>``.

    python benchmarks/bench_collect.py            # about 2 minutes on 2 cores
    python benchmarks/bench_collect.py --quick    # fewer episodes, one pair
    python benchmarks/bench_collect.py --config pipelines/configs/metaworld-laptop/collect.yaml --repeats 2

``--config``: the pairs collect what a collect config asks for (its tasks, episodes, policy,
envs and chunks; its root and tracking go to a temp dir), where a real collection's size
shows how much of the call the fixed costs are; that figure is ``collect_2_vs_1_config``,
without the plain loop.
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rich.console import Console

from dtmem.collect.actors import record_episodes
from dtmem.collect.policies import make_policy, plan_episodes
from dtmem.config.base import load_config
from dtmem.config.collect import CollectConfig, PolicyConfig
from dtmem.config.tracking import TrackingConfig
from dtmem.envs import make_env
from dtmem.ray_session import ray_session

TASKS = ("reach-v3", "push-v3")
spawn = multiprocessing.get_context("spawn")


def plain_loop(cfg: CollectConfig) -> float:
    """Steps/s of every task's episodes in one process, env building included."""
    steps, start = 0, time.perf_counter()
    for task in cfg.tasks:
        env = make_env("metaworld", task, 1, seed=cfg.seed)
        policy = make_policy(cfg.policy, env.spec, 1, task)
        plans = plan_episodes(
            cfg.seed, task, range(cfg.episodes_per_task), total=cfg.episodes_per_task
        )
        got = record_episodes(env, policy, plans, max_steps=cfg.max_steps)
        env.close()
        steps += sum(r.episode.num_steps for r in got)
    return steps / (time.perf_counter() - start)


def _record(indices: range, total: int) -> int:
    """Env steps of expert episodes ``indices`` (of ``total``) of every task, one task after
    the other, its env built first (in a worker process)."""
    cfg = PolicyConfig(kind="expert", noise_std=0.1, epsilon=0.05)
    steps = 0
    for task in TASKS:
        env = make_env("metaworld", task, 1)
        policy = make_policy(cfg, env.spec, 1, task)
        got = record_episodes(env, policy, plan_episodes(0, task, indices, total=total))
        env.close()
        steps += sum(r.episode.num_steps for r in got)
    return steps


def machine_2_vs_1(pool: ProcessPoolExecutor, episodes: int) -> float:
    """What this machine allows right now: the plain loop in 2 processes at once against 1
    (warm processes; each of the two runs half of every task's episodes), steps/s ratio."""
    t0 = time.perf_counter()
    one = pool.submit(_record, range(episodes), episodes).result()
    t1 = time.perf_counter()
    half = episodes // 2
    parts = [range(half), range(half, episodes)]
    two = sum(f.result() for f in [pool.submit(_record, r, episodes) for r in parts])
    t2 = time.perf_counter()
    return (two / (t2 - t1)) / (one / (t1 - t0))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--episodes", type=int, default=8, help="episodes per task")
    parser.add_argument("--repeats", type=int, default=5, help="pairs measured in turn")
    parser.add_argument("--quick", action="store_true", help="2 episodes per task, one pair")
    parser.add_argument("--config", type=Path, help="measure this collect config instead")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    episodes, repeats = (2, 1) if args.quick else (args.episodes, args.repeats)

    from pipelines.collect import run_collect

    with tempfile.TemporaryDirectory() as tmp:
        tracking = {
            "uri": f"sqlite:///{Path(tmp) / 'mlflow.db'}",
            "experiment": "bench",
            "system_metrics": False,
        }
        if args.config is not None:
            base = load_config(CollectConfig, args.config, [])
            base = base.model_copy(
                update={"overwrite": True, "tracking": TrackingConfig(**tracking)}
            )
            plain = math.nan  # not measured: as long as the 1-actor call
        else:
            base = CollectConfig.model_validate(
                {
                    "suite": "metaworld",
                    "tasks": list(TASKS),
                    "episodes_per_task": episodes,
                    "policy": {"kind": "expert", "noise_std": 0.1, "epsilon": 0.05},
                    "dataset": {"namespace": "bench/collect", "name": "{task}"},
                    "overwrite": True,
                    "tracking": tracking,
                }
            )
            plain = plain_loop(base)
        rates: dict[int, list[float]] = {1: [], 2: []}
        phases: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        machine: list[float] = []
        with ray_session(num_cpus=2), ProcessPoolExecutor(2, mp_context=spawn) as workers:
            for f in [workers.submit(_record, range(1), 1) for _ in range(2)]:  # warm: imports
                f.result()
            # warm-up: the MLflow store's tables are created by the first run, not a pair's
            tiny = {"episodes_per_task": 1, "max_steps": 5, "root": str(Path(tmp) / "warm")}
            run_collect(base.model_copy(update=tiny), console=Console(file=io.StringIO()))
            for i in range(repeats):
                machine.append(machine_2_vs_1(workers, max(2, episodes // 2)))
                for actors in (1, 2):
                    cfg = base.model_copy(
                        update={"num_actors": actors, "root": str(Path(tmp) / f"ds{i}-{actors}")}
                    )
                    t0 = time.perf_counter()
                    result = run_collect(cfg, console=Console(file=io.StringIO()))
                    wall = time.perf_counter() - t0
                    rates[actors].append(result.env_steps / wall)
                    phases[actors].append(result.phases)
                    print(f"pair {i}, {actors} actor(s): {result.env_steps} steps in {wall:.1f} s "
                          f"= {result.env_steps / wall:.0f} steps/s (collection phase "
                          f"{result.env_steps_per_s:.0f})")  # fmt: skip
    ratios = [two / one for one, two in zip(rates[1], rates[2], strict=True)]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"{len(base.tasks)} tasks x {base.episodes_per_task} episodes x up to "
          f"{base.max_steps or 500} steps; plain loop in one process {plain:.0f} steps/s")  # fmt: skip
    for actors, runs in phases.items():
        names = list(runs[0])
        print(f"phases, {actors} actor(s), s: "
              + ", ".join(f"{k} {statistics.median(r[k] for r in runs):.2f}" for k in names))  # fmt: skip
    print("pairs (2 actors / 1): " + ", ".join(f"{r:.2f}" for r in ratios))
    print("the machine itself, plain loops in 2 processes / 1: "
          + ", ".join(f"{r:.2f}" for r in machine))  # fmt: skip
    print(f"BENCH collect_machine_2_vs_1 {statistics.median(machine):.3f}")
    suffix = "_config" if args.config is not None else ""
    print(f"BENCH collect_2_vs_1{suffix} {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
