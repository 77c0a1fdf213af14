"""What the memory does: each block's write and read addressing over one window.

``memory_addressing`` runs the model's own pieces (the token embedding, then each block's
``step``, which is what ``forward`` calls) and keeps the memory's record of every block, so
that the weights it returns are those of the forward pass, not of a re-implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dtmem.batch import Batch
from dtmem.model.memory import MemoryState
from dtmem.model.transformer import Block, DecisionTransformer

__all__ = ["Addressing", "memory_addressing"]


@dataclass(frozen=True)
class Addressing:
    """One block's memory addressing over a window, averaged over the memory heads.

    write  (B, K, N)  w_t: the slots that step t's write went to (each row sums to 1)
    read   (B, L, N)  the slots that token j read, from M_{t-1} (each row sums to 1)
    state             the memory after the window (as in ``DTOutput.memory``)
    """

    write: torch.Tensor
    read: torch.Tensor
    state: MemoryState


@torch.no_grad()
def memory_addressing(model: Any, batch: Batch) -> list[Addressing]:
    """The write and read addressing of every memory block of ``model`` (a DT-Mem, or a peft
    model around one, adapters included) on ``batch``'s windows, in block order. Runs without
    gradients and leaves the model's train/eval mode as it is."""
    get_base = getattr(model, "get_base_model", None)
    dt = get_base() if callable(get_base) else model
    if not isinstance(dt, DecisionTransformer):
        raise TypeError(f"expected a DecisionTransformer, got {type(dt).__name__}")
    if not dt.spec.has_memory:
        raise ValueError("a plain Decision Transformer has no memory to probe")
    obs_tokens = dt.encode_observations(batch.observations)
    x = dt.embed_tokens(
        obs_tokens, batch.returns_to_go, batch.actions, batch.rewards, batch.timesteps
    )
    found = []
    for block in dt.blocks:
        assert isinstance(block, Block)
        state = block.memory.initial_state(x.shape[0]) if block.memory is not None else None
        x, step, _ = block.step(x, state, record=True)
        if step is not None:
            assert step.read is not None  # recorded
            found.append(Addressing(step.write.mean(0), step.read.mean(0), step.state))
    return found
