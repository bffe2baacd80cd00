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

import math

import torch
from torch import Tensor

DENSE_ELEMENTS = 1 << 24  # "auto" takes this path when B * H * L^2 <= this (and see dense_fits)


def dense_fits(B: int, H: int, L: int, R: int, chunk: int) -> bool:
    """Whether "auto" computes LSH attention densely: each query's windows (R rounds x 2 chunks of keys)
    are at least as many as the keys, so the chunked path would score no fewer pairs than full attention,
    and the (L, L) masks of all heads stay small. Measured on a 2-core CPU (benchmarks/RESULTS.md, 4 heads
    x 64, 4 rounds of 64): dense is faster up to L = 512 and the chunked path from 1,024, at batch 1 and 16."""
    return 2 * R * chunk >= L and B * H * L * L <= DENSE_ELEMENTS


def lsh_attention_dense(
    qk: Tensor, v: Tensor, buckets: Tensor, valid: Tensor | None, *, chunk: int, n_chunks: int, n_buckets: int,
    causal: bool, across: bool, dedup: bool, scale: float,
) -> Tensor:
    """qk (B, H, L, D), v (B, H, L, D_v), buckets (B, H, R, L) in [0, n_buckets), valid (B, H, L) or None
    -> (B, H, L, D_v); ``chunk``, ``n_chunks``: the chunking of :func:`~attnkit.functional.lsh_plan`."""
    with torch.no_grad():
        bias = _bias(buckets, valid, chunk, n_chunks, n_buckets, causal, across, dedup, qk.dtype)  # (B, H, L, L)
    k = torch.nn.functional.normalize(qk, dim=-1)
    out = torch.nn.functional.scaled_dot_product_attention(qk, k, v, attn_mask=bias, scale=scale)
    return out if valid is None else out * valid[..., None]  # padding rows give zeros


def _bias(buckets: Tensor, valid: Tensor | None, chunk: int, n_chunks: int, n: int, causal: bool, across: bool,
          dedup: bool, dtype: torch.dtype) -> Tensor:
    """(B, H, L, L) log of the meeting counts (``-inf`` where a pair never meets; at most 0 with ``dedup``),
    with the causal, self and padding rules applied."""
    L = buckets.shape[-1]
    count = _meetings(buckets, valid, chunk, n_chunks, n, across)  # (B, H, L, L) int8
    allowed = ~torch.eye(L, dtype=torch.bool, device=buckets.device)  # never itself ...
    if causal:
        allowed = allowed.tril()
    if valid is not None:
        allowed = allowed & valid[..., None, :] & valid[..., :, None]
    count.masked_fill_(~allowed, 0)
    if dedup:
        count.clamp_(max=1)
    count.diagonal(dim1=-2, dim2=-1).masked_fill_(count.sum(-1) == 0, 1)  # ... unless it meets no other
    never = count == 0
    if dedup:  # every count is 0 or 1: no logarithms to take
        return torch.zeros(count.shape, dtype=dtype, device=count.device).masked_fill_(never, -math.inf)
    # log of small counts: clamped to 1 first, since log(0) is a slow path on some CPUs
    return count.to(dtype).clamp_(min=1).log_().masked_fill_(never, -math.inf)


def _meetings(buckets: Tensor, valid: Tensor | None, chunk: int, n_chunks: int, n: int, across: bool) -> Tensor:
    """(B, H, L, L) int8: in how many rounds query i and key j share a group and adjacent chunks."""
    B, H, R, L = buckets.shape
    key = buckets if valid is None else buckets.masked_fill(~valid[:, :, None, :], n)  # padding sorts last
    ranks = (key * L + torch.arange(L, device=buckets.device)).argsort(-1).argsort(-1)  # (B, H, R, L)
    group = key if not across else (key == n).long() * n  # across buckets: one group of real tokens
    where = group * (n_chunks + 1) + ranks // chunk  # (B, H, R, L)
    # i meets j iff where_i - where_j is 0 or 1, i.e. the difference with its lowest bit cleared is 0: one
    # subtraction, one AND and one comparison per round, in 16-bit integers where the window ids fit (the
    # largest id, n * (n_chunks + 1) + n_chunks - 1, is known without reading the tensor)
    where = where.to(torch.int16 if (n + 1) * (n_chunks + 1) < 2**15 else torch.int32)
    count = torch.zeros(B, H, L, L, dtype=torch.int8, device=buckets.device)
    d = torch.empty(B, H, L, L, dtype=where.dtype, device=buckets.device)
    for r in range(R):
        torch.sub(where[:, :, r, :, None], where[:, :, r, None, :], out=d)
        count += d.bitwise_and_(-2) == 0
    return count
