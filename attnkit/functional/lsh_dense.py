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

import functools

import torch
from torch import Tensor

DENSE_ELEMENTS = 1 << 24  # "auto" takes this path when B * H * L^2 <= this (and see dense_fits)


def dense_fits(B: int, H: int, L: int, R: int, chunk: int) -> bool:
    """Whether "auto" computes LSH attention densely: each query's windows (R rounds x 2 chunks of keys)
    number at least half the keys, so the chunked path would score at least half the pairs full attention
    scores, through many more, smaller operations; and the (L, L) masks of all heads stay small. Measured
    on a 2-core CPU (benchmarks/RESULTS.md, 4 heads x 64, 4 rounds of 64, 2 threads): dense is faster up to
    L = 1,024 at batch 1 (1.7x there) and the chunked path from 2,048."""
    return 4 * R * chunk >= L and B * H * L * L <= DENSE_ELEMENTS


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
    with the causal, self and padding rules applied.

    Every pass over the (L, L) pairs is integer arithmetic or a single conversion: on CPU, comparisons that
    produce booleans and ``masked_fill`` cost about ten times a vectorized add at these sizes."""
    L = buckets.shape[-1]
    count = _meetings(buckets, valid, chunk, n_chunks, n, across)  # (B, H, L, L) int16
    count.mul_(_allowed(L, causal, buckets.device))  # never itself; with causal, never a later key ...
    if valid is not None:
        count.mul_(valid[..., None, :] & valid[..., :, None])
    if dedup:
        count.clamp_(max=1)
    lonely = count.amax(-1) == 0  # (B, H, L): no other target (the diagonal is 0 here)
    count.diagonal(dim1=-2, dim2=-1).copy_(lonely)  # ... unless it meets no other
    # log(count) as log1p(count - 1): the same values, with log1p(-1) = -inf where a pair never meets, and
    # no slow path for log(0) on CPUs that have one
    return count.to(dtype).sub_(1).log1p_()


@functools.lru_cache(maxsize=4)
def _allowed(L: int, causal: bool, device: torch.device) -> Tensor:
    """(L, L) int16: 1 where query i may attend key j (j != i; with causal, j < i), else 0."""
    ones = torch.ones(L, L, dtype=torch.int16, device=device)
    return ones.tril_(-1) if causal else ones.fill_diagonal_(0)


def _meetings(buckets: Tensor, valid: Tensor | None, chunk: int, n_chunks: int, n: int, across: bool) -> Tensor:
    """(B, H, L, L) int16: in how many rounds query i and key j share a group and adjacent chunks."""
    B, H, R, L = buckets.shape
    key = buckets if valid is None else buckets.masked_fill(~valid[:, :, None, :], n)  # padding sorts last
    ranks = (key * L + torch.arange(L, device=buckets.device)).argsort(-1).argsort(-1)  # (B, H, R, L)
    group = key if not across else (key == n).long() * n  # across buckets: one group of real tokens
    where = group * (n_chunks + 1) + ranks // chunk  # (B, H, R, L)
    # i meets j iff d = where_i - where_j is 0 or 1, i.e. d >> 1 (an arithmetic shift) is 0: per round
    # min(|d >> 1|, 1) is 1 where they do not meet, in 16-bit integers where the window ids fit (the
    # largest id, n * (n_chunks + 1) + n_chunks - 1, is known without reading the tensor)
    where = where.to(torch.int16 if (n + 1) * (n_chunks + 1) < 2**15 else torch.int32)
    missed = torch.zeros(B, H, L, L, dtype=where.dtype, device=buckets.device)
    d = torch.empty(B, H, L, L, dtype=where.dtype, device=buckets.device)
    for r in range(R):
        torch.sub(where[:, :, r, :, None], where[:, :, r, None, :], out=d)
        missed += d.bitwise_right_shift_(1).abs_().clamp_(max=1)
    return torch.sub(R, missed).to(torch.int16)  # R <= 2**15: a round count always fits
