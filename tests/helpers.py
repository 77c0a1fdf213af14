"""Small builders shared by tests: tiny configs at deliberately odd sizes and random windows,
and a signal sent to this process once a run has got somewhere."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import torch

from dtmem.batch import Batch
from dtmem.config.model import MemoryConfig, ModelConfig

# Odd sizes, so that equal dimensions can't hide a transposed axis.
BATCH, CONTEXT, STATE, ACTIONS = 3, 7, 17, 5


def tiny_config(encoder: str = "vector", memory: bool = True, **kw: object) -> ModelConfig:
    args: dict[str, object] = dict(
        encoder=encoder,
        context=CONTEXT,
        n_layer=2,
        n_head=2,
        d_model=22,
        dropout=0.0,
        memory=MemoryConfig(slots=13, width=10, heads=2) if memory else None,
    )
    if encoder == "vector":
        args.update(obs_dim=STATE, act_dim=ACTIONS, action_kind="continuous")
    else:
        args.update(action_kind="discrete", num_actions=ACTIONS, returns="atari_bins")
    args.update(kw)
    return ModelConfig.model_validate(args)


def random_batch(cfg: ModelConfig, batch: int = BATCH, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    K = cfg.context
    if cfg.encoder == "vector":
        obs = torch.randn(batch, K, cfg.obs_dim, generator=g)
    else:
        obs = torch.randint(0, 256, (batch, K, 4, 84, 84), generator=g, dtype=torch.uint8)
    if cfg.action_kind == "discrete":
        actions = torch.randint(0, cfg.num_actions, (batch, K), generator=g)
    else:
        actions = torch.rand(batch, K, cfg.act_dim, generator=g) * 2 - 1
    if cfg.returns == "atari_bins":
        rtg = torch.randint(0, 120, (batch, K), generator=g)
        rewards = torch.randint(0, 4, (batch, K), generator=g)
    else:
        rtg = torch.randn(batch, K, generator=g)
        rewards = torch.randn(batch, K, generator=g)
    return Batch(
        observations=obs,
        actions=actions,
        returns_to_go=rtg,
        rewards=rewards,
        timesteps=torch.arange(K).expand(batch, K).clone(),
        mask=torch.ones(batch, K, dtype=torch.bool),
        task_id=torch.zeros(batch, dtype=torch.long),
    )


def run(model: torch.nn.Module, b: Batch):
    return model(b.observations, b.returns_to_go, b.actions, b.rewards, b.timesteps)


def signal_when(
    ready: Callable[[], bool], signum: int, within: float = 200.0, poll: float = 0.1
) -> list[float]:
    """Send ``signum`` to this process from a thread once ``ready()`` (asked every ``poll``
    seconds for at most ``within``; never after, when a signal could only reach a test that
    has already ended, or the session); returns the list its monotonic send time lands in."""
    sent: list[float] = []

    def watch() -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if ready():
                sent.append(time.monotonic())
                os.kill(os.getpid(), signum)
                return
            time.sleep(poll)

    threading.Thread(target=watch, daemon=True).start()
    return sent
