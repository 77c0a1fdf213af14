"""Model and LoRA configs: the validated description that ``dtmem.model.build_model`` turns
into modules. The model code itself never sees these classes (it takes flat arguments)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dtmem.config.base import FrozenConfig
from dtmem.model.lora_targets import (
    ATTENTION_MLP_PROJECTIONS,
    MEMORY_PROJECTIONS,
    PROJECTIONS,
    LoRAModules,
)
from dtmem.model.memory_spec import MIN_DECAY, max_erase_bound

__all__ = [
    "ATTENTION_MLP_PROJECTIONS",
    "MEMORY_PROJECTIONS",
    "LoRAConfig",
    "MemoryConfig",
    "ModelConfig",
    "check_lora_fits_model",
]


class MemoryConfig(FrozenConfig):
    """The working memory inside every block (spec section 2)."""

    slots: int = Field(1024, gt=0, description="N: number of memory slots per block.")
    width: int | None = Field(
        None, gt=0, description="d_m: width of a slot; null means the model width d."
    )
    heads: int = Field(1, gt=0, description="Heads of memory addressing; must divide the width.")
    erase: Literal["slot", "channel"] = Field(
        "slot",
        description="'slot': one erase gate per head and slot (unrolled, fast, the default); "
        "'channel': NTM erase per channel (builds M_t step by step; a slow reference).",
    )
    addressing: Literal["previous", "initial"] = Field(
        "previous",
        description="Write addressing against M_{t-1} ('previous', the paper) or against M_0 "
        "('initial', no sequential dependency; an option to measure).",
    )
    max_erase: float = Field(
        0.9,
        gt=0.0,
        lt=1.0,
        description="g_max: the largest erase of one step, g = g_max sigmoid(W_g e). Bounded so "
        f"that (1 - g_max)^context >= {MIN_DECAY:g} (the unrolled memory divides by what is "
        "left).",
    )
    init_std: float = Field(1.0, gt=0, description="Std of the random initial memory M_0.")


class ModelConfig(FrozenConfig):
    """A Decision Transformer, with working memory (DT-Mem) or without (plain DT)."""

    encoder: Literal["vector", "conv", "patch"] = Field(
        "vector",
        description="Observation encoder: 'vector' (Linear, e.g. Meta-World's 39 dims), "
        "'conv' (DQN Nature CNN on 4x84x84 frames, 1 token per step) or 'patch' "
        "(MDT: 14x14 patches of 4x84x84 frames, 36 tokens per step).",
    )
    obs_dim: int = Field(39, gt=0, description="Size of a vector observation ('vector' only).")
    action_kind: Literal["discrete", "continuous"] = Field(
        "continuous", description="Discrete actions (cross-entropy) or continuous (tanh, MSE)."
    )
    num_actions: int = Field(
        18, gt=1, description="Discrete actions (the full Atari set is 18); 'discrete' only."
    )
    act_dim: int = Field(4, gt=0, description="Continuous action size; 'continuous' only.")
    returns: Literal["continuous", "atari_bins"] = Field(
        "continuous",
        description="'continuous': return-to-go divided by return_scale, a Linear input. "
        "'atari_bins': MDT's integer returns in [-20, 100) as 120 bins, with a return "
        "head, a reward token and a reward head (4 classes).",
    )
    return_scale: float = Field(
        1.0, gt=0, description="Continuous return-to-go is divided by this before the model."
    )
    context: int = Field(20, gt=0, description="K: steps in a window.")
    n_layer: int = Field(3, gt=0, description="Transformer blocks.")
    n_head: int = Field(1, gt=0, description="Attention heads; must divide d_model.")
    d_model: int = Field(128, gt=0, description="Model width d.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on embeddings/residuals.")
    max_timestep: int = Field(
        0,
        ge=0,
        description="Size of a learned episode-timestep embedding; 0 disables it (MDT has none).",
    )
    memory: MemoryConfig | None = Field(
        default_factory=MemoryConfig,
        description="The working memory; null builds a plain Decision Transformer.",
    )

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"n_head={self.n_head} does not divide d_model={self.d_model}")
        if self.memory is not None:
            width = self.memory.width or self.d_model
            if width % self.memory.heads:
                raise ValueError(
                    f"memory.heads={self.memory.heads} does not divide memory width {width}"
                )
            bound = max_erase_bound(self.context)
            if self.memory.max_erase > bound:
                raise ValueError(
                    f"memory.max_erase={self.memory.max_erase} is above {bound:.4f}, the most a "
                    f"context of {self.context} steps allows"
                )
        if self.returns == "atari_bins" and self.action_kind != "discrete":
            raise ValueError("returns='atari_bins' needs action_kind='discrete'")
        if self.encoder in ("conv", "patch") and self.returns != "atari_bins":
            raise ValueError(f"encoder={self.encoder!r} is the Atari encoder: use atari_bins")
        return self


class LoRAConfig(FrozenConfig):
    """peft LoRA adapters: on the working memory's projections (spec section 3, the default), or
    on attention and MLP (a plain DT's counterpart at an equal trainable-parameter budget)."""

    rank: int = Field(
        4,
        gt=0,
        description="LoRA rank r (authors' default 4); at most the narrowest input width of "
        "the layers it adapts.",
    )
    alpha: float = Field(1.0, gt=0, description="LoRA alpha; the update is scaled by alpha/r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    modules: LoRAModules = Field(
        "memory",
        description="'memory': the working memory's projections (W_k .. W_o); "
        "'attention_mlp': every block's attention (qkv, proj) and MLP (fc, proj).",
    )
    targets: tuple[str, ...] | None = Field(
        None,
        min_length=1,
        description="The projections of `modules` that get adapters; null: all of them. "
        f"memory: {', '.join(MEMORY_PROJECTIONS)}; "
        f"attention_mlp: {', '.join(ATTENTION_MLP_PROJECTIONS)}.",
    )
    train_initial_memory: bool = Field(
        False, description="Also train M_0 (not a Linear, so outside LoRA)."
    )

    @model_validator(mode="after")
    def _check_targets(self) -> LoRAConfig:
        valid = PROJECTIONS[self.modules]
        unknown = [t for t in self.targets or () if t not in valid]
        if unknown:
            raise ValueError(
                f"unknown LoRA target(s) {unknown} for modules={self.modules!r}; valid: "
                f"{', '.join(valid)}"
            )
        return self


def check_lora_fits_model(lora: LoRAConfig, model: ModelConfig) -> None:
    """LoRA must find its layers in ``model`` and its rank must not exceed the narrowest input
    width among them (a larger rank adds parameters but no expressiveness)."""
    d = model.d_model
    if lora.modules == "memory":
        if model.memory is None:
            raise ValueError("lora.modules='memory': the model has no working memory")
        d_m = model.memory.width or d
        widths = {name: d for name in ("write_key", "erase_gate", "add", "read_query")}
        widths.update({name: d_m for name in ("write_query", "read_key", "read_value", "out")})
    else:
        widths = {"attn.qkv": d, "attn.proj": d, "mlp.fc": d, "mlp.proj": 4 * d}
    narrowest = min(widths[t] for t in lora.targets or PROJECTIONS[lora.modules])
    if lora.rank > narrowest:
        raise ValueError(
            f"lora.rank={lora.rank} is larger than {narrowest}, the narrowest input width of "
            "the layers it adapts"
        )
