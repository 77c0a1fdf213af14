"""The working memory's shape and options, and the erase bound. Plain Python, no torch, so that
``dtmem.config.model`` can import it without making the CLI slow to start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["MIN_DECAY", "MemorySpec", "max_erase_bound"]

# Smallest P (what is left of a slot) that a window may reach: 1 / P must stay finite, with
# head-room, in float32 and bfloat16 (both reach about 3e38).
MIN_DECAY = 1e-30


def max_erase_bound(context: int) -> float:
    """The largest g_max for which (1 - g_max)^context >= MIN_DECAY."""
    return 1.0 - MIN_DECAY ** (1.0 / context)


@dataclass(frozen=True)
class MemorySpec:
    """One block's working memory (spec section 2). The builder makes it from a validated
    ``MemoryConfig``, where the defaults and the documentation of every field live; a model
    without memory gets ``None``, never a spec with zero slots.

    slots       N
    width       d_m, resolved (the config's null means the model width)
    heads       H; divides ``width``
    erase       "slot" (unrolled, fast) or "channel" (NTM erase per channel, step by step)
    addressing  write addressing against M_{t-1} ("previous") or M_0 ("initial")
    max_erase   g_max, the largest erase of one step; at most ``max_erase_bound(context)``
    init_std    std of the random M_0
    """

    slots: int
    width: int
    heads: int
    erase: Literal["slot", "channel"]
    addressing: Literal["previous", "initial"]
    max_erase: float
    init_std: float

    def __post_init__(self) -> None:
        if self.slots <= 0 or self.width <= 0 or self.heads <= 0:
            raise ValueError(f"memory slots, width and heads must be positive: {self}")
        if self.width % self.heads:
            raise ValueError(f"memory heads {self.heads} do not divide width {self.width}")
