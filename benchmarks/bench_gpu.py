"""Paper-size training throughput on one GPU in bf16, and a central batched policy's
evaluation rate: the two GPU figures issue 16 asks for. Needs CUDA; run it on a GPU machine.

Training: the Atari pretrain config's model (4 layers, d=512, 8 heads, patch encoder, 39
tokens a step, context 28, 1200 memory slots of width 384: ~20.5M parameters) and the same
model without memory, one ``train_step`` at a time on synthetic uint8 frame windows (the
real step: forward, MDT losses, backward, clipping, AdamW), bf16 autocast as
``scaling.bf16`` trains. Tokens/s counts every token of every window.

Evaluation: one central batched policy (``DTPolicy``: the same untrained paper-size DT-Mem on
the GPU, expert-return sampling as MDT) driving one ALE vector env of E envs on the
machine's cores (Pong, ``--eval-steps`` agent steps each), against the raw env rate of the
same vector env with random actions (the ceiling no evaluation on these cores can beat).

Prints ``BENCH gpu_dtmem_tokens_per_s``, ``BENCH gpu_dt_tokens_per_s``,
``BENCH gpu_dtmem_vs_dt``, ``BENCH gpu_eval_steps_per_s`` and ``BENCH gpu_eval_vs_raw_env``
last.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from dtmem.batch import Batch
from dtmem.config.base import load_config
from dtmem.config.train import PretrainConfig
from dtmem.model import build_model
from dtmem.training.loop import train_step
from dtmem.training.optim import build_optimizer, build_scheduler

CONFIG = Path(__file__).resolve().parents[1] / "pipelines/configs/atari/pretrain.yaml"


def atari_batch(b: int, k: int, device: torch.device) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        observations=torch.randint(0, 256, (b, k, 4, 84, 84), dtype=torch.uint8, generator=g),
        actions=torch.randint(0, 18, (b, k), generator=g),
        returns_to_go=torch.randint(0, 120, (b, k), generator=g),
        rewards=torch.randint(0, 4, (b, k), generator=g),
        timesteps=torch.arange(k).repeat(b, 1),
        mask=torch.ones(b, k, dtype=torch.bool),
        task_id=torch.zeros(b, dtype=torch.int64),
    ).to(device)


def tokens_per_s(cfg: PretrainConfig, memory: bool, batch: Batch, steps: int) -> float:
    model_cfg = cfg.model if memory else cfg.model.model_copy(update={"memory": None})
    device = batch.mask.device
    model = build_model(model_cfg).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim)
    tokens_per_window = batch.context * model.spec.tokens_per_step
    times = []
    for i in range(steps + 3):  # 3 warm-up steps
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(model, batch, optimizer, scheduler, grad_clip=1.0, autocast_dtype=torch.bfloat16)
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in model.parameters())
    rate = batch.batch_size * tokens_per_window / statistics.median(times)
    print(
        f"{'DT-Mem' if memory else 'plain DT'}: {n_params / 1e6:.2f}M parameters, "
        f"batch {batch.batch_size}, {statistics.median(times) * 1e3:.1f} ms a step, "
        f"{rate:,.0f} tokens/s"
    )
    return rate


def eval_rates(cfg: PretrainConfig, envs: int, steps: int, threads: int) -> tuple[float, float]:
    """(policy-driven env steps/s, raw random-action env steps/s) on one vector env."""
    import numpy as np

    from dtmem.dt_policy import DTPolicy
    from dtmem.envs.atari import make_atari_env
    from dtmem.rollout import rollout

    torch.manual_seed(0)
    model = build_model(cfg.model).to("cuda").eval()
    env = make_atari_env("Pong", envs, num_threads=threads)
    policy = DTPolicy(model, env, seed=0)
    rollout(policy, env, None, num_episodes=envs, max_steps=20)  # warm-up: kernels, env reset
    t0 = time.perf_counter()
    stats = rollout(policy, env, None, num_episodes=envs, max_steps=steps)
    policy_rate = sum(s.length for s in stats) / (time.perf_counter() - t0)
    rng = np.random.default_rng(0)
    env.reset(list(range(envs)))
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(rng.integers(0, 18, size=envs))
    raw_rate = envs * steps / (time.perf_counter() - t0)
    env.close()
    print(
        f"evaluation, {envs} Pong envs on {threads} threads: policy {policy_rate:,.0f} "
        f"env steps/s, raw env {raw_rate:,.0f} env steps/s"
    )
    return policy_rate, raw_rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32, help="windows per step (the config's per GPU)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-envs", type=int, default=64)
    p.add_argument("--eval-steps", type=int, default=300, help="agent steps per env")
    p.add_argument("--eval-threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: bench_gpu needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = load_config(PretrainConfig, CONFIG, [])
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    batch = atari_batch(args.batch, cfg.model.context, device)
    mem = tokens_per_s(cfg, True, batch, args.steps)
    dt = tokens_per_s(cfg, False, batch, args.steps)
    policy_rate, raw_rate = eval_rates(cfg, args.eval_envs, args.eval_steps, args.eval_threads)
    print(f"BENCH gpu_dtmem_tokens_per_s {mem:.0f}")
    print(f"BENCH gpu_dt_tokens_per_s {dt:.0f}")
    print(f"BENCH gpu_dtmem_vs_dt {mem / dt:.3f}")
    print(f"BENCH gpu_eval_steps_per_s {policy_rate:.0f}")
    print(f"BENCH gpu_eval_vs_raw_env {policy_rate / raw_rate:.3f}")


if __name__ == "__main__":
    main()
