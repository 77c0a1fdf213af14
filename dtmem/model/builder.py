"""The one place where a validated ``ModelConfig`` becomes modules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dtmem.model.transformer import DecisionTransformer

if TYPE_CHECKING:  # the model package never imports pydantic at run time
    from dtmem.config.model import ModelConfig


def build_model(cfg: ModelConfig) -> DecisionTransformer:
    """ModelConfig -> DecisionTransformer (DT-Mem, or a plain DT when ``cfg.memory`` is None)."""
    mem = cfg.memory
    return DecisionTransformer(
        encoder=cfg.encoder,
        obs_dim=cfg.obs_dim,
        action_kind=cfg.action_kind,
        num_actions=cfg.num_actions,
        act_dim=cfg.act_dim,
        atari_heads=cfg.returns == "atari_bins",
        return_scale=cfg.return_scale,
        context=cfg.context,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        d_model=cfg.d_model,
        dropout=cfg.dropout,
        max_timestep=cfg.max_timestep,
        memory_slots=mem.slots if mem is not None else 0,
        memory_width=(mem.width or cfg.d_model) if mem is not None else 0,
        memory_heads=mem.heads if mem is not None else 1,
        memory_erase=mem.erase if mem is not None else "slot",
        memory_addressing=mem.addressing if mem is not None else "previous",
        memory_max_erase=mem.max_erase if mem is not None else 0.9,
        memory_init_std=mem.init_std if mem is not None else 1.0,
    )
