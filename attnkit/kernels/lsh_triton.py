"""Fused LSH attention in Triton: the chunked algorithm of ``attnkit.functional.lsh`` in two kernels.

After hashing and one sort per round (done in PyTorch: ``order`` maps each sorted slot to a position,
``code`` holds the slot's bucket), one program handles one chunk of one round of one (batch, head):

* forward: gathers its ``C`` queries and the ``2C`` keys of its window (the chunk and the one before it)
  straight from ``qk`` and ``v`` by position, normalizes the keys, and runs an online softmax over the
  two key blocks (FlashAttention-style, fp32 accumulation). It then folds the round into the running
  result at the queries' original positions with the log-sum-exp weights, so no per-round or sorted
  copy of the sequence exists: the rounds are launched one after another, and within a round every
  position belongs to exactly one chunk, so the read-modify-write needs no atomics.
* backward: the rounds together are one softmax over every pair they found, so with the total
  log-sum-exp ``lse`` and ``delta_i = dO_i . O_i`` each pair's weight is ``exp(s_ij - lse_i)`` and the
  gradients follow FlashAttention's backward. Program ``c`` computes the query gradient of chunk ``c``
  (its window: chunks ``c - 1`` and ``c``) and the key and value gradients of chunk ``c`` (the queries
  of chunks ``c`` and ``c + 1`` see it), which share the same positions; the key gradient goes through
  the keys' normalization ``k = qk * scale / |qk|`` before it is added to ``dqk``.

Inputs (fp32, fp16 or bf16) are read as stored; scores, softmax and the per-round sums are fp32. The
running output and gradients across rounds are kept in the input's dtype (for fp16/bf16, a
million-token fp32 copy would double the memory).

Runs on CUDA, and on the CPU under ``TRITON_INTERPRET=1`` (how the tests check it without a GPU).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _program(ORDER, CODE, s_order_n, s_order_r, r, H):
    """This program's chunk c and sequence n = b * H + h, and round r's sort tables for it."""
    c = tl.program_id(0)
    n = tl.program_id(1)
    order = ORDER + n * s_order_n + r * s_order_r
    code = CODE + n * s_order_n + r * s_order_r
    return c, n, n // H, n % H, order, code


@triton.jit
def _load_rows(base, pos, ok, s_l, s_d, offs_d, D: tl.constexpr):
    """Rows ``pos`` of a (L, D) matrix at ``base`` -> (BLOCK, BLOCK_D), zeros where not ``ok``."""
    mask = ok[:, None] & (offs_d[None, :] < D)
    return tl.load(base + pos[:, None] * s_l + offs_d[None, :] * s_d, mask=mask, other=0.0)


@triton.jit
def _slots(ORDER, CODE, chunk, offs, C: tl.constexpr, L, NB, n_chunks):
    """Positions, codes and validity of the slots of ``chunk`` (masked outside [0, n_chunks))."""
    slot = chunk * C + offs
    in_range = (offs < C) & (slot >= 0) & (slot < n_chunks * C)  # block-wise tests only
    pos = tl.load(ORDER + slot, mask=in_range, other=0)
    code = tl.load(CODE + slot, mask=in_range, other=NB)
    ok = in_range & (pos < L) & (code < NB)  # a real token (padding slots and masked tokens sort last)
    return pos.to(tl.int64), code, ok  # 64-bit: position * row stride passes 2**31 past a few million tokens


@triton.jit
def _normalized_keys(qk_rows, scale):
    """k = qk * scale / |qk| (fp32), and the factor scale / |qk| per row."""
    x = qk_rows.to(tl.float32)
    inv = scale / tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), 1e-12)
    return x * inv[:, None], inv


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    """a @ b with fp32 accumulation. PRECISION "ieee" keeps fp32 inputs exact; "upcast" multiplies
    half-precision inputs in fp32 (Triton's CPU interpreter gets bf16 products wrong)."""
    if PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _allowed(pos_q, code_q, ok_q, pos_k, code_k, ok_k, CAUSAL: tl.constexpr, ACROSS: tl.constexpr):
    """(BLOCK_Q, BLOCK_K): query i may attend key j (never itself; same bucket; causal by position)."""
    a = ok_q[:, None] & ok_k[None, :] & (pos_k[None, :] != pos_q[:, None])
    if not ACROSS:
        a = a & (code_k[None, :] == code_q[:, None])
    if CAUSAL:
        a = a & (pos_k[None, :] <= pos_q[:, None])
    return a


@triton.jit
def lsh_forward_kernel(
    QK, V, OUT, LSE, ORDER, CODE,
    s_qb, s_qh, s_ql, s_qd,
    s_vb, s_vh, s_vl, s_vd,
    s_ob, s_oh, s_ol, s_od,
    s_order_n, s_order_r, r,
    H, L, NB, n_chunks, scale,
    C: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, ACROSS: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    c, n, b, h, order, code = _program(ORDER, CODE, s_order_n, s_order_r, r, H)
    qk = QK + b * s_qb + h * s_qh
    v = V + b * s_vb + h * s_vh
    out = OUT + b * s_ob + h * s_oh
    lse_ptr = LSE + n * L
    offs = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)

    pos_q, code_q, ok_q = _slots(order, code, c, offs, C, L, NB, n_chunks)
    q = _load_rows(qk, pos_q, ok_q, s_ql, s_qd, offs_d, D)  # (BLOCK, BLOCK_D)
    m = tl.full((BLOCK,), float("-inf"), tl.float32)  # running max of the scores
    denom = tl.zeros((BLOCK,), tl.float32)  # running sum of exp(score - m)
    acc = tl.zeros((BLOCK, BLOCK_DV), tl.float32)
    for w in tl.static_range(2):  # the window: chunk c - 1, then chunk c
        pos_k, code_k, ok_k = _slots(order, code, c - 1 + w, offs, C, L, NB, n_chunks)
        k, _ = _normalized_keys(_load_rows(qk, pos_k, ok_k, s_ql, s_qd, offs_d, D), scale)
        s = _dot(q, tl.trans(k.to(q.dtype)), PRECISION)  # (BLOCK, BLOCK)
        s = tl.where(_allowed(pos_q, code_q, ok_q, pos_k, code_k, ok_k, CAUSAL, ACROSS), s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing yet stay at zero
        alpha = tl.exp(m - m_ref)
        p = tl.exp(s - m_ref[:, None])
        denom = denom * alpha + tl.sum(p, axis=1)
        vk = _load_rows(v, pos_k, ok_k, s_vl, s_vd, offs_dv, DV)
        acc = acc * alpha[:, None] + _dot(p.to(vk.dtype), vk, PRECISION)
        m = m_new

    has = denom > 0.0
    lse_r = tl.where(has, m + tl.log(tl.where(has, denom, 1.0)), float("-inf"))  # this round's log-sum-exp
    o = acc / tl.where(has, denom, 1.0)[:, None]
    out_ptrs = out + pos_q[:, None] * s_ol + offs_dv[None, :] * s_od
    out_mask = ok_q[:, None] & (offs_dv[None, :] < DV)
    if FIRST:
        lse_new = lse_r
    else:
        # Fold this round into the rounds before it: a softmax over the union of their pairs.
        lse_old = tl.load(lse_ptr + pos_q, mask=ok_q, other=float("-inf"))
        o_old = tl.load(out_ptrs, mask=out_mask, other=0.0).to(tl.float32)
        hi = tl.maximum(lse_old, lse_r)
        hi_ref = tl.where(hi == float("-inf"), 0.0, hi)
        total = tl.exp(lse_old - hi_ref) + tl.exp(lse_r - hi_ref)
        lse_new = tl.where(total > 0.0, hi_ref + tl.log(tl.where(total > 0.0, total, 1.0)), float("-inf"))
        new_ref = tl.where(lse_new == float("-inf"), 0.0, lse_new)
        o = o_old * tl.exp(lse_old - new_ref)[:, None] + o * tl.exp(lse_r - new_ref)[:, None]
    if LAST:
        # A token that met no other token in any round attends to itself: its output is its value.
        lonely = ok_q & (lse_new == float("-inf"))
        v_self = _load_rows(v, pos_q, lonely, s_vl, s_vd, offs_dv, DV).to(tl.float32)
        o = tl.where(lonely[:, None], v_self, o)
    tl.store(out_ptrs, o.to(OUT.dtype.element_ty), mask=out_mask)
    tl.store(lse_ptr + pos_q, lse_new, mask=ok_q)


@triton.jit
def lsh_backward_kernel(
    QK, V, DO, LSE, DELTA, DQK, DV, ORDER, CODE,
    s_qb, s_qh, s_ql, s_qd,
    s_vb, s_vh, s_vl, s_vd,
    s_gb, s_gh, s_gl, s_gd,
    s_dqb, s_dqh, s_dql, s_dqd,
    s_dvb, s_dvh, s_dvl, s_dvd,
    s_order_n, s_order_r, r,
    H, L, NB, n_chunks, scale,
    C: tl.constexpr, D: tl.constexpr, DVD: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, ACROSS: tl.constexpr, FIRST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    c, n, b, h, order, code = _program(ORDER, CODE, s_order_n, s_order_r, r, H)
    qk = QK + b * s_qb + h * s_qh
    v = V + b * s_vb + h * s_vh
    do = DO + b * s_gb + h * s_gh
    lse_ptr = LSE + n * L  # total log-sum-exp; +inf where a token has no pair, so its weights are 0
    delta_ptr = DELTA + n * L
    offs = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)

    # The chunk's own tokens: queries for dq, keys for dk and dv.
    pos_c, code_c, ok_c = _slots(order, code, c, offs, C, L, NB, n_chunks)
    qk_c = _load_rows(qk, pos_c, ok_c, s_ql, s_qd, offs_d, D)  # (BLOCK, BLOCK_D), input dtype
    k_c, inv_c = _normalized_keys(qk_c, scale)
    k_c = k_c.to(qk_c.dtype)
    v_c = _load_rows(v, pos_c, ok_c, s_vl, s_vd, offs_dv, DVD)
    do_c = _load_rows(do, pos_c, ok_c, s_gl, s_gd, offs_dv, DVD)
    lse_c = tl.load(lse_ptr + pos_c, mask=ok_c, other=float("inf"))
    delta_c = tl.load(delta_ptr + pos_c, mask=ok_c, other=0.0)

    # dq of chunk c's queries, from their window (chunks c - 1 and c).
    dq = tl.zeros((BLOCK, BLOCK_D), tl.float32)
    for w in tl.static_range(2):
        pos_k, code_k, ok_k = _slots(order, code, c - 1 + w, offs, C, L, NB, n_chunks)
        if w == 1:
            k, vk = k_c, v_c
        else:
            k, _ = _normalized_keys(_load_rows(qk, pos_k, ok_k, s_ql, s_qd, offs_d, D), scale)
            k = k.to(qk_c.dtype)
            vk = _load_rows(v, pos_k, ok_k, s_vl, s_vd, offs_dv, DVD)
        s = _dot(qk_c, tl.trans(k), PRECISION)
        allowed = _allowed(pos_c, code_c, ok_c, pos_k, code_k, ok_k, CAUSAL, ACROSS)
        p = tl.where(allowed, tl.exp(s - lse_c[:, None]), 0.0)
        dp = _dot(do_c, tl.trans(vk), PRECISION)
        ds = p * (dp - delta_c[:, None])
        dq += _dot(ds.to(k.dtype), k, PRECISION)

    # dk and dv of chunk c's keys, from the queries that see them (chunks c and c + 1).
    dk = tl.zeros((BLOCK, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK, BLOCK_DV), tl.float32)
    for w in tl.static_range(2):
        if w == 0:
            pos_q, code_q, ok_q, q, do_q, lse_q, delta_q = pos_c, code_c, ok_c, qk_c, do_c, lse_c, delta_c
        else:
            pos_q, code_q, ok_q = _slots(order, code, c + 1, offs, C, L, NB, n_chunks)
            q = _load_rows(qk, pos_q, ok_q, s_ql, s_qd, offs_d, D)
            do_q = _load_rows(do, pos_q, ok_q, s_gl, s_gd, offs_dv, DVD)
            lse_q = tl.load(lse_ptr + pos_q, mask=ok_q, other=float("inf"))
            delta_q = tl.load(delta_ptr + pos_q, mask=ok_q, other=0.0)
        s = _dot(q, tl.trans(k_c), PRECISION)  # (queries, keys of chunk c)
        allowed = _allowed(pos_q, code_q, ok_q, pos_c, code_c, ok_c, CAUSAL, ACROSS)
        p = tl.where(allowed, tl.exp(s - lse_q[:, None]), 0.0)
        dv += _dot(tl.trans(p).to(do_q.dtype), do_q, PRECISION)
        dp = _dot(do_q, tl.trans(v_c), PRECISION)
        ds = p * (dp - delta_q[:, None])
        dk += _dot(tl.trans(ds).to(q.dtype), q, PRECISION)

    # Through the normalization k = qk * inv, inv = scale / |qk|: dqk = inv (dk - u (u . dk)), u = qk / |qk|.
    u = qk_c.to(tl.float32) * (inv_c / scale)[:, None]
    dq += inv_c[:, None] * (dk - u * tl.sum(u * dk, axis=1)[:, None])

    dq_ptrs = DQK + b * s_dqb + h * s_dqh + pos_c[:, None] * s_dql + offs_d[None, :] * s_dqd
    dv_ptrs = DV + b * s_dvb + h * s_dvh + pos_c[:, None] * s_dvl + offs_dv[None, :] * s_dvd
    dq_mask = ok_c[:, None] & (offs_d[None, :] < D)
    dv_mask = ok_c[:, None] & (offs_dv[None, :] < DVD)
    if not FIRST:  # add to the rounds before (a position is in one chunk per round: no races)
        dq += tl.load(dq_ptrs, mask=dq_mask, other=0.0).to(tl.float32)
        dv += tl.load(dv_ptrs, mask=dv_mask, other=0.0).to(tl.float32)
    tl.store(dq_ptrs, dq.to(DQK.dtype.element_ty), mask=dq_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=dv_mask)
