"""Training tokens/s of our plain Decision Transformer against Hugging Face's
``transformers.DecisionTransformerModel`` at the same width, depth, heads, context and batch.

Both read 3 tokens per step (return, state, action), both are GPT-2 blocks (pre-LayerNorm,
GELU MLP of 4 d, causal attention through scaled_dot_product_attention), both have a timestep
embedding and dropout 0; HF's model is built from a config (nothing is downloaded). A
training step is forward, the action MSE, backward and an AdamW step. Each pair times one
step of each in turn; the figure is the median over pairs of ours / HF in tokens/s (goal >= 1).

    python benchmarks/bench_dt_vs_hf.py
    python benchmarks/bench_dt_vs_hf.py --width 256 --layers 4 --heads 4 --clock wall

Prints last ``BENCH dt_vs_hf <ratio>``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dtmem.batch import Batch
from dtmem.config.model import ModelConfig
from dtmem.model import build_model, dt_loss

MAX_EP_LEN = 1000


def make_batch(b: int, k: int, obs_dim: int, act_dim: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        observations=torch.randn(b, k, obs_dim, generator=g),
        actions=torch.rand(b, k, act_dim, generator=g) * 2 - 1,
        returns_to_go=torch.randn(b, k, generator=g),
        rewards=torch.zeros(b, k),
        timesteps=torch.arange(k).expand(b, k).contiguous(),
        mask=torch.ones(b, k, dtype=torch.bool),
        task_id=torch.zeros(b, dtype=torch.long),
    )


def ours(args: argparse.Namespace) -> Callable[[Batch], torch.Tensor]:
    cfg = ModelConfig(
        encoder="vector",
        obs_dim=args.obs_dim,
        act_dim=args.act_dim,
        context=args.context,
        n_layer=args.layers,
        n_head=args.heads,
        d_model=args.width,
        dropout=0.0,
        max_timestep=MAX_EP_LEN,
        memory=None,
    )
    model = build_model(cfg).train()

    def loss(b: Batch) -> torch.Tensor:
        out = model(b.observations, b.returns_to_go, b.actions, b.rewards, b.timesteps)
        return dt_loss(out, b).total

    loss.model = model  # type: ignore[attr-defined]
    return loss


def huggingface(args: argparse.Namespace) -> Callable[[Batch], torch.Tensor]:
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    config = DecisionTransformerConfig(
        state_dim=args.obs_dim,
        act_dim=args.act_dim,
        hidden_size=args.width,
        max_ep_len=MAX_EP_LEN,
        n_layer=args.layers,
        n_head=args.heads,
        n_inner=4 * args.width,
        n_positions=3 * args.context,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        action_tanh=True,
        bos_token_id=None,
        eos_token_id=None,
    )
    config._attn_implementation = "sdpa"
    model = DecisionTransformerModel(config).train()
    mask = torch.ones(args.batch, args.context, dtype=torch.long)

    def loss(b: Batch) -> torch.Tensor:
        out = model(
            states=b.observations,
            actions=b.actions,
            rewards=b.rewards.unsqueeze(-1),
            returns_to_go=b.returns_to_go.unsqueeze(-1),
            timesteps=b.timesteps,
            attention_mask=mask,
            return_dict=True,
        )
        return F.mse_loss(out.action_preds, b.actions)

    loss.model = model  # type: ignore[attr-defined]
    return loss


def timed_step(
    loss: Callable[[Batch], torch.Tensor],
    opt: torch.optim.Optimizer,
    batch: Batch,
    clock: Callable[[], float],
) -> float:
    t0 = clock()
    opt.zero_grad(set_to_none=True)
    loss(batch).backward()
    opt.step()
    return clock() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--context", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--obs-dim", type=int, default=39)
    ap.add_argument("--act-dim", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=9, help="pairs of steps timed in turn")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    torch.manual_seed(0)
    batch = make_batch(args.batch, args.context, args.obs_dim, args.act_dim)
    steps = {name: make(args) for name, make in (("ours", ours), ("hf", huggingface))}
    opts = {
        name: torch.optim.AdamW(loss.model.parameters(), lr=1e-4)  # type: ignore[attr-defined]
        for name, loss in steps.items()
    }
    for name in steps:  # warm-up
        timed_step(steps[name], opts[name], batch, clock)
    times: dict[str, list[float]] = {name: [] for name in steps}
    ratios = []
    for _ in range(args.pairs):
        for name in steps:
            times[name].append(timed_step(steps[name], opts[name], batch, clock))
        ratios.append(times["hf"][-1] / times["ours"][-1])  # tokens/s ours / HF
    tokens = args.batch * args.context * 3
    params = {
        name: sum(p.numel() for p in loss.model.parameters())  # type: ignore[attr-defined]
        for name, loss in steps.items()
    }
    print(
        f"plain DT vs HF DecisionTransformerModel, train step (AdamW), {args.layers} layers, "
        f"d={args.width}, {args.heads} heads, K={args.context}, batch {args.batch}, torch "
        f"threads {torch.get_num_threads()}, {args.clock} clock, median of {args.pairs} pairs"
    )
    for name in steps:
        t = statistics.median(times[name])
        print(
            f"{name:>5}: {t * 1e3:7.1f} ms/step  {tokens / t:9.0f} tokens/s  {params[name]:,} params"
        )
    print(f"BENCH dt_vs_hf {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
