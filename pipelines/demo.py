"""A tiny DT-Mem trained on synthetic episodes: the smallest end-to-end check of the model.

The synthetic task needs memory of the window: the target action at step t is the
observation seen ``lag`` steps earlier (clipped to [-1, 1]), so attention or memory must carry
it forward. No Ray, no MLflow, no data on disk.
"""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from dtmem.batch import Batch
from dtmem.config.model import MemoryConfig, ModelConfig
from dtmem.model import build_model, dt_loss
from dtmem.model.lora import parameter_counts


def synthetic_batch(
    batch: int, context: int, obs_dim: int, act_dim: int, lag: int, g: torch.Generator
) -> Batch:
    """Episodes whose action at step t is obs[t - lag][:act_dim] squashed into [-1, 1]."""
    obs = torch.randn(batch, context, obs_dim, generator=g)
    actions = torch.zeros(batch, context, act_dim)
    actions[:, lag:] = torch.tanh(obs[:, :-lag, :act_dim])
    return Batch(
        observations=obs,
        actions=actions,
        returns_to_go=torch.ones(batch, context),
        rewards=torch.zeros(batch, context),
        timesteps=torch.arange(context).expand(batch, context).clone(),
        mask=torch.ones(batch, context, dtype=torch.bool),
        task_id=torch.zeros(batch, dtype=torch.long),
    )


def run_demo(steps: int = 300, slots: int = 64, seed: int = 0) -> float:
    """Trains and returns the fraction by which the loss fell (last 20 steps vs first 20)."""
    if steps < 40:
        raise ValueError(f"steps={steps}: need at least 40 to compare the first and last 20")
    console = Console()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(
        obs_dim=11,
        act_dim=3,
        context=10,
        n_layer=2,
        n_head=2,
        d_model=64,
        dropout=0.0,
        memory=MemoryConfig(slots=slots),
    )
    model = build_model(cfg).train()
    counts = parameter_counts(model)
    console.print(
        f"[bold]dtmem demo[/]: DT-Mem, {cfg.n_layer} layers, d={cfg.d_model}, "
        f"{slots} memory slots, {counts.total:,} parameters; synthetic recall task"
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    losses: list[float] = []
    start = time.perf_counter()
    with Progress(
        TextColumn("step {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("train", total=steps, loss=float("nan"))
        for step in range(1, steps + 1):
            b = synthetic_batch(32, cfg.context, cfg.obs_dim, cfg.act_dim, lag=3, g=g)
            loss = dt_loss(
                model(b.observations, b.returns_to_go, b.actions, b.rewards, b.timesteps), b
            ).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            progress.update(task, advance=1, loss=losses[-1])
            if step % max(1, steps // 10) == 0:
                progress.console.print(f"step {step:>5}  loss {losses[-1]:.4f}")
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    fell = 1.0 - last / first
    console.print(
        f"loss {first:.4f} -> {last:.4f} ({fell:.0%} lower) in {time.perf_counter() - start:.1f}s"
    )
    return fell
