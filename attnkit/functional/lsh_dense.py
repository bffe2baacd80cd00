"""LSH attention as one dense attention with a bias: for sequences where the rounds cover the sequence.

Combined over rounds, LSH attention gives key j the weight ``n_ij exp(s_ij)``, where ``n_ij`` counts the
rounds in which query i meets key j (same bucket, same or previous chunk after sorting; at most 1 with
``dedup``): a softmax over all keys of ``s_ij + log n_ij``, with ``log 0 = -inf`` where they never meet.
When each query's windows (n_hashes x 2 x chunk slots) are as many as the keys, the chunked path does
at least the work of full attention, through many small operations; here the meeting counts become an
additive mask and ``scaled_dot_product_attention`` does the rest, in a few large operations. Meeting
is one comparison per round: with ``w = group * (n_chunks + 1) + chunk`` per token, i meets j iff
``w_i - w_j`` is 0 or 1. Memory is O(B H L^2), so it is for short sequences (see ``dense_fits``).
Tests hold it equal to the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

DENSE_ELEMENTS = 1 << 24  # "auto" takes this path when B * H * L^2 <= this (and see dense_fits)


def dense_fits(B: int, H: int, L: int, R: int, chunk: int) -> bool:
    """Whether "auto" computes LSH attention densely: the rounds' windows cover the sequence (no less
    work than full attention in the chunked path) and the (L, L) masks of all heads stay small."""
    return R * chunk >= L and B * H * L * L <= DENSE_ELEMENTS


def lsh_attention_dense(
    qk: Tensor, v: Tensor, buckets: Tensor, valid: Tensor | None, *, chunk: int, n_chunks: int, n_buckets: int,
    causal: bool, across: bool, dedup: bool, scale: float,
) -> Tensor:
    """qk (B, H, L, D), v (B, H, L, D_v), buckets (B, H, R, L) in [0, n_buckets), valid (B, H, L) or None
    -> (B, H, L, D_v); ``chunk``, ``n_chunks``: the chunking of :func:`~attnkit.functional.lsh_plan`."""
    B, H, L, _ = qk.shape
    with torch.no_grad():
        count = _meetings(buckets, valid, chunk, n_chunks, n_buckets, across)  # (B, H, L, L)
        allowed = ~torch.eye(L, dtype=torch.bool, device=qk.device)  # never itself ...
        if causal:
            allowed = allowed.tril()
        if valid is not None:
            allowed = allowed & valid[..., None, :] & valid[..., :, None]
        count = count.masked_fill_(~allowed, 0)
        if dedup:
            count.clamp_(max=1)
        count.diagonal(dim1=-2, dim2=-1).masked_fill_(count.sum(-1) == 0, 1)  # ... unless it meets no other
        bias = count.to(qk.dtype).log_()  # (B, H, L, L), -inf where they never meet
    k = torch.nn.functional.normalize(qk, dim=-1)
    out = torch.nn.functional.scaled_dot_product_attention(qk, k, v, attn_mask=bias, scale=scale)
    return out if valid is None else out * valid[..., None]  # padding rows give zeros


def _meetings(buckets: Tensor, valid: Tensor | None, chunk: int, n_chunks: int, n: int, across: bool) -> Tensor:
    """(B, H, L, L) int8: in how many rounds query i and key j share a group and adjacent chunks."""
    B, H, R, L = buckets.shape
    key = buckets if valid is None else buckets.masked_fill(~valid[:, :, None, :], n)  # padding sorts last
    ranks = (key * L + torch.arange(L, device=buckets.device)).argsort(-1).argsort(-1)  # (B, H, R, L)
    group = key if not across else (key == n).long() * n  # across buckets: one group of real tokens
    where = (group * (n_chunks + 1) + ranks // chunk).to(torch.int32)  # (B, H, R, L)
    count = torch.zeros(B, H, L, L, dtype=torch.int8, device=buckets.device)
    for r in range(R):
        d = where[:, :, r, :, None] - where[:, :, r, None, :]  # (B, H, L, L)
        count += (d == 0) | (d == 1)
    return count
