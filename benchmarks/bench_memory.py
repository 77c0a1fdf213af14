"""Forward+backward time of DT-Mem against a plain DT, as a ratio beside the spec's cost floor.

The spec's floor, in multiply-adds per token: plain block 12 d^2; memory read
2 N d_m + 4 d d_m + 2 N K; memory write N (d_m + K) per step, i.e. / n_tok per token. No
implementation can beat time(DT-Mem) / time(DT) = (plain + memory) / plain; we report the
measured ratio and how far above the floor it is (goal: within 1.25x).

    python benchmarks/bench_memory.py                       # the spec's size, 4 slot counts
    python benchmarks/bench_memory.py --slots 1024 --repeats 3 --addressing initial
"""

from __future__ import annotations

import argparse
import time

import torch

from dtmem.batch import Batch
from dtmem.config.model import MemoryConfig, ModelConfig
from dtmem.model import build_model, dt_loss


def floor_ratio(d: int, d_m: int, n: int, k: int, n_tok: int) -> float:
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


CLOCK = time.perf_counter


def one_step(model: torch.nn.Module, batch: Batch) -> float:
    t0 = CLOCK()
    out = model(
        batch.observations, batch.returns_to_go, batch.actions, batch.rewards, batch.timesteps
    )
    dt_loss(out, batch).total.backward()
    model.zero_grad(set_to_none=True)
    return CLOCK() - t0


def time_pair(
    plain_cfg: ModelConfig, mem_cfg: ModelConfig, batch: Batch, repeats: int
) -> tuple[float, float]:
    """Min time per step of each model, measured alternately so load on the machine hits both."""
    torch.manual_seed(0)
    plain, mem = build_model(plain_cfg).train(), build_model(mem_cfg).train()
    one_step(plain, batch), one_step(mem, batch)  # warm-up
    tp, tm = [], []
    for _ in range(repeats):
        tp.append(one_step(plain, batch))
        tm.append(one_step(mem, batch))
    return min(tp), min(tm)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slots", type=int, nargs="+", default=[64, 256, 1024, 2048])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--memory-width", type=int, default=None)
    ap.add_argument("--context", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--heads", type=int, default=1, help="memory heads")
    ap.add_argument("--addressing", default="previous", choices=["previous", "initial"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time, robust when other jobs share the machine (use --threads 1)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

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
        f"{args.addressing}, torch threads {torch.get_num_threads()}, {args.clock} clock"
    )
    print(
        f"{'slots':>6} {'DT ms':>8} {'DT-Mem ms':>10} {'time ratio':>10} {'floor ratio':>11} {'vs floor':>9}"
    )
    for n in args.slots:
        mem = MemoryConfig(
            slots=n, width=args.memory_width, heads=args.heads, addressing=args.addressing
        )
        plain, t = time_pair(base, base.model_copy(update={"memory": mem}), batch, args.repeats)
        ratio = t / plain
        floor = floor_ratio(args.width, d_m, n, args.context, n_tok=3)
        print(
            f"{n:>6} {plain * 1e3:>8.1f} {t * 1e3:>10.1f} {ratio:>10.2f} {floor:>11.2f} {ratio / floor:>8.2f}x"
        )


if __name__ == "__main__":
    main()
