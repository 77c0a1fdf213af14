"""DT-Mem and plain DT: shapes, causality, determinism, parameter accounting, learning."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dtmem.batch import Batch
from dtmem.config.base import ConfigError, load_config
from dtmem.config.model import MemoryConfig, ModelConfig
from dtmem.model import build_model, dt_loss
from tests.helpers import ACTIONS, BATCH, CONTEXT, random_batch, run, tiny_config

ENCODERS = ["vector", "conv", "patch"]


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("memory", [True, False], ids=["dtmem", "dt"])
def test_shapes_at_odd_sizes(encoder: str, memory: bool) -> None:
    cfg = tiny_config(encoder, memory)
    model = build_model(cfg).eval()
    out = run(model, random_batch(cfg))
    assert out.action.shape == (BATCH, CONTEXT, ACTIONS)
    if encoder == "vector":
        assert out.return_logits is None and out.reward_logits is None
        assert out.action.abs().max() <= 1.0  # tanh head
    else:
        assert out.return_logits is not None and out.return_logits.shape == (BATCH, CONTEXT, 120)
        assert out.reward_logits is not None and out.reward_logits.shape == (BATCH, CONTEXT, 4)
    assert len(out.memory) == (cfg.n_layer if memory else 0)
    assert model.spec.tokens_per_step == {"vector": 3, "conv": 4, "patch": 39}[encoder]


def _perturb_step(b: Batch, step: int, field: str, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    value = getattr(b, field).clone()
    if value.dtype == torch.uint8:
        value[:, step] = torch.randint(0, 256, value[:, step].shape, generator=g, dtype=torch.uint8)
    elif value.dtype == torch.long:
        value[:, step] = (
            value[:, step] + 1 + torch.randint(0, 3, value[:, step].shape, generator=g)
        ) % (120 if field == "returns_to_go" else 4 if field == "rewards" else ACTIONS)
    else:
        value[:, step] = value[:, step] + torch.randn(value[:, step].shape, generator=g)
    return dataclasses.replace(b, **{field: value})


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("memory", [True, False], ids=["dtmem", "dt"])
def test_causal(encoder: str, memory: bool) -> None:
    """Changing any token of step t' leaves every output of steps < t' unchanged, and the
    action predicted at step t does not depend on a_t."""
    torch.manual_seed(0)
    cfg = tiny_config(encoder, memory)
    model = build_model(cfg).eval()
    b = random_batch(cfg)
    base = run(model, b)
    fields = ["observations", "returns_to_go", "actions"] + (
        ["rewards"] if cfg.returns == "atari_bins" else []
    )
    for step in (0, 3, CONTEXT - 1):
        for field in fields:
            out = run(model, _perturb_step(b, step, field, seed=step))
            torch.testing.assert_close(
                out.action[:, :step], base.action[:, :step], rtol=0, atol=1e-6
            )
            if field in ("actions", "rewards"):  # a_t and r_t come after the action's token
                torch.testing.assert_close(
                    out.action[:, step], base.action[:, step], rtol=0, atol=1e-6
                )
            else:
                assert not torch.allclose(out.action[:, step], base.action[:, step]), (field, step)
            if base.return_logits is not None and out.return_logits is not None:
                torch.testing.assert_close(
                    out.return_logits[:, :step], base.return_logits[:, :step], rtol=0, atol=1e-6
                )


@pytest.mark.parametrize("memory", [True, False], ids=["dtmem", "dt"])
def test_two_forwards_agree_exactly(memory: bool) -> None:
    cfg = tiny_config("conv", memory)
    model = build_model(cfg).eval()
    b = random_batch(cfg)
    first, second = run(model, b), run(model, b)
    assert torch.equal(first.action, second.action)
    assert first.return_logits is not None and second.return_logits is not None
    assert torch.equal(first.return_logits, second.return_logits)


def test_no_parameter_or_buffer_created_in_forward() -> None:
    cfg = tiny_config("patch")
    model = build_model(cfg).train()
    before = {n: p.data_ptr() for n, p in model.named_parameters()}
    buffers = {n for n, _ in model.named_buffers()}
    dt_loss(run(model, random_batch(cfg)), random_batch(cfg)).total.backward()
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == before
    assert {n for n, _ in model.named_buffers()} == buffers
    assert all(p.grad is not None for n, p in model.named_parameters()), "a parameter is unused"


def test_slot_count_changes_exactly_the_memory_parameters() -> None:
    small = build_model(tiny_config())
    cfg = tiny_config()
    assert cfg.memory is not None
    bigger = cfg.model_copy(update={"memory": cfg.memory.model_copy(update={"slots": 13 + 9})})
    n_small = sum(p.numel() for p in small.parameters())
    n_big = sum(p.numel() for p in build_model(bigger).parameters())
    assert n_big - n_small == cfg.n_layer * 9 * (cfg.memory.width or cfg.d_model)  # M_0 rows


def test_plain_dt_has_no_memory_parameters() -> None:
    plain = build_model(tiny_config(memory=False))
    assert not any("memory" in n for n, _ in plain.named_parameters())
    assert plain.spec.has_memory is False


@pytest.mark.parametrize("encoder", ["vector", "conv"])
def test_tiny_model_overfits_a_tiny_batch(encoder: str) -> None:
    """With the training recipe (AdamW, clipped gradients), every loss part falls."""
    torch.manual_seed(0)
    cfg = tiny_config(encoder)
    model = build_model(cfg).train()
    b = random_batch(cfg, batch=2 if encoder == "conv" else 4)  # conv frames are the cost
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = dt_loss(run(model, b), b).total.item()
    for _ in range(200):
        loss = dt_loss(run(model, b), b).total
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())


def test_loss_ignores_padded_steps() -> None:
    cfg = tiny_config()
    model = build_model(cfg).eval()
    b = random_batch(cfg)
    mask = torch.ones_like(b.mask)
    mask[:, 5:] = False
    padded = dataclasses.replace(b, mask=mask)
    noisy = _perturb_step(_perturb_step(padded, 5, "actions", 1), 6, "observations", 2)
    torch.testing.assert_close(
        dt_loss(run(model, padded), padded).total, dt_loss(run(model, noisy), noisy).total
    )


def test_frames_must_be_uint8() -> None:
    cfg = tiny_config("conv")
    model = build_model(cfg)
    b = random_batch(cfg)
    with pytest.raises(TypeError, match="uint8"):
        model(b.observations.float() / 255, b.returns_to_go, b.actions, b.rewards, b.timesteps)


def test_window_longer_than_context_is_refused() -> None:
    cfg = tiny_config()
    model = build_model(cfg)
    b = random_batch(cfg.model_copy(update={"context": CONTEXT + 1}))
    with pytest.raises(ValueError, match="longer than the context"):
        run(model, b)


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        (["memory.slots=0"], "memory.slots"),
        (["memory.heads=3", "d_model=22"], "memory"),
        (["n_head=5"], "n_head"),
        (["encoder=mlp"], "encoder"),
        (["memory.sloths=4"], "memory.sloths"),
    ],
)
def test_invalid_config_names_the_field(tmp_path, overrides: list[str], path: str) -> None:
    f = tmp_path / "model.yaml"
    f.write_text("d_model: 22\nn_head: 2\nmemory:\n  slots: 8\n  width: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(ModelConfig, f, overrides)
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg and path.split(".")[0] in msg, msg


def test_config_is_frozen() -> None:
    cfg = ModelConfig()
    with pytest.raises(Exception, match="frozen"):
        cfg.d_model = 3  # type: ignore[misc]
    assert isinstance(cfg.memory, MemoryConfig)


@pytest.mark.parametrize("erase", ["slot", "channel"])
def test_memory_addressing_is_the_forward_pass_own(erase: str) -> None:
    """The probe returns, per block, write (B, K, N) and read (B, L, N) addressing averaged
    over heads, from the same computation as forward: the memory it ends with is forward's."""
    from dtmem.model import memory_addressing
    from dtmem.model.memory import DenseMemory, FactoredMemory

    torch.manual_seed(0)
    base = tiny_config()
    assert base.memory is not None
    cfg = base.model_copy(update={"memory": base.memory.model_copy(update={"erase": erase})})
    model = build_model(cfg).eval()
    b = random_batch(cfg)
    found = memory_addressing(model, b)
    out = run(model, b)
    N, L = cfg.memory.slots, CONTEXT * model.spec.tokens_per_step  # type: ignore[union-attr]
    assert len(found) == cfg.n_layer == len(out.memory)
    for probe, state in zip(found, out.memory, strict=True):
        assert probe.write.shape == (BATCH, CONTEXT, N) and probe.read.shape == (BATCH, L, N)
        torch.testing.assert_close(probe.write.sum(-1), torch.ones(BATCH, CONTEXT))
        torch.testing.assert_close(probe.read.sum(-1), torch.ones(BATCH, L))
        if isinstance(state, FactoredMemory):
            assert isinstance(probe.state, FactoredMemory)
            pairs = [(probe.state.decay, state.decay), (probe.state.rows, state.rows)]
        else:
            assert isinstance(state, DenseMemory) and isinstance(probe.state, DenseMemory)
            pairs = [(probe.state.memory, state.memory)]
        for got, want in pairs:
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    # Causal: changing the last step changes no read or write of the earlier steps.
    changed = memory_addressing(model, _perturb_step(b, CONTEXT - 1, "observations", 3))
    first = found[0]
    n_tok = model.spec.tokens_per_step
    torch.testing.assert_close(
        changed[0].read[:, : (CONTEXT - 1) * n_tok], first.read[:, : (CONTEXT - 1) * n_tok]
    )
    torch.testing.assert_close(changed[0].write[:, :-1], first.write[:, :-1])
    assert not torch.allclose(changed[0].write[:, -1], first.write[:, -1])


def test_memory_addressing_refuses_a_plain_dt() -> None:
    from dtmem.model import memory_addressing

    cfg = tiny_config(memory=False)
    with pytest.raises(ValueError, match="no memory"):
        memory_addressing(build_model(cfg), random_batch(cfg))
