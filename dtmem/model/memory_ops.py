"""The two hot paths of the unrolled memory (``erase="slot"``), with gradients by hand: the
write recurrence (below) and the read (``read``).

With P_t[i] = prod_{r<=t} (1 - g_r w_r[i]) and rows Ĉ_s[i] = w_s[i] / P_s[i] (see memory.py),
step t of the write, addressing M_{t-1} ("previous"), is::

    c_t[i] = M_0[i] . x_t + sum_{s<t} Ĉ_s[i] (a_s . x_t)       the score before the decay
    w_t    = softmax_i( P_{t-1}[i] c_t[i] )                     write addressing
    P_t    = P_{t-1} (1 - g_t w_t)                              what is left of each slot
    Ĉ_t    = w_t / P_t                                          the new row

Only this N-wide bookkeeping is sequential. Written with autograd it is some ten small
operations per step, each a graph node, and the rows re-stacked every step; here the forward
writes into preallocated buffers without a graph and the backward runs the same loop in
reverse (``tests/test_memory.py`` checks it against finite differences and the float64
reference loop). Addressing M_0 ("initial") has no recurrence in w: ``write_initial`` does all
steps at once with a cumulative product. The read does its elementwise work on the (L x N)
scores in place, forward and backward, where autograd would allocate a tensor per operation.

Under CUDA autocast both Functions run in float32 (their inputs are cast, and the backward runs
as the forward did): 1 / P reaches 1e30, and bf16's 8-bit mantissa would cost the rows their
precision. The products around them (the memory's Linears) stay in the autocast type.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["read", "write_initial", "write_previous"]


class _WritePrevious(torch.autograd.Function):
    """(s0, ax, g, decay0, rows0) -> (rows, decays before each write, decay after the last,
    w); shapes in ``write_previous``. The two decays are separate outputs so that their
    gradients arrive apart, not as one zero-filled tensor that autograd copies them into."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(
        ctx: Any,
        s0: torch.Tensor,
        ax: torch.Tensor,
        g: torch.Tensor,
        decay0: torch.Tensor,
        rows0: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        ctx.shapes = (s0.shape, ax.shape, g.shape, decay0.shape, rows0.shape)
        K, N = s0.shape[-2:]
        S0 = rows0.shape[-2]
        s0, ax, g = s0.reshape(-1, K, N), ax.reshape(-1, K, S0 + K), g.reshape(-1, K, 1)
        HB = s0.shape[0]
        rows = s0.new_empty(HB, S0 + K, N)  # Ĉ_s, all rows of the state
        rows[:, :S0] = rows0.reshape(HB, S0, N)
        # time-major, each step's slice (HB, N) written in place: c_t, w_t, P_t. The backward
        # reads c_t again; without one (inference) it is scratch, as g_t w_t always is (the
        # backward makes it again from w_t, which it reads anyway: 5% of the forward)
        keep = any(ctx.needs_input_grad)
        c = s0.new_empty(K if keep else 1, HB, N)
        gw = s0.new_empty(HB, N)
        w, decays = s0.new_empty(K, HB, N), s0.new_empty(K + 1, HB, N)
        decays[0] = decay0.reshape(HB, N)
        z = s0.new_empty(HB, N)  # z_t = P_{t-1} c_t, the softmax's input
        # every step's views made at once: indexing in the loop cost more than its small ops
        s0_t = s0.transpose(0, 1).unsqueeze(2).unbind()  # (HB, 1, N)
        ax_t = ax.transpose(0, 1).unsqueeze(2).unbind()  # (HB, 1, S0 + K)
        c_t, c1_t = c.unbind(), c.unsqueeze(2).unbind()  # (HB, N), (HB, 1, N)
        g_t, w_t, P_t = g.transpose(0, 1).unbind(), w.unbind(), decays.unbind()
        row_t = rows.unbind(1)
        for t in range(K):
            s, P, i = S0 + t, P_t[t], t if keep else 0
            ct = c_t[i]
            if s:  # c_t = M_0 . x_t + sum_{s<t} (a_s . x_t) Ĉ_s
                torch.baddbmm(s0_t[t], ax_t[t][:, :, :s], rows[:, :s], out=c1_t[i])
            else:
                c1_t[i].copy_(s0_t[t])
            torch.softmax(torch.mul(P, ct, out=z), dim=-1, out=w_t[t])
            torch.mul(w_t[t], g_t[t], out=gw)
            torch.addcmul(P, P, gw, value=-1.0, out=P_t[t + 1])  # P_{t-1} (1 - g_t w_t)
            torch.div(w_t[t], P_t[t + 1], out=row_t[s])
        if keep:
            ctx.save_for_backward(ax, g, rows, decays, w, c)
        out = (rows, decays[:K].transpose(0, 1), decays[K], w.transpose(0, 1))
        ctx.mark_non_differentiable(out[3])
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(
        ctx: Any,
        g_rows: torch.Tensor | None,
        g_decays: torch.Tensor | None,
        g_last: torch.Tensor | None,
        _g_w: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        ax, g, rows, decays, w, c = ctx.saved_tensors
        K, HB, N = w.shape
        S0 = rows.shape[1] - K
        gR = rows.new_zeros(rows.shape) if g_rows is None else g_rows.reshape(rows.shape)
        gD = None if g_decays is None else g_decays.reshape(HB, K, N)  # before each write
        g_c = w.new_empty(HB, K, N)  # dL/dc_t, which is also dL/ds0_t
        g_u = w.new_empty(HB, N)  # dL/du_t, u_t = 1 - g_t w_t (a scratch row)
        g_g = w.new_empty(HB, K)  # dL/dg_t = -(dL/du_t) . w_t
        g_w = w.new_empty(HB, N)
        gP = w.new_zeros(HB, N) if g_last is None else g_last.reshape(HB, N).clone()  # dL/dP_K
        # every step's views made at once, as in the forward
        P_t, w_t, c_t, g_t = decays.unbind(), w.unbind(), c.unbind(), g.unbind(1)
        tmp = w.new_empty(HB, N)
        gR_t, gR1_t, row_t = gR.unbind(1), gR.unsqueeze(2).unbind(1), rows.unbind(1)
        g_c_t, g_g_t = g_c.unbind(1), g_g.unbind(1)
        ax_s = ax.transpose(1, 2).contiguous()  # (HB, S, K): a_s . x_r for every later r
        gD_t = None if gD is None else gD.unbind(1)
        for t in reversed(range(K)):
            s, P_prev, P = S0 + t, P_t[t], P_t[t + 1]
            g_row = gR_t[s]
            if t + 1 < K:  # Ĉ_t enters c_r of every later step r: sum_r (a_t . x_r) dL/dc_r
                g_row = torch.baddbmm(gR1_t[s], ax_s[:, s, None, t + 1 :], g_c[:, t + 1 :])[:, 0]
            torch.div(g_row, P, out=g_w)  # Ĉ_t = w_t / P_t
            gP.addcmul_(g_w, row_t[s], value=-1.0)
            torch.mul(gP, P_prev, out=g_u)  # P_t = P_{t-1} u_t
            torch.linalg.vecdot(g_u, w_t[t], out=g_g_t[t])
            g_w.addcmul_(g_u, g_t[t], value=-1.0)
            g_z = torch._softmax_backward_data(g_w, w_t[t], -1, w.dtype)  # w_t = softmax(z_t)
            gP.addcmul_(torch.mul(gP, g_t[t], out=tmp), w_t[t], value=-1.0)  # u_t = 1 - g_t w_t
            gP.addcmul_(g_z, c_t[t])  # z_t = P_{t-1} c_t
            torch.mul(g_z, P_prev, out=g_c_t[t])
            if gD_t is not None:
                gP += gD_t[t]
        g_g.neg_()
        # c_t = s0_t + sum_{s < S0 + t} (a_s . x_t) Ĉ_s: the rest at once, causally
        g_ax = g_c @ rows.transpose(1, 2)  # (HB, K, S)
        causal = torch.ones(K, S0 + K, dtype=torch.bool, device=w.device).tril(S0 - 1)
        g_ax.mul_(causal)
        g_rows0 = gR[:, :S0] + ax[:, :, :S0].transpose(1, 2) @ g_c
        grads = (g_c, g_ax, g_g, gP, g_rows0)
        return tuple(t.reshape(shape) for t, shape in zip(grads, ctx.shapes, strict=True))


def write_previous(
    s0: torch.Tensor,
    ax: torch.Tensor,
    g: torch.Tensor,
    decay0: torch.Tensor,
    rows0: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """K writes addressing M_{t-1}.

    s0 (H, B, K, N): M_0[i] . x_t     ax (H, B, K, S0 + K): a_s . x_t     g (H, B, K): g_t
    decay0 (H, B, N) and rows0 (H, B, S0, N): the state before the window.
    Returns rows Ĉ (H, B, S0 + K, N), the decays before each write P_0 .. P_{K-1}
    (H, B, K, N) (what each step's tokens read), the decay after the last P_K (H, B, N), and
    the write addressing w (H, B, K, N) (not differentiable: a record, for probes).
    """
    H, B, K, N = s0.shape
    rows, before, last, w = _WritePrevious.apply(s0, ax, g, decay0, rows0)
    return rows.view(H, B, -1, N), before.view(H, B, K, N), last.view(H, B, N), w.view(H, B, K, N)


def write_initial(
    s0: torch.Tensor,
    g: torch.Tensor,
    decay0: torch.Tensor,
    rows0: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """K writes addressing M_0: every w_t at once, P_t by a cumulative product. As above."""
    w = torch.softmax(s0, dim=-1)  # (H, B, K, N): w_t
    kept = torch.cumprod(1.0 - g.unsqueeze(-1) * w, dim=2)  # prod_{r<=t} (1 - g_r w_r)
    after = decay0.unsqueeze(2) * kept  # P_1 .. P_K
    before = torch.cat([decay0.unsqueeze(2), after[:, :, :-1]], dim=2)
    rows = torch.cat([rows0, w / after], dim=2)
    return rows, before, after[:, :, -1], w.detach()


class _Read(torch.autograd.Function):
    """(y, m0, rows, adds, decay, visible, scale, record) -> (values, alpha or None); shapes in
    ``read``. Saves the scores z and W = α P for the backward, not α: α P and dL/dW are all
    the softmax's gradient needs (``backward``)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(
        ctx: Any,
        y: torch.Tensor,
        m0: torch.Tensor,
        rows: torch.Tensor,
        adds: torch.Tensor,
        decay: torch.Tensor,
        visible: torch.Tensor,
        scale: float,
        record: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        ctx.set_materialize_grads(False)
        ctx.scale = scale
        H, B, L, d_h = y.shape
        N, S, K = m0.shape[1], rows.shape[2], decay.shape[2]
        n_tok = L // K
        rows_f = rows.reshape(H * B, S, N)
        adds_f = adds.reshape(H * B, S, d_h)
        P = decay.unsqueeze(3)  # (H, B, K, 1, N): P_{t-1} for every token of step t
        # the keys' scale rides on the products (their alpha) and the causal mask: no pass
        # over y, forward or backward
        y = y.contiguous()
        ay = (y @ adds.transpose(2, 3)).mul_(visible * scale)  # (H, B, L, S): a_s . y_j scaled
        z = y.new_empty(H, B * L, N)
        z.baddbmm_(y.view(H, B * L, d_h), m0.transpose(1, 2), beta=0.0, alpha=scale)
        z = z.view(H * B, L, N)
        z.baddbmm_(ay.view(H * B, L, S), rows_f)  # raw: (M_0 . y_j + sum_s Ĉ_s (a_s . y_j)) / √d
        z = z.view(H, B, K, n_tok, N).mul_(P)  # z = P raw: M_{t-1} . y_j
        W = torch.softmax(z, dim=-1)
        alpha = W.clone() if record else None
        W.mul_(P)  # α P_{t-1}, in α's storage
        on = torch.bmm(W.view(H * B, L, N), rows_f.transpose(1, 2)).view(H, B, L, S)
        on.mul_(visible)  # (α P) . Ĉ_s
        values = torch.bmm(W.view(H, B * L, N), m0).view(H * B, L, d_h)
        values.baddbmm_(on.view(H * B, L, S), adds_f)
        ctx.save_for_backward(y, m0, rows, adds, decay, visible, ay, z, W, on)
        if alpha is None:
            return values.view(H, B, L, d_h), None
        ctx.mark_non_differentiable(alpha)
        return values.view(H, B, L, d_h), alpha.view(H, B, L, N)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(
        ctx: Any, g_values: torch.Tensor, _g_alpha: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        if g_values is None:
            return (None,) * 8
        y, m0, rows, adds, decay, visible, ay, z, W, on = ctx.saved_tensors  # y not scaled
        H, B, L, d_h = y.shape
        N = m0.shape[1]
        gV = g_values.contiguous()
        g_y, g_adds = torch.empty_like(y), torch.empty_like(adds)
        g_rows, g_decay = torch.empty_like(rows), torch.empty_like(decay)
        g_m0 = y.new_zeros(H, d_h, N)  # dL/dM_0 transposed, summed over the parts
        # on the CPU a few samples at a time: each part's (tokens x slots) gradient stays in
        # cache through the elementwise passes and the four products that read it (11% of
        # the backward at 1024 slots against the whole batch at once); a GPU takes it whole
        part = B if y.is_cuda else max(1, _PART_BYTES // (L * N * y.element_size()))
        for b in range(0, B, part):
            s = slice(b, b + part)
            _read_backward_part(
                gV[:, s], y[:, s], m0, rows[:, s], adds[:, s], decay[:, s], visible,
                (ay[:, s], z[:, s], W[:, s], on[:, s]),
                (g_y[:, s], g_adds[:, s], g_rows[:, s], g_decay[:, s]), g_m0, ctx.scale,
            )  # fmt: skip
        return g_y, g_m0.transpose(1, 2), g_rows, g_adds, g_decay, None, None, None


_PART_BYTES = 1 << 20  # the read backward's (tokens x slots) block per part, float32: 1 MB


def _read_backward_part(
    gV: torch.Tensor,
    y: torch.Tensor,
    m0: torch.Tensor,
    rows: torch.Tensor,
    adds: torch.Tensor,
    decay: torch.Tensor,
    visible: torch.Tensor,
    saved: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    outs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    g_m0: torch.Tensor,
    scale: float,
) -> None:
    """The read's backward for some samples (B of them, a slice of the batch): writes
    dL/dy, dL/dA, dL/dĈ, dL/dP into ``outs`` and adds dL/dM_0 (transposed) into ``g_m0``.
    ``y`` is unscaled, ``ay`` and ``z`` scaled (the forward's)."""
    ay, z, W, on = saved
    o_y, o_adds, o_rows, o_decay = outs
    H, B, L, d_h = y.shape
    N, S, K = m0.shape[1], rows.shape[2], decay.shape[2]
    n_tok = L // K
    rows_f = rows.reshape(H * B, S, N)
    W = W.reshape(H, B, L, N)
    P = decay.unsqueeze(3)
    # values = W M_0 + on A
    g_on = (gV @ adds.transpose(2, 3)).mul_(visible)  # (H, B, L, S)
    torch.matmul(on.transpose(2, 3), gV, out=o_adds)
    # dL/dM_0 is built transposed, (H, d_h, N): the (d_h x BL) (BL x N) products run
    # about 20% faster than (N x BL) (BL x d_h) with the long dimension inside
    g_m0.baddbmm_(gV.reshape(H, B * L, d_h).transpose(1, 2), W.reshape(H, B * L, N))
    g_rows = _view_or_new(o_rows, H * B, S, N)
    torch.bmm(g_on.reshape(H * B, L, S).transpose(1, 2), W.reshape(H * B, L, N), out=g_rows)
    gW = torch.bmm(gV.reshape(H, B * L, d_h), m0.transpose(1, 2)).view(H * B, L, N)
    gW.baddbmm_(g_on.reshape(H * B, L, S), rows_f)
    # W = α P, α = softmax(z), z = P raw, in gW's storage u. With gα = gW P:
    # α gα = W gW = u, gz = α (gα - <gα, α>) = u - (W / P) <u, 1>, g_raw = P gz
    W5 = W.reshape(H, B, K, n_tok, N)
    u = gW.view(H, B, K, n_tok, N).mul_(W5)
    g_decay = _sum_tokens(u, out=o_decay)  # through W: sum_j gW α = sum_j u / P, divided below
    dot = u.sum(-1, keepdim=True)  # <gα, α>, (H, B, K, n_tok, 1)
    u.mul_(P).addcmul_(W5, dot, value=-1.0)  # g_raw
    # through z: sum_j gz raw = sum_j g_raw z / P^2
    z5 = z.reshape(H, B, K, n_tok, N)
    g_decay.add_(_sum_token_products(u, z5).div_(decay)).div_(decay)
    g_raw = gW  # (H * B, L, N)
    # raw = scale (y M_0^T) + ay Ĉ, ay = scale (y A^T) * visible: the scale on the alphas
    g_ay = torch.bmm(g_raw, rows_f.transpose(1, 2)).view(H, B, L, S).mul_(visible)
    g_rows.baddbmm_(ay.reshape(H * B, L, S).transpose(1, 2), g_raw)
    g_m0.baddbmm_(y.reshape(H, B * L, d_h).transpose(1, 2), g_raw.view(H, B * L, N), alpha=scale)
    g_y = _view_or_new(o_y, H, B * L, d_h)
    g_y.baddbmm_(g_raw.view(H, B * L, N), m0, beta=0.0, alpha=scale)
    g_y.view(H * B, L, d_h).baddbmm_(
        g_ay.reshape(H * B, L, S), adds.reshape(H * B, S, d_h), alpha=scale
    )
    o_adds.add_(g_ay.transpose(2, 3) @ y, alpha=scale)
    for out, got in ((o_rows, g_rows), (o_y, g_y)):
        if got.data_ptr() != out.data_ptr():  # a part of several heads is not contiguous
            out.copy_(got.view(out.shape))


def _view_or_new(out: torch.Tensor, *shape: int) -> torch.Tensor:
    """``out`` viewed as ``shape`` when contiguous, else a new tensor to copy into it."""
    return out.view(*shape) if out.is_contiguous() else out.new_empty(shape)


def _sum_token_products(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_j x_j y_j over each step's tokens, (H, B, K, n_tok, N) -> (H, B, K, N), without
    a temporary of the inputs' size."""
    out = torch.mul(x[:, :, :, 0], y[:, :, :, 0])
    for i in range(1, x.shape[3]):
        out.addcmul_(x[:, :, :, i], y[:, :, :, i])
    return out


def _sum_tokens(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(H, B, K, n_tok, N) -> ``out`` (H, B, K, N), the sum over each step's tokens. A few
    adds of slices are twice as fast as ``sum(3)`` over the small middle dimension on CPU."""
    n_tok = x.shape[3]
    if n_tok == 1 or n_tok > 8:
        return torch.sum(x, 3, out=out)
    torch.add(x[:, :, :, 0], x[:, :, :, 1], out=out)
    for i in range(2, n_tok):
        out += x[:, :, :, i]
    return out


def read(
    y: torch.Tensor,
    m0: torch.Tensor,
    rows: torch.Tensor,
    adds: torch.Tensor,
    decay: torch.Tensor,
    visible: torch.Tensor,
    scale: float,
    record: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every token j of step t reads M_{t-1} = P_{t-1} (M_0 + Ĉ^T A)::

        α_j   = softmax_i( scale P_{t-1}[i] ( M_0[i] . y_j + sum_{s<t} Ĉ_s[i] (a_s . y_j) ) )
        v_j   = (α_j P_{t-1}) M_0 + sum_{s<t} ((α_j P_{t-1}) . Ĉ_s) a_s

    y (H, B, L, d_h) read keys, unscaled (``scale``, 1 / sqrt(d_h), is applied inside, as the
    products' alpha: no pass of its own); m0 (H, N, d_h); rows Ĉ (H, B, S, N); adds A
    (H, B, S, d_h); decay P_{t-1} (H, B, K, N); visible (L, S), 1 where token j may read add s.
    Returns v (H, B, L, d_h) and α (H, B, L, N) (not differentiable: a record, for probes),
    or None for α when ``record`` is False: training does not keep it, and the copy is one
    more pass over the largest tensor of the step. The elementwise work on the (L x N)
    scores is done in place, forward and backward.
    """
    return _Read.apply(y, m0, rows, adds, decay, visible.to(y.dtype), scale, record)
