"""The working memory against a plain float64 loop written from the spec's equations."""

from __future__ import annotations

import math

import pytest
import torch

from dtmem.model.memory import DenseMemory, FactoredMemory, WorkingMemory, max_erase_bound
from dtmem.model.memory_ops import read, write_initial, write_previous
from dtmem.model.memory_spec import MemorySpec


def reference_memory(mem: WorkingMemory, h: torch.Tensor) -> torch.Tensor:
    """Builds M_t explicitly, one sample, step, token, head and slot at a time."""
    B, L, d = h.shape
    n_tok, H, d_h, N = mem.tokens_per_step, mem.heads, mem.head_dim, mem.slots
    K = L // n_tok
    out = torch.zeros(B, L, d, dtype=h.dtype)
    for b in range(B):
        M0 = mem.initial_memory.detach().clone()
        M = M0.clone()
        for t in range(K):
            for j in range(t * n_tok, (t + 1) * n_tok):  # read M_{t-1}
                y = mem.read_key(mem.read_query(h[b, j]))
                r = torch.zeros(mem.width, dtype=h.dtype)
                for hd in range(H):
                    sl = slice(hd * d_h, (hd + 1) * d_h)
                    scores = torch.stack([M[i, sl] @ y[sl] for i in range(N)]) / math.sqrt(d_h)
                    alpha = torch.softmax(scores, dim=0)
                    r[sl] = sum(alpha[i] * M[i, sl] for i in range(N))
                out[b, j] = mem.out(mem.read_value(r))
            e = h[b, (t + 1) * n_tok - 1]  # write from the step's last token
            x = mem.write_query(mem.write_key(e))
            a = mem.add(e)
            g = mem.max_erase * torch.sigmoid(mem.erase_gate(e))
            addressed = M0 if mem.addressing == "initial" else M
            new = M.clone()
            for hd in range(H):
                sl = slice(hd * d_h, (hd + 1) * d_h)
                scores = torch.stack([addressed[i, sl] @ x[sl] for i in range(N)])
                w = torch.softmax(scores / math.sqrt(d_h), dim=0)
                for i in range(N):
                    gate = g[hd] if mem.erase == "slot" else g[sl]
                    new[i, sl] = (1 - gate * w[i]) * M[i, sl] + w[i] * a[sl]
            M = new
    return out


def make_memory(
    erase: str = "slot",
    addressing: str = "previous",
    *,
    d_model: int = 11,
    context: int = 8,
    **kw: object,
) -> WorkingMemory:
    args: dict[str, object] = dict(slots=7, width=6, heads=2, max_erase=0.9, init_std=1.0)
    args.update(kw)
    spec = MemorySpec(erase=erase, addressing=addressing, **args)  # type: ignore[arg-type]
    mem = WorkingMemory(d_model, spec, tokens_per_step=3, context=context)
    for p in mem.parameters():  # make every projection matter
        torch.nn.init.normal_(p, std=0.5)
    return mem.double()


@pytest.mark.parametrize(
    ("erase", "addressing"),
    [("slot", "previous"), ("slot", "initial"), ("channel", "previous"), ("channel", "initial")],
)
def test_matches_plain_loop_reference(erase: str, addressing: str) -> None:
    torch.manual_seed(0)
    mem = make_memory(erase, addressing)
    h = torch.randn(3, 5 * 3, 11, dtype=torch.float64)
    out, _ = mem(h, mem.initial_state(3))
    with torch.no_grad():
        ref = reference_memory(mem, h)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def dense_of(mem: WorkingMemory, state: FactoredMemory) -> torch.Tensor:
    """M = P (M_0 + Ĉ^T A), (H, B, N, d_h)."""
    m0 = mem._heads_of_memory().unsqueeze(1)  # (H, 1, N, d_h)
    return state.decay.unsqueeze(-1) * (m0 + state.rows.transpose(2, 3) @ state.adds)


def test_state_carries_across_windows() -> None:
    """The returned state is the whole memory: two half windows equal one whole window."""
    torch.manual_seed(1)
    mem = make_memory(heads=3)
    h = torch.randn(2, 6 * 3, 11, dtype=torch.float64)
    whole, end = mem(h, mem.initial_state(2))
    first, mid = mem(h[:, :9], mem.initial_state(2))
    second, end2 = mem(h[:, 9:], mid)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    assert isinstance(end, FactoredMemory) and isinstance(end2, FactoredMemory)
    torch.testing.assert_close(end.decay, end2.decay)
    torch.testing.assert_close(dense_of(mem, end), dense_of(mem, end2))


def test_factored_state_equals_dense_memory() -> None:
    """P (M_0 + Ĉ^T A) after K writes is the memory that the step-by-step form builds."""
    torch.manual_seed(2)
    mem = make_memory()
    h = torch.randn(1, 4 * 3, 11, dtype=torch.float64)
    _, state = mem(h, mem.initial_state(1))
    assert isinstance(state, FactoredMemory)
    dense = make_memory(erase="channel")
    # Same weights, but an erase gate per channel that repeats the per-head gate.
    sd = {k: v for k, v in mem.state_dict().items() if not k.startswith("erase_gate")}
    dense.load_state_dict(sd, strict=False)
    with torch.no_grad():
        dense.erase_gate.weight.copy_(mem.erase_gate.weight.repeat_interleave(mem.head_dim, 0))
        dense.erase_gate.bias.copy_(mem.erase_gate.bias.repeat_interleave(mem.head_dim, 0))
    _, dstate = dense(h, dense.initial_state(1))
    assert isinstance(dstate, DenseMemory)
    torch.testing.assert_close(dense_of(mem, state), dstate.memory)


def test_strong_erasing_stays_finite_in_float32() -> None:
    """Addressing one slot with the largest erase every step: 1/P is at its largest."""
    torch.manual_seed(4)
    mem = make_memory(slots=5, context=20, max_erase=max_erase_bound(20)).float()
    with torch.no_grad():
        mem.erase_gate.bias.fill_(40.0)  # g = g_max
        mem.write_query.weight.zero_()
        mem.write_query.bias.fill_(50.0)  # sharp addressing
    h = torch.randn(2, 20 * 3, 11, requires_grad=True)
    out, state = mem(h, mem.initial_state(2))
    assert isinstance(state, FactoredMemory)
    assert state.decay.min() < 1e-10  # some slot was erased hard, many times
    out.sum().backward()
    assert torch.isfinite(out).all() and h.grad is not None and torch.isfinite(h.grad).all()
    ref = reference_memory(mem.double(), h.detach().double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-3, atol=1e-4)


def test_max_erase_is_bounded_by_the_context() -> None:
    with pytest.raises(ValueError, match="max_erase"):
        make_memory(context=40, max_erase=0.9)


@pytest.mark.parametrize("erase", ["slot", "channel"])
def test_gradients_finite_with_zero_memory(erase: str) -> None:
    torch.manual_seed(3)
    mem = make_memory(erase).float()
    with torch.no_grad():
        mem.initial_memory.zero_()
    h = torch.randn(3, 7 * 3, 11, requires_grad=True)
    out, _ = mem(h, mem.initial_state(3))
    out.square().sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()
    for name, p in mem.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert mem.initial_memory.grad is not None and mem.initial_memory.grad.abs().sum() > 0


def test_state_type_must_match_erase_mode() -> None:
    mem = make_memory("slot")
    other = make_memory("channel")
    h = torch.randn(1, 3, 11, dtype=torch.float64)
    with pytest.raises(TypeError):
        mem(h, other.initial_state(1))


def test_sequence_must_be_whole_steps() -> None:
    mem = make_memory()
    with pytest.raises(ValueError, match="multiple of 3"):
        mem(torch.randn(1, 7, 11, dtype=torch.float64), mem.initial_state(1))


@pytest.mark.parametrize("erase", ["slot", "channel"])
def test_read_addressing_is_kept_only_when_recorded(erase: str) -> None:
    """Training (``forward``) does not keep the read addressing; ``step`` does by default,
    and what is read is the same either way."""
    torch.manual_seed(4)
    mem = make_memory(erase)
    h = torch.randn(2, 4 * 3, 11, dtype=torch.float64)
    kept = mem.step(h, mem.initial_state(2))
    dropped = mem.step(h, mem.initial_state(2), record=False)
    assert dropped.read is None and kept.read is not None
    assert kept.read.shape == (2, 2, 12, 7)
    torch.testing.assert_close(kept.read.sum(-1), torch.ones(2, 2, 12, dtype=torch.float64))
    torch.testing.assert_close(dropped.out, kept.out, rtol=0, atol=0)
    torch.testing.assert_close(mem(h, mem.initial_state(2))[0], kept.out, rtol=0, atol=0)


@pytest.mark.parametrize("addressing", ["previous", "initial"])
def test_gradients_match_finite_differences(addressing: str) -> None:
    torch.manual_seed(5)
    mem = make_memory(addressing=addressing, slots=4, width=4, heads=2, d_model=5)
    h = torch.randn(2, 3 * 3, 5, dtype=torch.float64, requires_grad=True)
    m0 = mem.initial_memory.detach().clone().requires_grad_(True)

    def f(h: torch.Tensor, m0: torch.Tensor) -> torch.Tensor:
        state = mem.initial_state(2)
        return torch.func.functional_call(mem, {"initial_memory": m0}, (h, state))[0]

    assert torch.autograd.gradcheck(f, (h, m0), eps=1e-6, atol=1e-6)


def test_hand_written_gradients_with_a_carried_state() -> None:
    """The write recurrence and the read, with rows already in the state (S0 = 2): gradients
    reach the state's decay and rows too."""
    g = torch.Generator().manual_seed(6)
    H, B, K, N, S0, d_h, n_tok = 2, 3, 3, 5, 2, 4, 2

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)

    s0, ax, rows0 = rand(H, B, K, N), rand(H, B, K, S0 + K), rand(H, B, S0, N)
    gate = (torch.rand(H, B, K, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    decay0 = (torch.rand(H, B, N, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    for write in (
        lambda *a: write_previous(*a)[:3],
        lambda s0, ax, gate, decay0, rows0: write_initial(s0, gate, decay0, rows0)[:3],
    ):
        assert torch.autograd.gradcheck(write, (s0, ax, gate, decay0, rows0), atol=1e-7)
    y, m0, adds = rand(H, B, K * n_tok, d_h), rand(H, N, d_h), rand(H, B, S0 + K, d_h)
    rows, decay = (
        rand(H, B, S0 + K, N),
        (decay0.detach()[:, :, None] * 0.9 ** torch.arange(K)[:, None]),
    )
    decay.requires_grad_(True)
    steps = torch.arange(K)
    visible = torch.cat([torch.ones(K, S0, dtype=torch.bool), steps[:, None] > steps], dim=1)
    visible = visible.repeat_interleave(n_tok, dim=0)
    assert torch.autograd.gradcheck(
        lambda y, m0, rows, adds, decay: read(y, m0, rows, adds, decay, visible, 0.7)[0],
        (y, m0, rows, adds, decay),
        atol=1e-7,
    )


@pytest.mark.parametrize("heads", [1, 2])
def test_read_backward_in_parts_equals_the_whole_batch(
    monkeypatch: pytest.MonkeyPatch, heads: int
) -> None:
    """The read's backward runs a few samples at a time (``memory_ops._PART_BYTES``); one
    sample a part gives the gradients of the whole batch at once and passes gradcheck, with
    one head (each part written in place) and two (each part copied into place)."""
    from dtmem.model import memory_ops

    g = torch.Generator().manual_seed(7)
    H, B, K, N, S0, d_h, n_tok = heads, 3, 3, 5, 2, 4, 2

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)

    y, m0, adds = rand(H, B, K * n_tok, d_h), rand(H, N, d_h), rand(H, B, S0 + K, d_h)
    rows = rand(H, B, S0 + K, N)
    decay = (torch.rand(H, B, K, N, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    steps = torch.arange(K)
    visible = torch.cat([torch.ones(K, S0, dtype=torch.bool), steps[:, None] > steps], dim=1)
    visible = visible.repeat_interleave(n_tok, dim=0)
    inputs = (y, m0, rows, adds, decay)

    def f(*args: torch.Tensor) -> torch.Tensor:
        return read(*args[:4], args[4], visible, 0.7)[0]

    upstream = torch.randn(H, B, K * n_tok, d_h, generator=g, dtype=torch.float64)
    whole = torch.autograd.grad(f(*inputs), inputs, upstream)
    monkeypatch.setattr(memory_ops, "_PART_BYTES", 1)  # one sample a part
    parts = torch.autograd.grad(f(*inputs), inputs, upstream)
    for a, b in zip(whole, parts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(f, inputs, atol=1e-7)
