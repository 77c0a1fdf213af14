"""Evaluation speed on Meta-World (env steps/s): the pipeline against the naive loop and
against the ceiling, as ratios of pairs measured in turn in one run.

    pipeline  dtmem.evaluation on a warm pool (``open_pool``: the actors, their built model
              and envs kept between calls) of A Ray actors with E envs each; one call of
              ``pool.evaluate`` per repeat, A*E episodes of S steps (one unit per actor)
    naive     naive_rollout in a process of its own, as a plain loop runs (glibc's default
              allocator): one env, the whole window through ``model(...)`` every step. The
              same loop in a process that keeps freed memory as the pool's workers do
              (``dtmem.malloc``) is printed beside it, for context
    ceiling   the lower of the raw env rate (random actions, E envs) and the policy's batched
              forward rate (encode one step and run the forward the policy runs,
              ``forward_step`` on the full K-step window of E envs: all blocks, the last one
              only at the newest step), each summed over A probe actors measuring at the same
              time (the pool's cores, under the same contention as the pool), keeping freed
              memory as the pool does: no evaluation on these cores can beat it
    cold      ``evaluate()`` once, end to end: the pool started (actors, imports, model,
              envs), run and stopped, as one ``dtmem evaluate`` call does (context only)

The model is the default small DT-Mem (3 layers, d=128, K=20, 1024 memory slots), untrained,
with a fixed target. Torch runs on one thread everywhere (actors set it too). Ray is started
once beforehand, as on a cluster. Figures last, one per line: ``BENCH <name> <value>``.

    python benchmarks/bench_evaluate.py            # about 3 minutes on 2 cores
    python benchmarks/bench_evaluate.py --quick    # a smoke test
    python benchmarks/bench_evaluate.py --compare-envs 8   # also E envs per actor against 8

E is ``dtmem evaluate``'s default (``EvaluateConfig.envs_per_actor``); ``--compare-envs N`` also times the same A*E episodes
on warm pools of E and of N envs per actor, opened in turn (``BENCH eval_envs_E_vs_N``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from dtmem.config.evaluate import EvaluateConfig
from dtmem.config.model import MemoryConfig, ModelConfig
from dtmem.envs import make_env, step_randomly
from dtmem.evaluation import ModelPayload, TaskRequest, evaluate, open_pool
from dtmem.malloc import keep_freed_memory
from dtmem.model import DecisionTransformer, build_model
from dtmem.naive_rollout import naive_rollout
from dtmem.ray_session import ray_session

TARGET = 4000.0
DEFAULT_ENVS = EvaluateConfig.model_fields["envs_per_actor"].default
spawn = get_context("spawn")


def small_model() -> tuple[DecisionTransformer, ModelConfig]:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="vector", return_scale=100.0, memory=MemoryConfig(slots=1024))
    return build_model(cfg).eval(), cfg


def naive_rate(model: DecisionTransformer, task: str, steps: int) -> float:
    env = make_env("metaworld", task, 1)
    naive_rollout(model, env, TARGET, num_episodes=1, max_steps=2)  # warm: first calls
    start = time.perf_counter()
    stats = naive_rollout(model, env, TARGET, num_episodes=1, max_steps=steps)
    rate = sum(s.length for s in stats) / (time.perf_counter() - start)
    env.close()
    return rate


def raw_rate(task: str, envs: int, steps: int) -> float:
    env = make_env("metaworld", task, envs)
    start = time.perf_counter()
    done = step_randomly(env, steps)
    rate = done / (time.perf_counter() - start)
    env.close()
    return rate


@torch.inference_mode()  # as DTPolicy.act runs: the ceiling stays an upper bound
def forward_rate(model: DecisionTransformer, envs: int, calls: int) -> float:
    """Env steps/s the policy's forward allows: per step, one new observation encoded and
    the full window of every env run once through ``forward_step`` at its newest step (what
    ``DTPolicy.act`` does at steady state)."""
    K = model.spec.context
    obs = torch.randn(envs, 1, *model.spec.obs_shape)
    tokens = model.encode_observations(torch.randn(envs, K, *model.spec.obs_shape))
    rtg, rew = torch.rand(envs, K), torch.rand(envs, K)
    act = torch.rand(envs, K, model.spec.act_dim)
    timesteps = torch.arange(K).expand(envs, K)
    newest = torch.full((envs,), K - 1)
    model.forward_step(tokens, rtg, act, rew, timesteps, newest)  # warm-up
    start = time.perf_counter()
    for _ in range(calls):
        model.encode_observations(obs)
        model.forward_step(tokens, rtg, act, rew, timesteps, newest)
    return envs * calls / (time.perf_counter() - start)


_naive_model: DecisionTransformer | None = None


def _naive_process(keep: bool) -> None:
    """Initializer of a naive-loop process: one torch thread, the allocator as asked."""
    global _naive_model
    torch.set_num_threads(1)
    if keep:
        keep_freed_memory()
    _naive_model = small_model()[0]


def _naive_in_process(task: str, steps: int) -> float:
    assert _naive_model is not None
    return naive_rate(_naive_model, task, steps)


class Probe:
    """What one core allows: the raw env rate and the policy's forward rate (a Ray actor)."""

    def __init__(self, payload: ModelPayload, task: str, envs: int) -> None:
        torch.set_num_threads(1)
        keep_freed_memory()  # as the pool's workers do: the ceiling stays an upper bound
        self.model, self.task, self.envs = payload.build(), task, envs

    def rates(self, raw_steps: int, calls: int) -> tuple[float, float]:
        return raw_rate(self.task, self.envs, raw_steps), forward_rate(self.model, self.envs, calls)


def batch_pairs(
    payload: ModelPayload,
    request: list[TaskRequest],
    actors: int,
    sizes: tuple[int, int],
    repeats: int,
) -> list[float]:
    """The same episodes with ``sizes[0]`` envs per actor against ``sizes[1]``: warm pools
    opened in turn (which goes first alternates), each timed on one call; rate ratios."""
    ratios: list[float] = []
    for i in range(repeats):
        rate: dict[int, float] = {}
        for envs in sizes if i % 2 == 0 else sizes[::-1]:
            with open_pool(payload, num_actors=actors, envs_per_actor=envs, units=actors) as pool:
                pool.evaluate(request)  # warm
                rate[envs] = pool.evaluate(request).steps_per_s
        ratios.append(rate[sizes[0]] / rate[sizes[1]])
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--task", default="reach-v3")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors (one CPU each)")
    parser.add_argument(
        "--envs", type=int, default=DEFAULT_ENVS, help="envs per actor (dtmem evaluate's default)"
    )
    parser.add_argument("--steps", type=int, default=100, help="steps per episode")
    parser.add_argument("--repeats", type=int, default=9, help="pairs measured in turn")
    parser.add_argument("--quick", action="store_true", help="a few steps of each")
    parser.add_argument(
        "--compare-envs",
        type=int,
        metavar="N",
        help="also time the same episodes with N envs per actor against --envs, in pairs",
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)
    steps, repeats = (args.steps, args.repeats) if not args.quick else (12, 2)
    A, E = args.actors, args.envs
    model, cfg = small_model()
    payload = ModelPayload.of(model, cfg, None)
    request = [TaskRequest("metaworld", args.task, A * E, steps, TARGET)]

    rows: list[tuple[float, float, float, float]] = []  # pipeline, naive, raw, forward
    kept: list[float] = []  # the naive loop with the workers' allocator setting (context)
    naive_pools = [
        ProcessPoolExecutor(1, spawn, initializer=_naive_process, initargs=(keep,))
        for keep in (False, True)
    ]
    with ray_session(num_cpus=A) as ray, naive_pools[0] as plain, naive_pools[1] as keeping:
        t0 = time.perf_counter()
        cold = evaluate(payload, request, num_actors=A, envs_per_actor=E)
        cold_s = time.perf_counter() - t0
        # zero CPUs reserved: the probes measure while the pool's actors wait between calls
        probes = [ray.remote(num_cpus=0)(Probe).remote(payload, args.task, E) for _ in range(A)]
        with open_pool(payload, num_actors=A, envs_per_actor=E, units=A) as pool:
            pool.evaluate(request)  # warm: actors started, model built, envs made
            for _ in range(repeats):
                warm = pool.evaluate(request)
                naive = plain.submit(_naive_in_process, args.task, steps).result()
                kept.append(keeping.submit(_naive_in_process, args.task, steps).result())
                probed = ray.get([p.rates.remote(max(10, steps // 2), max(5, steps // 5))
                                  for p in probes])  # fmt: skip
                raw, fwd = (sum(r[i] for r in probed) for i in (0, 1))
                rows.append((warm.steps_per_s, naive, raw, fwd))
            actors = pool.pool.size
        if args.compare_envs is not None:
            batch = batch_pairs(payload, request, A, (E, args.compare_envs), repeats)
    naive_median = statistics.median(r[1] for r in rows)

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.task}, "
          f"{actors} actors x {E} envs, {A * E} episodes x {steps} steps per call")  # fmt: skip
    print(f"{'repeat':>6} {'pipeline':>9} {'naive':>7} {'raw':>8} {'forward':>8} "
          f"{'x naive':>8} {'/ ceiling':>9}")  # fmt: skip
    vs_naive, vs_ceiling = [], []
    for i, (pipe, nv, raw, fwd) in enumerate(rows):
        ceiling = min(raw, fwd)
        vs_naive.append(pipe / nv)
        vs_ceiling.append(pipe / ceiling)
        print(f"{i:>6} {pipe:>9.1f} {nv:>7.1f} {raw:>8.1f} {fwd:>8.1f} "
              f"{pipe / nv:>8.2f} {pipe / ceiling:>9.3f}")  # fmt: skip
    kept_median = statistics.median(kept)
    print(f"naive loop keeping freed memory (dtmem.malloc, as the pool's workers do): "
          f"{kept_median:.1f} steps/s, {kept_median / naive_median:.2f}x the plain naive loop; "
          f"the pool is {statistics.median(r[0] for r in rows) / kept_median:.2f}x it")  # fmt: skip
    print(f"cold evaluate(): {cold.env_steps} steps in {cold_s:.1f} s = {cold.env_steps / cold_s:.1f}"
          f" steps/s, {cold.env_steps / cold_s / naive_median:.2f}x the naive loop (median)")  # fmt: skip
    if args.compare_envs is not None:
        print(f"{E} envs per actor against {args.compare_envs}, the same {A * E} episodes: "
              + ", ".join(f"{r:.2f}" for r in batch))  # fmt: skip
        print(f"BENCH eval_envs_{E}_vs_{args.compare_envs} {statistics.median(batch):.3f}")
    print(f"BENCH eval_cold_vs_naive {cold.env_steps / cold_s / naive_median:.3f}")
    print(f"BENCH eval_vs_naive {statistics.median(vs_naive):.3f}")
    print(f"BENCH eval_vs_ceiling {statistics.median(vs_ceiling):.3f}")


if __name__ == "__main__":
    main()
