"""Env steps per second of evaluation, three ways, measured in one run, on Meta-World
reach-v3 and one Atari game:

    raw       the vector env alone in this process, random actions (one core: what one
              actor's envs could do with a free policy)
    pipeline  dtmem.evaluation.evaluate: N Ray actors with E envs each, every step one batched
              DTPolicy call for all E envs (frames encoded once). Reported end to end (from the
              model's upload: actor start, imports and env building included) and steady
              (steps over the busiest actor's chunk time: what a long evaluation approaches)
    naive     naive_rollout in this process: one env, the whole window recomputed every step

The model is the default small DT-Mem (3 layers, d=128, K=20, 1024 memory slots; the conv
encoder on Atari), untrained. Atari uses MDT's expert-return sampling (two model calls per
step), Meta-World a fixed target. Torch runs on one thread everywhere (actors set it too).

    python benchmarks/bench_evaluate.py            # about 2 minutes on 2 cores
    python benchmarks/bench_evaluate.py --quick    # a smoke test
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from dtmem.config.model import MemoryConfig, ModelConfig
from dtmem.envs import VectorEnv, step_randomly
from dtmem.evaluation import ModelPayload, Suite, TaskRequest, UnitResult, evaluate, make_env
from dtmem.model import DecisionTransformer, build_model
from dtmem.rollout import naive_rollout


@dataclass(frozen=True)
class Rate:
    env: str
    path: str
    layout: str
    steps: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.steps / self.seconds


def raw_rate(env: VectorEnv, steps: int, label: str) -> Rate:
    n = env.num_envs
    start = time.perf_counter()
    done = step_randomly(env, steps)
    return Rate(label, "raw", f"1 proc x {n} envs", done, time.perf_counter() - start)


def pipeline_rates(
    payload: ModelPayload, request: TaskRequest, actors: int, envs: int
) -> tuple[Rate, Rate]:
    busy: dict[int, float] = defaultdict(float)  # actor pid -> seconds in chunks

    def note(unit: UnitResult) -> None:
        busy[unit.pid] += unit.seconds

    res = evaluate(payload, [request], num_actors=actors, envs_per_actor=envs, on_result=note)
    layout = f"{res.actors} actors x {envs} envs"
    end_to_end = Rate(request.task, "pipeline", layout, res.env_steps, res.wall_s)
    steady = Rate(request.task, "pipeline*", layout, res.env_steps, max(busy.values()))
    return end_to_end, steady


def naive_rate(model, env: VectorEnv, target: float | None, steps: int, label: str) -> Rate:
    start = time.perf_counter()
    stats = naive_rollout(model, env, target, num_episodes=1, max_steps=steps)
    steps_done = sum(s.length for s in stats)
    return Rate(label, "naive", "1 proc x 1 env", steps_done, time.perf_counter() - start)


def small_model(atari: bool) -> tuple[DecisionTransformer, ModelConfig]:
    torch.manual_seed(0)
    if atari:
        cfg = ModelConfig(encoder="conv", action_kind="discrete", returns="atari_bins",
                          memory=MemoryConfig(slots=1024))  # fmt: skip
    else:
        cfg = ModelConfig(encoder="vector", return_scale=100.0, memory=MemoryConfig(slots=1024))
    return build_model(cfg), cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--task", default="reach-v3")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors (one CPU each)")
    parser.add_argument("--envs", type=int, default=8, help="envs per actor")
    parser.add_argument("--quick", action="store_true", help="a few steps of each")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)
    import ray

    ray.init(num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
    # (episodes, max_steps) of the pipeline run, steps of the raw env and of the naive loop
    meta_sizes, atari_sizes = ((4, 10), 20, 4), ((4, 6), 20, 3)
    if not args.quick:
        # the naive loop runs as long as a pipeline episode: its windows fill up to K too
        meta_sizes, atari_sizes = ((4 * args.envs, 100), 300, 100), ((2 * args.envs, 60), 300, 60)

    rates = []
    try:
        for atari, ((episodes, max_steps), raw_steps, naive_steps) in (
            (False, meta_sizes),
            (True, atari_sizes),
        ):
            suite: Suite = "atari" if atari else "metaworld"
            label = args.game if atari else args.task
            target = None if atari else 4000.0
            model, cfg = small_model(atari)
            env = make_env(suite, label, args.envs, goal_seed=0)
            single = make_env(suite, label, 1, goal_seed=0)
            rates.append(raw_rate(env, raw_steps, label))
            request = TaskRequest(suite, label, episodes, max_steps, target)
            payload = ModelPayload.of(model, cfg, None)
            rates.extend(pipeline_rates(payload, request, args.actors, args.envs))
            rates.append(naive_rate(model, single, target, naive_steps, label))
            env.close()
            single.close()
    finally:
        ray.shutdown()

    print(f"\n{'env':<10} {'path':<10} {'layout':<20} {'steps':>7} {'seconds':>8} "
          f"{'steps/s':>9} {'x naive':>8} {'/ raw':>7}")  # fmt: skip
    for r in rates:
        same = {x.path: x for x in rates if x.env == r.env}
        vs_naive = r.per_second / same["naive"].per_second
        vs_raw = r.per_second / same["raw"].per_second
        print(f"{r.env:<10} {r.path:<10} {r.layout:<20} {r.steps:>7} {r.seconds:>8.2f} "
              f"{r.per_second:>9.1f} {vs_naive:>8.2f} {vs_raw:>7.3f}")  # fmt: skip
    print(
        "pipeline: end to end (actor start included); pipeline*: steady, the busiest actor's time"
    )


if __name__ == "__main__":
    main()
