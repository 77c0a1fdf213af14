"""The one place where a validated ``ModelConfig`` becomes modules.

The model takes flat arguments and never sees a config object: the memory's options reach it
as one ``MemorySpec`` (or None for a plain DT), made here from the ``MemoryConfig``, which is
where their defaults and documentation live.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dtmem.model.memory_spec import MemorySpec
from dtmem.model.transformer import DecisionTransformer

if TYPE_CHECKING:  # the model package never imports pydantic at run time
    from dtmem.config.model import ModelConfig


def memory_spec(cfg: ModelConfig) -> MemorySpec | None:
    """The memory of every block of ``cfg``'s model, its width resolved; None without one."""
    mem = cfg.memory
    if mem is None:
        return None
    return MemorySpec(
        slots=mem.slots,
        width=mem.width or cfg.d_model,
        heads=mem.heads,
        erase=mem.erase,
        addressing=mem.addressing,
        max_erase=mem.max_erase,
        init_std=mem.init_std,
    )


def build_model(cfg: ModelConfig) -> DecisionTransformer:
    """ModelConfig -> DecisionTransformer (DT-Mem, or a plain DT when ``cfg.memory`` is None)."""
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
        memory=memory_spec(cfg),
    )
