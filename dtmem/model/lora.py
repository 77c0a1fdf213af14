"""LoRA fine-tuning through peft (spec section 3).

Adapters go on the memory's projections (``W_k .. W_o``, by module name; the paper's method)
or, for a plain DT at the same trainable-parameter budget (``rank_for_budget``), on every
block's attention and MLP; everything else is frozen. Because every projection is an ``nn.Linear`` called as a module, the adapter
sits in the computation; code that read ``.weight`` directly would silently skip it (the
fault of the authors' release) and ``tests/test_lora.py`` would fail.

Adapters are saved apart from the base weights (peft's safetensors format, plus
``initial_memory.safetensors`` when M_0 is trained too) and merged for inference.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from dtmem.model.lora_targets import LoRAModules, target_pattern

if TYPE_CHECKING:  # the model package never imports pydantic at run time
    from dtmem.config.model import LoRAConfig

INITIAL_MEMORY_FILE = "initial_memory.safetensors"


class LoRAError(ValueError):
    """LoRA cannot be applied as asked."""


@dataclass(frozen=True)
class ParamCounts:
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def parameter_counts(model: nn.Module) -> ParamCounts:
    """Trainable and total parameters (shared tensors counted once)."""
    seen: dict[int, tuple[int, bool]] = {}
    for p in model.parameters():
        seen[id(p)] = (p.numel(), p.requires_grad)
    return ParamCounts(
        trainable=sum(n for n, req in seen.values() if req),
        total=sum(n for n, _ in seen.values()),
    )


def adapted_layers(
    model: nn.Module, modules: LoRAModules, targets: Sequence[str] | None = None
) -> dict[str, nn.Linear]:
    """The Linear layers that LoRA on ``modules`` (``targets`` of them; None: all) adapts."""
    pattern = target_pattern(modules, targets)
    return {
        n: m
        for n, m in _base(model).named_modules()
        if isinstance(m, nn.Linear) and re.fullmatch(pattern, n)
    }


def adapter_parameters_per_rank(
    model: nn.Module, modules: LoRAModules, targets: Sequence[str] | None = None
) -> int:
    """Trainable parameters that each unit of rank adds: A (r x in) and B (out x r) per layer."""
    return sum(
        m.in_features + m.out_features for m in adapted_layers(model, modules, targets).values()
    )


def rank_for_budget(
    model: nn.Module, modules: LoRAModules, budget: int, targets: Sequence[str] | None = None
) -> int:
    """The rank whose adapter count on ``modules`` is nearest to ``budget`` trainable
    parameters (for instance DT-Mem's memory-LoRA count, to compare a plain DT at an equal
    budget). At least 1, at most the narrowest input width of the adapted layers."""
    layers = adapted_layers(model, modules, targets)
    if not layers:
        raise LoRAError(f"LoRA on {modules} matches no layer of this model")
    per_rank = sum(m.in_features + m.out_features for m in layers.values())
    narrowest = min(m.in_features for m in layers.values())
    return max(1, min(narrowest, round(budget / per_rank)))


def _base(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def apply_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    modules: LoRAModules = "memory",
    targets: Sequence[str] | None = None,
    train_initial_memory: bool = False,
) -> Any:
    """Wraps ``model`` in a peft model whose only trainable weights are the adapters on
    ``modules`` (``targets`` of them; None: all), and M_0 when ``train_initial_memory``.
    Raises LoRAError when no layer matches or the rank is wider than a layer's input."""
    layers = adapted_layers(model, modules, targets)
    if not layers:
        why = (
            "the model has no working memory (a plain DT cannot be memory-fine-tuned)"
            if modules == "memory"
            else "the model has no such layers"
        )
        raise LoRAError(f"LoRA targets {list(targets or [modules])} match no module: {why}")
    narrowest = min(m.in_features for m in layers.values())
    if rank > narrowest:
        raise LoRAError(
            f"lora.rank={rank} is larger than {narrowest}, the narrowest input width of the "
            "layers it adapts"
        )
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; a float works
        lora_dropout=dropout,
        target_modules=target_pattern(modules, targets),
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    for name, p in peft_model.named_parameters():
        p.requires_grad_(
            "lora_" in name or (train_initial_memory and name.endswith("initial_memory"))
        )
    return peft_model


def apply_lora_config(model: nn.Module, cfg: LoRAConfig) -> Any:
    """``apply_lora`` with the settings of a validated ``LoRAConfig``."""
    return apply_lora(
        model,
        rank=cfg.rank,
        alpha=cfg.alpha,
        dropout=cfg.dropout,
        modules=cfg.modules,
        targets=cfg.targets,
        train_initial_memory=cfg.train_initial_memory,
    )


def save_adapter(peft_model: Any, path: str | Path) -> Path:
    """Writes the adapter (and a trained M_0) to the directory ``path``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        peft_model.save_pretrained(str(tmp))
        memories = {
            n: p.detach().contiguous()
            for n, p in peft_model.named_parameters()
            if n.endswith("initial_memory") and p.requires_grad
        }
        if memories:
            from safetensors.torch import save_file

            save_file(memories, str(tmp / INITIAL_MEMORY_FILE))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_adapter(base: nn.Module, path: str | Path) -> Any:
    """Puts the adapter saved at ``path`` onto ``base`` (a model of the same architecture)."""
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise LoRAError(f"{path}: not a LoRA adapter directory (no adapter_config.json)")
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(path))
    memory_file = path / INITIAL_MEMORY_FILE
    if memory_file.is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(memory_file))
        params = dict(model.named_parameters())
        for name, value in tensors.items():
            if name not in params:
                raise LoRAError(f"{memory_file}: {name} is not a parameter of this model")
            params[name].data.copy_(value)
    return model


def merge_adapter(peft_model: Any) -> nn.Module:
    """The base model with the adapters folded into its weights (for inference)."""
    return peft_model.merge_and_unload()
