"""LoRA on the working memory: only adapters train, they are in the forward pass, they save,
load and merge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dtmem.config.model import ATTENTION_MLP_PROJECTIONS, MEMORY_PROJECTIONS, LoRAConfig
from dtmem.model import build_model, dt_loss
from dtmem.model.lora import (
    LoRAError,
    adapter_parameters_per_rank,
    apply_lora,
    apply_lora_config,
    load_adapter,
    merge_adapter,
    parameter_counts,
    rank_for_budget,
    save_adapter,
)
from tests.helpers import random_batch, run, tiny_config


def lora_model(train_initial_memory: bool = False, cfg=None):
    torch.manual_seed(0)
    cfg = cfg or tiny_config("conv")
    base = build_model(cfg)
    lc = LoRAConfig(rank=3, alpha=6.0, train_initial_memory=train_initial_memory)
    model = apply_lora_config(base, lc)
    return cfg, model


def test_only_adapters_are_trainable() -> None:
    cfg, model = lora_model()
    counts = parameter_counts(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert counts.trainable > 0 and counts.trainable < counts.total
    assert trainable and all("lora_" in n for n in trainable)
    # every target projection of every block got an adapter
    for layer in range(cfg.n_layer):
        for proj in MEMORY_PROJECTIONS:
            assert any(f"blocks.{layer}.memory.{proj}.lora_A" in n for n in trainable), (
                layer,
                proj,
            )
    assert not any("attn" in n or "mlp" in n for n in trainable)


def _step_and_check(model: nn.Module, b, steps: int) -> None:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(steps):
        opt.zero_grad()
        dt_loss(run(model, b), b).total.backward()
        opt.step()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient: {n}"
            assert not torch.equal(p, before[n]), f"adapter unchanged: {n}"
        else:
            assert p.grad is None and torch.equal(p, before[n]), f"frozen weight changed: {n}"


def test_an_optimiser_step_changes_adapters_and_nothing_else() -> None:
    """Mid-training (adapters non-zero): one step gives every adapter weight a gradient."""
    cfg, model = lora_model()
    _nonzero_adapters(model)
    _step_and_check(model, random_batch(cfg), steps=1)


def test_training_from_peft_init_reaches_every_adapter() -> None:
    """peft starts B at zero, so A gets its first gradient on the second step."""
    cfg, model = lora_model()
    _step_and_check(model, random_batch(cfg), steps=2)


def _nonzero_adapters(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_adapted_output_differs_from_base_and_merge_matches() -> None:
    cfg, model = lora_model()
    b = random_batch(cfg)
    model.eval()
    with model.disable_adapter():
        base_out = run(model, b).action
    torch.testing.assert_close(run(model, b).action, base_out)  # B = 0 at the start
    _nonzero_adapters(model)
    adapted = run(model, b).action
    assert (adapted - base_out).abs().max() > 1e-3, "the adapters are not in the forward pass"
    merged = merge_adapter(model).eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(run(merged, b).action, adapted, rtol=1e-5, atol=1e-5)


def test_an_adapter_skipped_by_reading_weight_would_be_caught() -> None:
    """The authors' fault: code that reads ``.weight`` directly bypasses the adapter.
    Simulate it and check that the output then equals the base output (which the test
    above forbids)."""
    cfg, model = lora_model()
    b = random_batch(cfg)
    model.eval()
    _nonzero_adapters(model)
    adapted = run(model, b).action
    for module in model.modules():
        if hasattr(module, "base_layer") and isinstance(module.base_layer, nn.Linear):
            base = module.base_layer
            module.forward = lambda x, base=base: x @ base.weight.T + base.bias
    skipped = run(model, b).action
    with model.disable_adapter():
        base_out = run(model, b).action
    torch.testing.assert_close(skipped, base_out)
    assert (adapted - skipped).abs().max() > 1e-3


def test_adapter_saves_and_loads_apart_from_base(tmp_path) -> None:
    cfg, model = lora_model(train_initial_memory=True)
    b = random_batch(cfg)
    _nonzero_adapters(model)
    with torch.no_grad():
        model.base_model.model.blocks[0].memory.initial_memory.add_(1.0)
    model.eval()
    expected = run(model, b).action
    path = save_adapter(model, tmp_path / "adapter")
    files = sorted(p.name for p in path.iterdir())
    assert "adapter_model.safetensors" in files and "initial_memory.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    size = (path / "adapter_model.safetensors").stat().st_size
    n_adapter = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert size < 4 * n_adapter + 16_384  # adapters only, not the base weights
    torch.manual_seed(0)
    fresh = build_model(cfg).eval()  # same init seed as lora_model's base
    loaded = load_adapter(fresh, path).eval()
    torch.testing.assert_close(run(loaded, b).action, expected)


def test_trainable_initial_memory_is_counted() -> None:
    _, without = lora_model(train_initial_memory=False)
    cfg, with_m0 = lora_model(train_initial_memory=True)
    assert cfg.memory is not None
    extra = parameter_counts(with_m0).trainable - parameter_counts(without).trainable
    assert extra == cfg.n_layer * cfg.memory.slots * cfg.memory.width


def test_plain_dt_has_nothing_to_adapt() -> None:
    with pytest.raises(LoRAError, match="match no module"):
        lora_model(cfg=tiny_config(memory=False))


def test_unknown_target_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown LoRA target"):
        LoRAConfig(targets=("write_key", "W_q"))


def test_load_adapter_from_non_adapter_dir(tmp_path) -> None:
    with pytest.raises(LoRAError, match="not a LoRA adapter"):
        load_adapter(build_model(tiny_config()), tmp_path)


def test_plain_dt_lora_on_attention_and_mlp_trains_only_those_adapters() -> None:
    torch.manual_seed(0)
    cfg = tiny_config("vector", memory=False)
    lc = LoRAConfig(rank=2, alpha=4.0, modules="attention_mlp")
    model = apply_lora_config(build_model(cfg), lc)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    for layer in range(cfg.n_layer):
        for proj in ATTENTION_MLP_PROJECTIONS:
            assert any(f"blocks.{layer}.{proj}.lora_A" in n for n in trainable), (layer, proj)
    assert trainable and all("lora_" in n for n in trainable)
    expected = lc.rank * adapter_parameters_per_rank(build_model(cfg), "attention_mlp")
    assert parameter_counts(model).trainable == expected
    _step_and_check(model, random_batch(cfg), steps=2)


def test_rank_for_budget_matches_dtmem_memory_lora_within_one_rank_step() -> None:
    """A plain DT's attention+MLP LoRA sized to DT-Mem's memory-LoRA trainable count."""
    dtmem_cfg = tiny_config("vector", d_model=40, n_head=2)
    _, dtmem = lora_model(cfg=dtmem_cfg)
    budget = parameter_counts(dtmem).trainable
    plain = build_model(tiny_config("vector", memory=False, d_model=40, n_head=2))
    per_rank = adapter_parameters_per_rank(plain, "attention_mlp")
    rank = rank_for_budget(plain, "attention_mlp", budget)
    got = parameter_counts(
        apply_lora(plain, rank=rank, alpha=1.0, dropout=0.0, modules="attention_mlp")
    ).trainable
    assert got == rank * per_rank
    assert abs(got - budget) <= per_rank / 2  # no other rank is nearer
    fresh = build_model(tiny_config("vector", memory=False, d_model=40, n_head=2))
    assert rank_for_budget(fresh, "attention_mlp", 1) == 1  # never zero


def test_lora_rank_wider_than_the_layers_is_refused() -> None:
    from dtmem.config.model import check_lora_fits_model

    cfg = tiny_config()  # d_model 22, memory width 10
    with pytest.raises(ValueError, match=r"lora.rank=11 is larger than 10"):
        check_lora_fits_model(LoRAConfig(rank=11), cfg)
    check_lora_fits_model(LoRAConfig(rank=10), cfg)
    with pytest.raises(ValueError, match=r"lora.rank=23 is larger than 22"):
        check_lora_fits_model(LoRAConfig(rank=23, modules="attention_mlp"), cfg)
    with pytest.raises(LoRAError, match=r"lora.rank=11 is larger than 10"):
        apply_lora_config(build_model(cfg), LoRAConfig(rank=11))


def test_targets_must_belong_to_the_modules() -> None:
    with pytest.raises(ValueError, match="unknown LoRA target"):
        LoRAConfig(modules="attention_mlp", targets=("write_key",))
    assert LoRAConfig(modules="attention_mlp", targets=("mlp.fc",)).targets == ("mlp.fc",)
