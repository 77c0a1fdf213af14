"""AdamW with decoupled weight decay on matrices only, and a linear warm-up schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from dtmem.config.train import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Trainable parameters in two groups: matrices (Linear/conv weights, embeddings) decay;
    biases, LayerNorm gains, position embeddings and the initial memory M_0 do not (nanoGPT's
    rule: decay exactly the >= 2-D weights of Linear, conv and embedding modules)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            matrix = name == "weight" and isinstance(module, nn.Linear | nn.Conv2d | nn.Embedding)
            (decay if matrix and p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` (raises if there are none)."""
    groups = param_groups(model, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimiser step ``step`` (0-based: the step about to run).

    Linear warm-up: (step + 1) / warmup_steps until warmup_steps, then 1 ('none') or a cosine
    from 1 down to min_lr_ratio at max_steps ('cosine').
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay == "none":
        return 1.0
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` stepping ``lr_factor``; its state_dict is plain numbers (JSON-safe)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
