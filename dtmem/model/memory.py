"""The working memory of DT-Mem (spec section 2): write, then read, once per block.

Memory ``M`` has ``N`` slots of width ``d_m``, split into ``H`` heads of width ``d_h`` the way
attention splits its width. Its initial value ``M_0`` is a learned parameter. Tokens are
grouped by step: step t of the window has ``n_tok`` tokens, and ``h`` is the block's normalised
input, (B, L, d) with L = K * n_tok.

Write, once per step t, from the step summary e_t = h[last token of step t]::

    k_t = W_k(e_t)                                        write key           (B, d_m)
    w_t = softmax_i( M_{t-1}[i] . W_q(k_t) / sqrt(d_h) )  content addressing  (B, H, N)
    g_t = sigmoid(W_g(e_t))                               erase strength      (B, H)
    a_t = W_a(e_t)                                        add vector          (B, d_m)
    M_t[i] = (1 - g_t w_t[i]) M_{t-1}[i] + w_t[i] a_t     erase, then add

Read, for every token j of step t, from the memory before step t's own write::

    q_j   = W_r(h_j)
    r_j   = W_rv( softmax_i( M_{t-1}[i] . W_rk(q_j) / sqrt(d_h) ) M_{t-1} )
    out_j = W_o(r_j)

With one erase gate per slot (``erase="slot"``) the memory unrolls into the shared ``M_0`` plus
a correction built from the add vectors, and is never materialised per sample and step::

    M_t = P_t * M_0 + C_t A        P_t[i]    = prod_{r<=t} (1 - g_r w_r[i])        (B, H, N)
                                   C_t[i, s] = w_s[i] prod_{s<r<=t} (1 - g_r w_r[i])  (B, H, N, S)
                                   A         = (a_1 .. a_S)                          (B, H, S, d_h)

so ``M_{t-1}[i] . x = P[i] (M_0[i] . x) + sum_s C[i, s] (a_s . x)``: one large product with
``M_0`` for the whole batch plus an N x S correction. ``erase="channel"`` (the NTM erase, one
gate per channel) does not unroll: it builds M_t step by step and is kept as a slow reference.

Every W is an ``nn.Linear`` called as a module on per-token or per-step vectors, never read
through ``.weight``: that is what keeps LoRA adapters (which live in the Linear's forward) in
the computation. The memory state is passed in and returned; nothing is stored on ``self``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["DenseMemory", "FactoredMemory", "MemoryState", "WorkingMemory"]


@dataclass(frozen=True)
class FactoredMemory:
    """M = decay * M_0 + contrib @ adds, per head (the ``erase="slot"`` state).

    decay    (B, H, N)      P: what is left of each slot of M_0
    contrib  (B, H, S, N)   C transposed: weight of add vector s in slot i (stored S-major
                            so that each write appends one contiguous row)
    adds     (B, H, S, d_h) A: the add vectors written so far (S of them)
    """

    decay: torch.Tensor
    contrib: torch.Tensor
    adds: torch.Tensor


@dataclass(frozen=True)
class DenseMemory:
    """M itself, (B, H, N, d_h) (the ``erase="channel"`` state)."""

    memory: torch.Tensor


MemoryState = FactoredMemory | DenseMemory


class WorkingMemory(nn.Module):
    """Content-addressable memory: write each step's summary, read for every token.

    Args:
        d_model: width d of the tokens.
        slots: N.
        width: d_m, the slot width.
        heads: H; divides ``width``.
        tokens_per_step: n_tok; the sequence length must be a multiple of it.
        erase: "slot" (unrolled) or "channel" (step-by-step reference).
        addressing: "previous" (address M_{t-1}) or "initial" (address M_0; all steps at once).
        init_std: std of the random M_0.
    """

    def __init__(
        self,
        d_model: int,
        slots: int,
        width: int,
        heads: int,
        tokens_per_step: int,
        erase: Literal["slot", "channel"] = "slot",
        addressing: Literal["previous", "initial"] = "previous",
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"memory heads {heads} do not divide width {width}")
        self.slots, self.width, self.heads = slots, width, heads
        self.head_dim = width // heads
        self.tokens_per_step = tokens_per_step
        self.erase, self.addressing = erase, addressing
        self.init_std = init_std
        self.initial_memory = nn.Parameter(torch.randn(slots, width) * init_std)  # M_0 (N, d_m)
        self.write_key = nn.Linear(d_model, width)  # W_k
        self.write_query = nn.Linear(width, width)  # W_q
        self.erase_gate = nn.Linear(d_model, heads if erase == "slot" else width)  # W_g
        self.add = nn.Linear(d_model, width)  # W_a
        self.read_query = nn.Linear(d_model, width)  # W_r
        self.read_key = nn.Linear(width, width)  # W_rk
        self.read_value = nn.Linear(width, width)  # W_rv
        self.out = nn.Linear(width, d_model)  # W_o

    def initial_state(self, batch_size: int) -> MemoryState:
        """The state before any write: M = M_0 for every sample."""
        p = self.initial_memory
        if self.erase == "channel":
            m0 = self._heads_of_memory().unsqueeze(0)  # (1, H, N, d_h)
            return DenseMemory(memory=m0.expand(batch_size, -1, -1, -1))
        B, H, N = batch_size, self.heads, self.slots
        return FactoredMemory(
            decay=p.new_ones(B, H, N),
            contrib=p.new_zeros(B, H, 0, N),
            adds=p.new_zeros(B, H, 0, self.head_dim),
        )

    def forward(self, h: torch.Tensor, state: MemoryState) -> tuple[torch.Tensor, MemoryState]:
        """h (B, L, d), L = K * n_tok -> (out (B, L, d), the state after the K writes)."""
        B, L, _ = h.shape
        n_tok, H, d_h = self.tokens_per_step, self.heads, self.head_dim
        if L % n_tok:
            raise ValueError(f"sequence length {L} is not a multiple of {n_tok} tokens per step")
        K = L // n_tok
        e = h.view(B, K, n_tok, -1)[:, :, -1]  # (B, K, d): step summaries e_t
        x = self._split(self.write_query(self.write_key(e)))  # (B, H, K, d_h): W_q(k_t)
        a = self._split(self.add(e))  # (B, H, K, d_h): a_t
        g = torch.sigmoid(self.erase_gate(e))  # (B, K, H) or (B, K, d_m)
        y = self._split(self.read_key(self.read_query(h)))  # (B, H, L, d_h): W_rk(q_j)
        y = y.reshape(B, H, K, n_tok, d_h)
        new_state: MemoryState
        if isinstance(state, FactoredMemory):
            if self.erase != "slot":
                raise TypeError("a factored memory state needs erase='slot'")
            v, new_state = self._write_read_factored(x, a, g.transpose(1, 2), y, state)
        else:
            if self.erase != "channel":
                raise TypeError("a dense memory state needs erase='channel'")
            g = g.view(B, K, H, d_h).transpose(1, 2)  # (B, H, K, d_h)
            v, new_state = self._write_read_dense(x, a, g, y, state.memory)
        v = v.permute(0, 2, 3, 1, 4).reshape(B, L, self.width)  # (B, L, d_m)
        return self.out(self.read_value(v)), new_state

    # --- the unrolled form (erase="slot") --------------------------------------------------

    def _write_read_factored(
        self,
        x: torch.Tensor,
        a: torch.Tensor,
        g: torch.Tensor,
        y: torch.Tensor,
        state: FactoredMemory,
    ) -> tuple[torch.Tensor, FactoredMemory]:
        """Writes K steps and reads for every token, all through M = P M_0 + C A.

        x (B, H, K, d_h) write queries; a (B, H, K, d_h) adds; g (B, H, K) erase gates;
        y (B, H, K, n_tok, d_h) read keys. Returns values (B, H, K, n_tok, d_h) and the state.
        """
        B, H, K, d_h = x.shape
        n_tok = y.shape[3]
        scale = 1.0 / math.sqrt(d_h)
        m0 = self._heads_of_memory()  # (H, N, d_h)
        adds = torch.cat([state.adds, a], dim=2)  # (B, H, S, d_h), S = S0 + K

        # The large products with the shared M_0, every step and token at once.
        s0_write = x @ m0.transpose(1, 2)  # (B, H, K, N): M_0[i] . x_t
        s0_read = (y.reshape(B, H, K * n_tok, d_h) @ m0.transpose(1, 2)).view(B, H, K, n_tok, -1)
        # a_s . q for the n_tok read keys and the write query of each step: (B, H, K, n_tok+1, S)
        aq = torch.cat([y, x.unsqueeze(3)], dim=3) @ adds.transpose(2, 3).unsqueeze(2)

        # Step by step, only the N x S corrections: C has one column per add written so far.
        # (unbind, not indexing in the loop: its backward stacks once instead of filling
        # a full-size zero gradient per step)
        steps = zip(s0_read.unbind(2), s0_write.unbind(2), aq.unbind(2), g.unbind(2), strict=True)
        P, Ct = state.decay, state.contrib  # (B, H, N), (B, H, S0, N): P and C^T
        read_m0, read_adds = [], []
        for s0_r, s0_w, aq_t, g_t in steps:
            s = Ct.shape[2]  # adds written before this step
            corr = aq_t[..., :s] @ Ct  # (B, H, n_tok+1, N): sum_s C[i,s] a_s . q
            # Read M_{t-1} = P M_0 + C A for the n_tok tokens of the step.
            attn = torch.softmax((P.unsqueeze(2) * s0_r + corr[:, :, :n_tok]) * scale, dim=-1)
            read_m0.append(attn * P.unsqueeze(2))  # (B, H, n_tok, N): weights on M_0's slots
            read_adds.append((attn @ Ct.transpose(2, 3)) @ adds[:, :, :s])  # (B, H, n_tok, d_h)
            # Write, addressing M_{t-1} (or M_0).
            if self.addressing == "previous":
                scores_w = P * s0_w + corr[:, :, n_tok]
            else:
                scores_w = s0_w
            w = torch.softmax(scores_w * scale, dim=-1)  # (B, H, N): w_t
            keep = 1.0 - g_t.unsqueeze(-1) * w  # (B, H, N): 1 - g_t w_t[i]
            P = P * keep
            Ct = torch.cat([Ct * keep.unsqueeze(2), w.unsqueeze(2)], dim=2)  # (B, H, s+1, N)

        from_m0 = torch.stack(read_m0, dim=2).view(B, H, K * n_tok, -1) @ m0  # (B, H, K*n_tok, d_h)
        values = from_m0.view(B, H, K, n_tok, d_h) + torch.stack(read_adds, dim=2)
        return values, FactoredMemory(decay=P, contrib=Ct, adds=adds)

    # --- the step-by-step form (erase="channel", and any dense state) -----------------------

    def _write_read_dense(
        self,
        x: torch.Tensor,
        a: torch.Tensor,
        g: torch.Tensor,
        y: torch.Tensor,
        memory: torch.Tensor,
    ) -> tuple[torch.Tensor, DenseMemory]:
        """Builds M_t for every step: g (B, H, K, d_h) erases per channel. Slow reference."""
        K, d_h = x.shape[2], x.shape[3]
        scale = 1.0 / math.sqrt(d_h)
        M = memory  # (B, H, N, d_h)
        values = []
        for t in range(K):
            attn = torch.softmax((y[:, :, t] @ M.transpose(2, 3)) * scale, dim=-1)  # (B,H,n_tok,N)
            values.append(attn @ M)  # (B, H, n_tok, d_h): read M_{t-1}
            w = torch.softmax((M @ x[:, :, t, :, None]).squeeze(-1) * scale, dim=-1)  # (B, H, N)
            erase = w.unsqueeze(-1) * g[:, :, t].unsqueeze(2)  # (B, H, N, d_h)
            M = M * (1.0 - erase) + w.unsqueeze(-1) * a[:, :, t].unsqueeze(2)
        return torch.stack(values, dim=2), DenseMemory(memory=M)

    # --- helpers ---------------------------------------------------------------------------

    def _heads_of_memory(self) -> torch.Tensor:
        """M_0 (N, d_m) -> (H, N, d_h)."""
        return self.initial_memory.view(self.slots, self.heads, self.head_dim).transpose(0, 1)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, d_m) -> (B, H, T, d_h)."""
        B, T, _ = t.shape
        return t.view(B, T, self.heads, self.head_dim).transpose(1, 2)

    def extra_repr(self) -> str:
        return (
            f"slots={self.slots}, width={self.width}, heads={self.heads}, "
            f"erase={self.erase}, addressing={self.addressing}"
        )
