"""DT-Mem and the plain Decision Transformer. Imports torch; never pydantic, Ray or MLflow.

LoRA helpers live in ``dtmem.model.lora`` (peft is imported only when they are called).
"""

from dtmem.model.builder import build_model
from dtmem.model.loss import LossParts, dt_loss
from dtmem.model.memory import DenseMemory, FactoredMemory, MemoryState, WorkingMemory
from dtmem.model.transformer import (
    RETURN_BINS,
    RETURN_MIN,
    REWARD_CLASSES,
    DecisionTransformer,
    DTOutput,
    ModelSpec,
)

__all__ = [
    "RETURN_BINS",
    "RETURN_MIN",
    "REWARD_CLASSES",
    "DTOutput",
    "DecisionTransformer",
    "DenseMemory",
    "FactoredMemory",
    "LossParts",
    "MemoryState",
    "ModelSpec",
    "WorkingMemory",
    "build_model",
    "dt_loss",
]
