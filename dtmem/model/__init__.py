"""DT-Mem and the plain Decision Transformer. Imports torch; never pydantic, Ray or MLflow.

The names below load on first use (PEP 562), so that the torch-free parts of the package
(``dtmem.model.memory_spec``, which ``dtmem.config.model`` imports) do not pull in torch.
LoRA helpers live in ``dtmem.model.lora`` (peft is imported only when they are called).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dtmem.model.builder import build_model
    from dtmem.model.loss import LossParts, dt_loss
    from dtmem.model.memory import (
        DenseMemory,
        FactoredMemory,
        MemoryState,
        MemoryStep,
        WorkingMemory,
    )
    from dtmem.model.memory_spec import MemorySpec
    from dtmem.model.probe import Addressing, memory_addressing
    from dtmem.model.transformer import (
        RETURN_BINS,
        RETURN_MIN,
        REWARD_CLASSES,
        DecisionTransformer,
        DTOutput,
        ModelSpec,
    )

_WHERE = {
    "build_model": "builder",
    "LossParts": "loss",
    "dt_loss": "loss",
    "DenseMemory": "memory",
    "FactoredMemory": "memory",
    "MemoryState": "memory",
    "MemoryStep": "memory",
    "WorkingMemory": "memory",
    "MemorySpec": "memory_spec",
    "Addressing": "probe",
    "memory_addressing": "probe",
    "RETURN_BINS": "transformer",
    "RETURN_MIN": "transformer",
    "REWARD_CLASSES": "transformer",
    "DecisionTransformer": "transformer",
    "DTOutput": "transformer",
    "ModelSpec": "transformer",
}

__all__ = [
    "RETURN_BINS",
    "RETURN_MIN",
    "REWARD_CLASSES",
    "Addressing",
    "DTOutput",
    "DecisionTransformer",
    "DenseMemory",
    "FactoredMemory",
    "LossParts",
    "MemorySpec",
    "MemoryState",
    "MemoryStep",
    "ModelSpec",
    "WorkingMemory",
    "build_model",
    "dt_loss",
    "memory_addressing",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"dtmem.model.{_WHERE[name]}"), name)
