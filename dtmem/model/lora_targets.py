"""Which Linear layers LoRA may adapt, by module name. Plain Python, no torch or peft, so that
``dtmem.config.model`` can validate targets without importing them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

__all__ = [
    "ATTENTION_MLP_PROJECTIONS",
    "MEMORY_PROJECTIONS",
    "PROJECTIONS",
    "LoRAModules",
    "target_pattern",
]

LoRAModules = Literal["memory", "attention_mlp"]

# The projections of the working memory, by module name (the spec's symbols in brackets).
MEMORY_PROJECTIONS: tuple[str, ...] = (
    "write_key",  # W_k
    "write_query",  # W_q
    "erase_gate",  # W_g
    "add",  # W_a
    "read_query",  # W_r
    "read_key",  # W_rk
    "read_value",  # W_rv
    "out",  # W_o
)
# A block's attention and MLP, by module name inside the block.
ATTENTION_MLP_PROJECTIONS: tuple[str, ...] = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")

PROJECTIONS: dict[str, tuple[str, ...]] = {
    "memory": MEMORY_PROJECTIONS,
    "attention_mlp": ATTENTION_MLP_PROJECTIONS,
}


def target_pattern(modules: LoRAModules, targets: Sequence[str] | None = None) -> str:
    """A regex matching exactly the named projections (all of ``modules``' when None) in
    every block."""
    names = "|".join(re.escape(t) for t in (targets or PROJECTIONS[modules]))
    inside = r"memory\." if modules == "memory" else ""
    return rf"(.*\.)?blocks\.\d+\.{inside}({names})"
