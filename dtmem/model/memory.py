"""The working memory of DT-Mem (spec section 2): write, then read, once per block.

Memory ``M`` has ``N`` slots of width ``d_m``, split into ``H`` heads of width ``d_h`` the way
attention splits its width. Its initial value ``M_0`` is a learned parameter. Tokens are
grouped by step: step t of the window has ``n_tok`` tokens, and ``h`` is the block's normalised
input, (B, L, d) with L = K * n_tok.

Write, once per step t, from the step summary e_t = h[last token of step t]::

    k_t = W_k(e_t)                                        write key           (B, d_m)
    w_t = softmax_i( M_{t-1}[i] . W_q(k_t) / sqrt(d_h) )  content addressing  (B, H, N)
    g_t = g_max sigmoid(W_g(e_t))                         erase strength      (B, H)
    a_t = W_a(e_t)                                        add vector          (B, d_m)
    M_t[i] = (1 - g_t w_t[i]) M_{t-1}[i] + w_t[i] a_t     erase, then add

Read, for every token j of step t, from the memory before step t's own write::

    q_j   = W_r(h_j)
    r_j   = W_rv( softmax_i( M_{t-1}[i] . W_rk(q_j) / sqrt(d_h) ) M_{t-1} )
    out_j = W_o(r_j)

With one erase gate per slot (``erase="slot"``) the memory unrolls into the shared ``M_0`` plus
the add vectors, and is never materialised per sample and step. With
``P_t[i] = prod_{r<=t} (1 - g_r w_r[i])`` (what is left of slot i) and rows
``Ĉ_s[i] = w_s[i] / P_s[i]`` (an add's weight, before the later decay)::

    M_t[i] = P_t[i] ( M_0[i] + sum_{s<=t} Ĉ_s[i] a_s )

which is the spec's ``P_t M_0 + C_t A`` with ``C_t[i, s] = P_t[i] Ĉ_s[i]``. The decay
factors out of both products with the memory::

    M_{t-1}[i] . q = P_{t-1}[i] ( M_0[i] . q + sum_{s<t} Ĉ_s[i] (a_s . q) )
    sum_i α_i M_{t-1}[i] = (α P_{t-1}) M_0 + sum_{s<t} ((α P_{t-1}) . Ĉ_s) a_s

so reads are one large product with ``M_0`` per head for the whole batch plus an
(L x S) x (S x N) product with the rows, and only the N-wide bookkeeping of P and the write
addressing runs step by step (``memory_ops.py``, with gradients by hand; addressing M_0
needs no loop at all). Rows are never rescaled. ``g_max`` bounds the erase of one step
so that ``1 / P`` stays inside float32 (and bf16) range over a window: ``(1 - g_max)^K >=
MIN_DECAY`` is checked by the config and again here.

``erase="channel"`` (the NTM erase, one gate per channel) does not unroll: it builds M_t step by
step and is kept as a slow reference (with either addressing).

Every W is an ``nn.Linear`` called as a module on per-token or per-step vectors, never read
through ``.weight``: that is what keeps LoRA adapters (which live in the Linear's forward) in
the computation. The memory state is passed in and returned; nothing is stored on ``self``.
Per-head tensors are head-major, (H, B, ...), so that products with the shared ``M_0`` are one
matrix multiply per head over all B * L rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dtmem.model.memory_ops import read, write_initial, write_previous
from dtmem.model.memory_spec import MIN_DECAY, MemorySpec, max_erase_bound

__all__ = [
    "MIN_DECAY",
    "DenseMemory",
    "FactoredMemory",
    "MemoryState",
    "MemoryStep",
    "WorkingMemory",
    "max_erase_bound",
]


@dataclass(frozen=True)
class FactoredMemory:
    """M = decay * (M_0 + rows^T adds), per head (the ``erase="slot"`` state).

    decay  (H, B, N)       P: what is left of each slot since the state's origin
    rows   (H, B, S, N)    Ĉ: each add's weight in each slot, before the later decay
    adds   (H, B, S, d_h)  A: the add vectors written so far (S of them)
    """

    decay: torch.Tensor
    rows: torch.Tensor
    adds: torch.Tensor


@dataclass(frozen=True)
class DenseMemory:
    """M itself, (H, B, N, d_h) (the ``erase="channel"`` state)."""

    memory: torch.Tensor


MemoryState = FactoredMemory | DenseMemory


@dataclass(frozen=True)
class MemoryStep:
    """What one call of the memory did, per head.

    out    (B, L, d)     the read, projected back to the model width
    state                the memory after the K writes
    write  (H, B, K, N)  w_t, the write addressing of each step (a record, no gradient)
    read   (H, B, L, N)  the read addressing of each token over the slots of M_{t-1}; None
                         when the step was not asked to record it (``step(record=False)``)
    decays (H, B, K, N)  P before each step's write, what its tokens read (the factored
                         memory; else None): with ``state`` what ``read_at`` needs
    """

    out: torch.Tensor
    state: MemoryState
    write: torch.Tensor
    read: torch.Tensor | None
    decays: torch.Tensor | None = None


class WorkingMemory(nn.Module):
    """Content-addressable memory: write each step's summary, read for every token.

    Args:
        d_model: width d of the tokens.
        spec: slots N, width d_m, heads, erase, addressing, g_max, init std.
        tokens_per_step: n_tok; the sequence length must be a multiple of it.
        context: the longest window, in steps; bounds ``spec.max_erase``.
    """

    def __init__(self, d_model: int, spec: MemorySpec, tokens_per_step: int, context: int) -> None:
        super().__init__()
        if not 0.0 < spec.max_erase <= max_erase_bound(context):
            raise ValueError(
                f"max_erase={spec.max_erase} must be in (0, {max_erase_bound(context):.4f}] for "
                f"a context of {context} steps (1/P must stay finite in float32)"
            )
        self.spec = spec
        self.slots, self.width, self.heads = spec.slots, spec.width, spec.heads
        self.head_dim = spec.width // spec.heads
        self.tokens_per_step, self.context = tokens_per_step, context
        self.erase, self.addressing, self.max_erase = spec.erase, spec.addressing, spec.max_erase
        width = spec.width
        self.initial_memory = nn.Parameter(torch.randn(spec.slots, width) * spec.init_std)  # M_0
        self.write_key = nn.Linear(d_model, width)  # W_k
        self.write_query = nn.Linear(width, width)  # W_q
        self.erase_gate = nn.Linear(d_model, spec.heads if spec.erase == "slot" else width)  # W_g
        self.add = nn.Linear(d_model, width)  # W_a
        self.read_query = nn.Linear(d_model, width)  # W_r
        self.read_key = nn.Linear(width, width)  # W_rk
        self.read_value = nn.Linear(width, width)  # W_rv
        self.out = nn.Linear(width, d_model)  # W_o
        # causal[t, s]: step t reads the add of step s only if s < t (a constant, not learned)
        steps = torch.arange(context)
        self.causal: torch.Tensor
        self.register_buffer("causal", steps[:, None] > steps[None, :], persistent=False)

    def initial_state(self, batch_size: int) -> MemoryState:
        """The state before any write: M = M_0 for every sample."""
        p = self.initial_memory
        H, B, N = self.heads, batch_size, self.slots
        if self.erase == "channel":
            return DenseMemory(memory=self._heads_of_memory().unsqueeze(1).expand(H, B, N, -1))
        return FactoredMemory(
            decay=p.new_ones(H, B, N),
            rows=p.new_zeros(H, B, 0, N),
            adds=p.new_zeros(H, B, 0, self.head_dim),
        )

    def forward(self, h: torch.Tensor, state: MemoryState) -> tuple[torch.Tensor, MemoryState]:
        """h (B, L, d), L = K * n_tok -> (out (B, L, d), the state after the K writes)."""
        step = self.step(h, state, record=False)
        return step.out, step.state

    def step(
        self,
        h: torch.Tensor,
        state: MemoryState,
        at: torch.Tensor | None = None,
        record: bool = True,
    ) -> MemoryStep:
        """As ``forward``, with the write and read addressing of the window kept (the read
        addressing only if ``record``: it is the size of the step's largest tensor).

        ``at`` (B, q), token indices per sample: read only for those tokens (all K writes
        still run, from the step summaries); ``out`` is then (B, q, d) and ``read``
        (H, B, q, N), and rows of ``h`` other than the summaries and ``at`` are not used.
        The channel erase computes every token's read and keeps those.
        """
        B, L, _ = h.shape
        n_tok, H, d_h = self.tokens_per_step, self.heads, self.head_dim
        if L % n_tok:
            raise ValueError(f"sequence length {L} is not a multiple of {n_tok} tokens per step")
        K = L // n_tok
        if K > self.context:
            raise ValueError(
                f"window of {K} steps is longer than the memory's context {self.context}"
            )
        scale = 1.0 / math.sqrt(d_h)
        e = h.view(B, K, n_tok, -1)[:, :, -1].contiguous()  # (B, K, d): step summaries e_t
        x = self._split(self.write_query(self.write_key(e)) * scale)  # (H, B, K, d_h)
        a = self._split(self.add(e))  # (H, B, K, d_h): a_t
        g = self.max_erase * torch.sigmoid(self.erase_gate(e))  # (B, K, H) or (B, K, d_m)
        factored = isinstance(state, FactoredMemory)
        h_read = h if at is None or not factored else _rows(h, at)  # (B, L or q, d)
        y = self._split(self.read_key(self.read_query(h_read)))  # (H, B, L or q, d_h), unscaled
        new_state: MemoryState
        decays = None
        if isinstance(state, FactoredMemory):
            if self.erase != "slot":
                raise TypeError("a factored memory state needs erase='slot'")
            v, new_state, w, alpha, decays = self._write_read_factored(
                x, a, g.permute(2, 0, 1), y, state, None if at is None else at // n_tok, record
            )
        else:
            if self.erase != "channel":
                raise TypeError("a dense memory state needs erase='channel'")
            g = g.view(B, K, H, d_h).permute(2, 0, 1, 3)  # (H, B, K, d_h)
            v, new_state, w, alpha = self._write_read_dense(x, a, g, y, state.memory)
            if at is not None:  # every token was read: keep those at ``at``
                v, alpha = _head_rows(v, at), _head_rows(alpha, at)
            alpha = alpha if record else None
        return MemoryStep(self._project(v), new_state, w, alpha, decays)

    def read_at(self, h: torch.Tensor, window: MemoryStep, steps: torch.Tensor) -> torch.Tensor:
        """One token per sample, h (B, 1, d), of step ``steps`` (B,), read again against the
        memory that ``window`` (this memory's ``step`` on the whole window, from the initial
        state, factored) wrote: out (B, 1, d), what ``step(..., at=...)`` gives for a token
        whose own input changed while no earlier token's did (its step reads M_{t-1})."""
        if window.decays is None or not isinstance(window.state, FactoredMemory):
            raise TypeError("read_at needs the record of a factored memory (erase='slot')")
        rows, adds = window.state.rows, window.state.adds
        K = window.decays.shape[2]
        y = self._split(self.read_key(self.read_query(h)))  # (H, B, 1, d_h)
        v, _ = self._read_steps(y, rows, adds, window.decays, steps[:, None], K, False)
        return self._project(v)

    def _project(self, v: torch.Tensor) -> torch.Tensor:
        """Values per head (H, B, T, d_h) -> the read in the model's width (B, T, d)."""
        v = v.permute(1, 2, 0, 3).reshape(v.shape[1], v.shape[2], self.width)
        return self.out(self.read_value(v))

    # --- the unrolled form (erase="slot") --------------------------------------------------

    def _write_read_factored(
        self,
        x: torch.Tensor,
        a: torch.Tensor,
        g: torch.Tensor,
        y: torch.Tensor,
        state: FactoredMemory,
        read_steps: torch.Tensor | None = None,
        record: bool = True,
    ) -> tuple[torch.Tensor, FactoredMemory, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Writes K steps, then reads for every token, through M = P (M_0 + Ĉ^T A).

        x (H, B, K, d_h) scaled write queries; a (H, B, K, d_h) adds; g (H, B, K) erase gates;
        y (H, B, L, d_h) read keys (unscaled). Returns values (H, B, L, d_h), the new state, the
        write addressing (H, B, K, N), the read addressing (H, B, L, N) (None unless
        ``record``) and P before each write (H, B, K, N).
        ``read_steps`` (B, q): y holds q tokens per sample instead, of these steps; values
        and read addressing are then (H, B, q, ...).
        """
        H, B, K, d_h = x.shape
        L = y.shape[2]
        m0 = self._heads_of_memory()  # (H, N, d_h)
        N = m0.shape[1]
        S0 = state.adds.shape[2]
        adds = torch.cat([state.adds, a], dim=2) if S0 else a  # (H, B, S, d_h), S = S0 + K

        # Write: only P, the addressing and one N-wide row per step run step by step.
        s0_write = (x.reshape(H, B * K, d_h) @ m0.transpose(1, 2)).view(H, B, K, N)  # M_0 . x_t
        if self.addressing == "initial":
            C_hat, decays, last, w = write_initial(s0_write, g, state.decay, state.rows)
        else:
            ax = x @ adds.transpose(2, 3)  # (H, B, K, S): a_s . x_t
            C_hat, decays, last, w = write_previous(s0_write, ax, g, state.decay, state.rows)

        # Read: every token of step t sees M_{t-1}, with the adds of steps < t (causal).
        if read_steps is None:
            step_visible = self._step_visible(K, S0)
            visible = step_visible.repeat_interleave(L // K, dim=0)  # (L, S): may j read add s?
            scale = 1.0 / math.sqrt(d_h)
            values, alpha = read(y, m0, C_hat, adds, decays, visible, scale, record)
        else:
            values, alpha = self._read_steps(y, C_hat, adds, decays, read_steps, K, record)
        new_state = FactoredMemory(decay=last, rows=C_hat, adds=adds)
        return values, new_state, w, alpha, decays

    def _step_visible(self, K: int, S0: int) -> torch.Tensor:
        """(K, S0 + K): may a token of step t read add s (the state's S0 adds, then steps < t)."""
        return torch.cat([self.causal.new_ones(K, S0), self.causal[:K, :K]], dim=1)

    def _read_steps(
        self,
        y: torch.Tensor,
        rows: torch.Tensor,
        adds: torch.Tensor,
        decays: torch.Tensor,
        read_steps: torch.Tensor,
        K: int,
        record: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q tokens per sample, y (H, B, q, d_h), each of its own step ``read_steps`` (B, q)
        of a K-step window: each is one "step" of ``read``."""
        H, B, q = y.shape[0], y.shape[1], read_steps.shape[1]
        N = decays.shape[-1]
        decay = decays.gather(2, read_steps.expand(H, B, q).unsqueeze(-1).expand(-1, -1, -1, N))
        visible = self._step_visible(K, rows.shape[2] - K)[read_steps]
        scale = 1.0 / math.sqrt(self.head_dim)
        return read(y, self._heads_of_memory(), rows, adds, decay, visible, scale, record)

    # --- the step-by-step form (erase="channel") -------------------------------------------

    def _write_read_dense(
        self,
        x: torch.Tensor,
        a: torch.Tensor,
        g: torch.Tensor,
        y: torch.Tensor,
        memory: torch.Tensor,
    ) -> tuple[torch.Tensor, DenseMemory, torch.Tensor, torch.Tensor]:
        """Builds M_t for every step: g (H, B, K, d_h) erases per channel. Slow reference.
        Returns as ``_write_read_factored``."""
        H, B, K, d_h = x.shape
        n_tok = y.shape[2] // K
        y = y.reshape(H, B, K, n_tok, d_h) / math.sqrt(d_h)  # scaled read keys
        m0 = self._heads_of_memory().unsqueeze(1)  # (H, 1, N, d_h)
        M = memory  # (H, B, N, d_h)
        values, reads, writes = [], [], []
        for t in range(K):
            attn = torch.softmax(y[:, :, t] @ M.transpose(2, 3), dim=-1)  # (H, B, n_tok, N)
            values.append(attn @ M)  # (H, B, n_tok, d_h): read M_{t-1}
            reads.append(attn)
            addressed = m0 if self.addressing == "initial" else M
            w = torch.softmax((addressed @ x[:, :, t, :, None]).squeeze(-1), dim=-1)  # (H, B, N)
            writes.append(w.detach())
            erase = w.unsqueeze(-1) * g[:, :, t].unsqueeze(2)  # (H, B, N, d_h)
            M = M * (1.0 - erase) + w.unsqueeze(-1) * a[:, :, t].unsqueeze(2)
        L = K * n_tok
        return (
            torch.stack(values, dim=2).view(H, B, L, d_h),
            DenseMemory(memory=M),
            torch.stack(writes, dim=2),
            torch.stack(reads, dim=2).view(H, B, L, -1),
        )

    # --- helpers ---------------------------------------------------------------------------

    def _heads_of_memory(self) -> torch.Tensor:
        """M_0 (N, d_m) -> (H, N, d_h)."""
        return self.initial_memory.view(self.slots, self.heads, self.head_dim).transpose(0, 1)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, d_m) -> (H, B, T, d_h)."""
        B, T, _ = t.shape
        return t.view(B, T, self.heads, self.head_dim).permute(2, 0, 1, 3)

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"slots={s.slots}, width={s.width}, heads={s.heads}, erase={s.erase}, "
            f"addressing={s.addressing}, max_erase={s.max_erase}"
        )


def _rows(t: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """t (B, L, C) at token indices at (B, q) -> (B, q, C)."""
    return t.gather(1, at.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


def _head_rows(t: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """t (H, B, L, C) at token indices at (B, q) -> (H, B, q, C)."""
    H, C = t.shape[0], t.shape[-1]
    return t.gather(2, at.expand(H, -1, -1).unsqueeze(-1).expand(-1, -1, -1, C))
