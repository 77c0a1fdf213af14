"""Collection throughput (env steps/s): a plain single-process loop against ``dtmem collect``
with 1 and 2 Ray actors, Meta-World experts (noise 0.1, epsilon 0.05), full 500-step episodes.

The plain loop is ``record_episodes`` on one env in this process, no Ray, nothing written;
its steady rate excludes building the env, its total rate includes it. The pipeline's rate
is the collection phase of ``collect`` (actors started, envs built in them, episodes
recorded and written to a temp dir, datasets committed); its wall time also counts the
MLflow run and the summary. Ray is started once beforehand, as a cluster would be.

    python benchmarks/bench_collect.py            # about a minute on 2 cores
    python benchmarks/bench_collect.py --quick    # fewer episodes
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console

from dtmem.collect.actors import record_episodes
from dtmem.collect.policies import make_policy, plan_episodes
from dtmem.config.collect import CollectConfig
from dtmem.envs.metaworld import make_metaworld_env

TASKS = ("reach-v3", "push-v3")


def plain_loop(cfg: CollectConfig) -> tuple[float, float, int]:
    """(steady steps/s, total steps/s, steps) for every task's episodes in one process."""
    steps, record_s, total_s = 0, 0.0, 0.0
    for task in cfg.tasks:
        t0 = time.perf_counter()
        env = make_metaworld_env(task, 1, seed=cfg.seed)
        policy = make_policy(cfg.policy, env.spec, 1, task)
        t1 = time.perf_counter()
        plans = plan_episodes(
            cfg.seed, task, range(cfg.episodes_per_task), total=cfg.episodes_per_task
        )
        got = record_episodes(env, policy, plans, max_steps=cfg.max_steps)
        t2 = time.perf_counter()
        env.close()
        steps += sum(r.episode.num_steps for r in got)
        record_s += t2 - t1
        total_s += t2 - t0
    return steps / record_s, steps / total_s, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 episodes per task, not 10")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    episodes = 4 if args.quick else 10

    import ray

    from pipelines.collect import run_collect

    with tempfile.TemporaryDirectory() as tmp:
        base = CollectConfig.model_validate(
            {
                "suite": "metaworld",
                "tasks": list(TASKS),
                "episodes_per_task": episodes,
                "policy": {"kind": "expert", "noise_std": 0.1, "epsilon": 0.05},
                "dataset": {"namespace": "bench/collect", "name": "{task}"},
                "tracking": {
                    "uri": f"sqlite:///{Path(tmp) / 'mlflow.db'}",
                    "experiment": "bench",
                    "system_metrics": False,
                },
            }
        )
        steady, total, steps = plain_loop(base)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
              f"{len(TASKS)} tasks x {episodes} episodes x 500 steps = {steps} env steps")  # fmt: skip
        print(
            f"plain loop, 1 process     : {steady:7.0f} steps/s steady, {total:7.0f} with env build"
        )

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            for actors in (1, 2):
                cfg = base.model_copy(
                    update={"num_actors": actors, "root": str(Path(tmp) / f"ds{actors}")}
                )
                t0 = time.perf_counter()
                report = run_collect(cfg, console=Console(file=io.StringIO()))
                wall = time.perf_counter() - t0
                print(
                    f"dtmem collect, {actors} actor{'s' if actors > 1 else ' '}: "
                    f"{report.env_steps_per_s:7.0f} steps/s in the collection phase "
                    f"({report.seconds:.1f} s), {report.env_steps / wall:7.0f} over the whole "
                    f"call ({wall:.1f} s)"
                )
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
