"""Env steps per second of evaluation, three ways, on Meta-World reach-v3 and one Atari game:

    raw      the vector env alone, random actions (the ceiling)
    batched  rollout(DTPolicy(model, env), ...): all envs in one model call, frames encoded once,
             the last block run only at each window's newest step (``forward_step``)
    naive    naive_rollout(model, one env): the whole window recomputed every step

The model is the default small DT-Mem (3 layers, d=128, K=20, 1024 memory slots; the conv
encoder on Atari), untrained. Atari uses MDT's expert-return sampling (two model calls per
step), Meta-World a fixed target. Torch runs on one thread: on a shared 2-core machine more
intra-op threads only add contention (measured 100x slower per op under load).

    python benchmarks/bench_rollout.py             # about 2 minutes on 2 cores
    python benchmarks/bench_rollout.py --quick     # a few seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from dtmem.config.model import MemoryConfig, ModelConfig
from dtmem.dt_policy import DTPolicy
from dtmem.envs import VectorEnv, step_randomly
from dtmem.envs.atari import make_atari_env
from dtmem.envs.metaworld import make_metaworld_env
from dtmem.model import build_model
from dtmem.naive_rollout import naive_rollout
from dtmem.rollout import rollout


@dataclass(frozen=True)
class Rate:
    env: str
    path: str
    num_envs: int
    steps: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.steps / self.seconds


def raw_rate(env: VectorEnv, steps: int, label: str) -> Rate:
    n = env.num_envs
    start = time.perf_counter()
    done = step_randomly(env, steps)
    return Rate(label, "raw", n, done, time.perf_counter() - start)


def batched_rate(model, env: VectorEnv, target: float | None, steps: int, label: str) -> Rate:
    policy = DTPolicy(model, env, seed=0)
    start = time.perf_counter()
    stats = rollout(policy, env, target, num_episodes=env.num_envs, max_steps=steps)
    return Rate(label, "batched", env.num_envs, sum(s.length for s in stats),
                time.perf_counter() - start)  # fmt: skip


def naive_rate(model, env: VectorEnv, target: float | None, steps: int, label: str) -> Rate:
    start = time.perf_counter()
    stats = naive_rollout(model, env, target, num_episodes=1, max_steps=steps)
    return Rate(label, "naive", 1, sum(s.length for s in stats), time.perf_counter() - start)


def small_model(atari: bool):
    torch.manual_seed(0)
    if atari:
        cfg = ModelConfig(encoder="conv", action_kind="discrete", returns="atari_bins",
                          memory=MemoryConfig(slots=1024))  # fmt: skip
    else:
        cfg = ModelConfig(encoder="vector", return_scale=100.0, memory=MemoryConfig(slots=1024))
    return build_model(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--task", default="reach-v3")
    parser.add_argument("--atari-envs", type=int, default=16)
    parser.add_argument("--metaworld-envs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a few steps of each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    raw_steps, policy_steps, naive_steps = (20, 6, 4) if args.quick else (400, 100, 80)

    rates = []
    for atari in (False, True):
        label = args.game if atari else args.task
        target = None if atari else 4000.0
        model = small_model(atari)
        n = args.atari_envs if atari else args.metaworld_envs
        env = make_atari_env(label, n, num_threads=1) if atari else make_metaworld_env(label, n)
        single = make_atari_env(label, 1, num_threads=1) if atari else make_metaworld_env(label)
        rates.append(raw_rate(env, raw_steps, label))
        rates.append(batched_rate(model, env, target, policy_steps, label))
        rates.append(naive_rate(model, single, target, naive_steps, label))
        env.close()
        single.close()

    print(f"\n{'env':<10} {'path':<8} {'envs':>5} {'steps':>7} {'seconds':>8} {'steps/s':>9} "
          f"{'x naive':>8} {'/ raw':>7}")  # fmt: skip
    for r in rates:
        same = {x.path: x for x in rates if x.env == r.env}
        vs_naive = r.per_second / same["naive"].per_second
        vs_raw = r.per_second / same["raw"].per_second
        print(f"{r.env:<10} {r.path:<8} {r.num_envs:>5} {r.steps:>7} {r.seconds:>8.2f} "
              f"{r.per_second:>9.1f} {vs_naive:>8.2f} {vs_raw:>7.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
