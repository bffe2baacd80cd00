"""LSH attention for short sequences: every head, round and chunk in one batch of tensor operations.

The chunked path of :mod:`attnkit.functional.lsh` walks the heads and rounds one by one to keep memory
at O(L); below a few thousand tokens its per-step overhead (a few dozen small operations per head and
round) costs more than the arithmetic. Here the same algorithm runs as a handful of operations over
(B H R, chunks, C, 2C) score tensors with ordinary autograd, which holds those scores for backward: it
is meant for sequences whose scores fit in ``BATCHED_ELEMENTS``. Tests hold it equal to the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .lsh import LSHPlan, _compute_dtype

BATCHED_ELEMENTS = 1 << 24  # "auto" takes this path when B * H * n_hashes * padded length * 2 chunk <= this


def batched_fits(B: int, H: int, R: int, plan: LSHPlan) -> bool:
    return B * H * R * plan.padded_length * 2 * plan.chunk <= BATCHED_ELEMENTS


def lsh_attention_batched(
    qk: Tensor, v: Tensor, buckets: Tensor, valid: Tensor | None, plan: LSHPlan, causal: bool, across: bool,
    dedup: bool, scale: float,
) -> Tensor:
    """qk (B, H, L, D), v (B, H, L, D_v), buckets (B, H, R, L), valid (B, H, L) or None -> (B, H, L, D_v)."""
    B, H, L, D = qk.shape
    R, C, nc, Lp = buckets.shape[2], plan.chunk, plan.n_chunks, plan.padded_length
    N, dev, cdt = B * H, qk.device, _compute_dtype(qk.dtype)
    with torch.no_grad():
        is_valid = torch.zeros(N, Lp, dtype=torch.bool, device=dev)
        is_valid[:, :L] = True if valid is None else valid.reshape(N, L)
        b = torch.full((N, R, Lp), plan.n_buckets, dtype=torch.long, device=dev)
        b[:, :, :L] = buckets.reshape(N, R, L)
        b.masked_fill_(~is_valid[:, None, :], plan.n_buckets)  # padding sorts last
        _, order = torch.sort(b, dim=-1, stable=True)  # (N, R, Lp): sorted slot -> position
        group = b if not across else torch.where(b < plan.n_buckets, 0, plan.n_buckets)
        code = torch.gather(group, -1, order)  # (N, R, Lp): the group a query and key must share
        k_code = _windows(code.masked_fill(code >= plan.n_buckets, -1).view(N * R, nc, C), -2)  # (NR, nc, 2C)
        forbid = code.view(N * R, nc, C, 1) != k_code[:, :, None, :]  # (NR, nc, C, 2C)
        if causal and across:
            pos = order.view(N * R, nc, C)
            forbid |= _windows(pos, Lp)[:, :, None, :] > pos[..., None]
        elif causal:  # within a bucket the sorted order is the position order: a fixed pattern
            forbid |= torch.ones(C, 2 * C, dtype=torch.bool, device=dev).triu(C + 1)
        forbid.diagonal(offset=C, dim1=-2, dim2=-1).fill_(True)  # itself: only when nothing else (below)
        if dedup:
            meets = _meet_counts(group, order, nc, C)  # (NR, nc, C, 2C) rounds in which a pair meets
        rows = (torch.arange(N, device=dev)[:, None, None] * L + order.clamp(max=L - 1)).view(-1)  # (N R Lp)

    k = torch.nn.functional.normalize(qk, dim=-1) * scale
    q_s = qk.to(cdt).reshape(N * L, D).index_select(0, rows).view(N * R, nc, C, D)
    k_s = _windows(k.to(cdt).reshape(N * L, D).index_select(0, rows).view(N * R, nc, C, D), 0.0)  # (NR, nc, 2C, D)
    v_s = _windows(v.to(cdt).reshape(N * L, -1).index_select(0, rows).view(N * R, nc, C, -1), 0.0)
    s = (q_s @ k_s.transpose(-2, -1)).masked_fill(forbid, float("-inf"))  # (NR, nc, C, 2C)
    if dedup:
        s = s - meets.to(s.dtype).log()
    empty = forbid.all(-1)  # (NR, nc, C): no target in this round
    s = s.masked_fill(empty[..., None], 0.0)  # finite rows; the round's weight for them is zero below
    lse = torch.logsumexp(s, dim=-1).masked_fill(empty, float("-inf"))  # (NR, nc, C)
    o = torch.softmax(s, dim=-1) @ v_s  # (NR, nc, C, Dv), sorted

    # back to positions, then one softmax over all rounds: round r weighs exp(lse_r - lse)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(Lp, device=dev).expand(N, R, Lp))[..., :L]
    o = o.view(N, R, Lp, -1).gather(2, rank[..., None].expand(N, R, L, o.shape[-1]))  # (N, R, L, Dv)
    lse = lse.view(N, R, Lp).gather(2, rank)  # (N, R, L)
    lonely = (lse == float("-inf")).all(1)  # (N, L): met no other token in any round
    total = torch.logsumexp(lse.masked_fill(lonely[:, None], 0.0), dim=1, keepdim=True)  # (N, 1, L)
    out = ((lse - total).exp()[..., None] * o).sum(1)  # (N, L, Dv)
    lonely = lonely & is_valid[:, :L]
    out = torch.where(lonely[..., None], v.reshape(N, L, -1).to(cdt), out)  # a real lonely token keeps its value
    return out.view(B, H, L, -1).to(v.dtype)


def _windows(x: Tensor, fill) -> Tensor:
    """(..., nc, C, *rest) chunks -> (..., nc, 2C, *rest): each chunk after the one before it (``fill``
    in front of chunk 0)."""
    before = torch.cat([torch.full_like(x[:, :1], fill), x[:, :-1]], dim=1)
    return torch.cat([before, x], dim=2)


def _meet_counts(group: Tensor, order: Tensor, nc: int, C: int) -> Tensor:
    """For each query slot and window key slot, the number of rounds in which the two tokens share a
    group and sit in the same or adjacent chunks (query's chunk minus key's chunk 0 or 1), at least 1."""
    N, R, Lp = order.shape
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(Lp, device=order.device).expand(N, R, Lp))
    where = (group * (nc + 1) + rank // C).transpose(1, 2)  # (N, Lp, R): by position
    sorted_where = where.gather(1, order.reshape(N, R * Lp, 1).expand(N, R * Lp, R)).view(N * R, nc, C, R)
    key_where = _windows(sorted_where, -(2**40))  # (NR, nc, 2C, R)
    d = sorted_where[:, :, :, None, :] - key_where[:, :, None, :, :]  # (NR, nc, C, 2C, R)
    return ((d >= 0) & (d <= 1)).sum(-1).clamp_min(1)
