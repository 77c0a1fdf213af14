"""Train step (forward + backward) of DT-Mem against a plain DT, as a ratio over the spec's floor.

The spec's floor, in multiply-adds per token: plain block 12 d^2; memory read
2 N d_m + 4 d d_m + 2 N K; memory write N (d_m + K) per step, i.e. / n_tok per token. No
implementation can beat time(DT-Mem) / time(DT) = (plain + memory) / plain. Each pair times one
plain step and one DT-Mem step in turn (so load on the machine hits both alike); the figure is
the median over pairs of (DT-Mem / DT) / floor: 1.0 is the floor, the goal is <= 1.15.

Defaults: the spec's size (3 layers, d = d_m = 128, K = 20, batch 64), one torch thread and
process CPU time, which stay meaningful when other jobs share the machine. Like every training
process, the benchmark keeps freed memory for reuse (``dtmem.malloc``).

    python benchmarks/bench_memory.py                          # 64 and 1024 slots
    python benchmarks/bench_memory.py --slots 256 2048 --addressing initial --clock wall

Prints last ``BENCH memory_over_floor_<slots> <ratio>`` for each slot count.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from dtmem.batch import Batch
from dtmem.config.model import MemoryConfig, ModelConfig
from dtmem.malloc import keep_freed_memory
from dtmem.model import build_model, dt_loss


def floor_ratio(d: int, d_m: int, n: int, k: int, n_tok: int) -> float:
    """The spec's least possible time(DT-Mem) / time(DT), from multiply-adds per token."""
    plain = 12 * d * d
    memory = 2 * n * d_m + 4 * d * d_m + 2 * n * k + n * (d_m + k) / n_tok
    return (plain + memory) / plain


def make_batch(b: int, k: int, obs_dim: int, act_dim: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        observations=torch.randn(b, k, obs_dim, generator=g),
        actions=torch.rand(b, k, act_dim, generator=g) * 2 - 1,
        returns_to_go=torch.randn(b, k, generator=g),
        rewards=torch.zeros(b, k),
        timesteps=torch.arange(k).expand(b, k),
        mask=torch.ones(b, k, dtype=torch.bool),
        task_id=torch.zeros(b, dtype=torch.long),
    )


def one_step(model: torch.nn.Module, batch: Batch, clock: Callable[[], float]) -> float:
    """Seconds for one forward + backward."""
    t0 = clock()
    out = model(
        batch.observations, batch.returns_to_go, batch.actions, batch.rewards, batch.timesteps
    )
    dt_loss(out, batch).total.backward()
    model.zero_grad(set_to_none=True)
    return clock() - t0


def pair_ratios(
    plain_cfg: ModelConfig,
    mem_cfg: ModelConfig,
    batch: Batch,
    pairs: int,
    clock: Callable[[], float],
) -> tuple[list[float], float, float]:
    """time(DT-Mem) / time(DT) for each pair, and the median step times (s) of each model."""
    torch.manual_seed(0)
    plain, mem = build_model(plain_cfg).train(), build_model(mem_cfg).train()
    one_step(plain, batch, clock), one_step(mem, batch, clock)  # warm-up
    ratios, tp, tm = [], [], []
    for _ in range(pairs):
        tp.append(one_step(plain, batch, clock))
        tm.append(one_step(mem, batch, clock))
        ratios.append(tm[-1] / tp[-1])
    return ratios, statistics.median(tp), statistics.median(tm)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slots", type=int, nargs="+", default=[64, 1024])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--memory-width", type=int, default=None)
    ap.add_argument("--context", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--heads", type=int, default=1, help="memory heads")
    ap.add_argument("--addressing", default="previous", choices=["previous", "initial"])
    ap.add_argument("--pairs", type=int, default=11, help="pairs of steps timed in turn")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="cpu",
        help="cpu: process CPU time, robust when other jobs share the machine (with 1 thread)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as every training process does (dtmem/malloc.py)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    base = ModelConfig(
        encoder="vector",
        obs_dim=39,
        act_dim=4,
        context=args.context,
        n_layer=args.layers,
        n_head=1,
        d_model=args.width,
        dropout=0.0,
        memory=None,
    )
    batch = make_batch(args.batch, args.context, 39, 4)
    d_m = args.memory_width or args.width
    print(
        f"DT-Mem vs plain DT, forward+backward, {args.layers} layers, d={args.width}, d_m={d_m}, "
        f"K={args.context}, batch {args.batch}, memory heads {args.heads}, addressing "
        f"{args.addressing}, torch threads {torch.get_num_threads()}, {args.clock} clock, "
        f"median of {args.pairs} pairs"
    )
    print(
        f"{'slots':>6} {'DT ms':>8} {'DT-Mem ms':>10} {'time ratio':>10} {'floor':>7} {'over floor':>10}"
    )
    results = {}
    for n in args.slots:
        mem = MemoryConfig(
            slots=n, width=args.memory_width, heads=args.heads, addressing=args.addressing
        )
        mem_cfg = base.model_copy(update={"memory": mem})
        ratios, t_plain, t_mem = pair_ratios(base, mem_cfg, batch, args.pairs, clock)
        floor = floor_ratio(args.width, d_m, n, args.context, n_tok=3)
        ratio = statistics.median(ratios)
        results[n] = ratio / floor
        print(
            f"{n:>6} {t_plain * 1e3:>8.1f} {t_mem * 1e3:>10.1f} {ratio:>10.2f} {floor:>7.2f} "
            f"{results[n]:>9.2f}x"
        )
    for n, over in results.items():
        print(f"BENCH memory_over_floor_{n} {over:.3f}")


if __name__ == "__main__":
    main()
