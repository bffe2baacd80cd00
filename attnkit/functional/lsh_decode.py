"""Causal LSH attention one new token at a time, from a cache of the past (decoding).

:func:`lsh_attention` on a sequence of L tokens gives the last token the keys of its own bucket that
the sort puts in its chunk or the chunk before. Which keys those are follows from counts alone: sorted
by (bucket, position), the last token sits at slot ``s = (tokens in lower buckets) + (tokens in its
bucket)``, its window starts at ``w = (s // chunk - 1) * chunk``, so it sees the latest
``s - max(w, start of its bucket)`` members of its bucket. The cache keeps the past shared QK, values
and bucket ids; a step hashes the new token, counts, and attends to what it would have seen, in
O(L) work instead of a pass over the whole prefix. Rounds combine as in the full pass: a key seen in
``n`` rounds has weight ``n exp(score)`` (``exp(score)`` with ``dedup``). The bucket count grows with
the length (:func:`~attnkit.functional.lsh_plan`): when it changes, the cached keys are hashed again.

Tests hold each step equal to the last position of :func:`lsh_attention` over the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .lsh import _compute_dtype, lsh_buckets, lsh_plan


@dataclass
class LSHCache:
    """What one causal LSH attention layer keeps while decoding (batch first, so beam search can reorder it).

    ``qk``, ``v``: the past shared queries/keys and values (B, H, T, D) and (B, H, T, D_v), as given
    to :func:`~attnkit.functional.lsh_attention` (keys not yet scaled to unit length); ``buckets``: their
    bucket ids (B, H, n_hashes, T) under ``n_buckets`` (the plan's count at the last step), or None
    before the first step.
    """

    qk: Tensor
    v: Tensor
    buckets: Tensor | None = None
    n_buckets: tuple[int, ...] = ()

    @property
    def length(self) -> int:
        return self.qk.shape[2]


def lsh_attention_step(
    qk: Tensor,
    v: Tensor,
    cache: LSHCache | None,
    *,
    n_hashes: int = 4,
    bucket_size: int = 64,
    seed: int = 0,
    n_buckets: int | tuple[int, ...] | None = None,
    dedup: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, LSHCache]:
    """Causal LSH attention of one new token at position ``cache.length`` to the cached past.

    Equal to the last position of ``lsh_attention(cat(past, new), causal=True, seed=seed, ...)`` with
    the same settings (``attend_across_buckets=False``, no dropout, no key mask).

    Shape: qk (B, H, 1, D), v (B, H, 1, D_v) -> (out (B, H, 1, D_v), the cache with the token added).
    """
    if qk.dim() != 4 or qk.shape[2] != 1 or v.shape[:3] != qk.shape[:3]:
        raise ValueError(f"qk and v must be one new token, (B, H, 1, D), got {tuple(qk.shape)} and {tuple(v.shape)}")
    if cache is None:
        cache = LSHCache(qk[:, :, :0], v[:, :, :0])
    T = cache.length  # the new token's position
    plan = lsh_plan(T + 1, bucket_size, n_buckets)
    scale = qk.shape[-1] ** -0.5 if scale is None else float(scale)
    buckets = cache.buckets
    if buckets is None or cache.n_buckets != plan.factors:  # first step, or the bucket count changed
        buckets = lsh_buckets(cache.qk, n_hashes, plan.factors, seed)  # (B, H, R, T)
    new = lsh_buckets(qk, n_hashes, plan.factors, seed)  # (B, H, R, 1)
    out = _attend(qk, v, cache, buckets, new, plan.chunk, dedup, scale)
    cache = LSHCache(torch.cat([cache.qk, qk], 2), torch.cat([cache.v, v], 2), torch.cat([buckets, new], 3),
                     plan.factors)
    return out, cache


def _attend(qk, v, cache: LSHCache, buckets: Tensor, new: Tensor, C: int, dedup: bool, scale: float) -> Tensor:
    cdt = _compute_dtype(qk.dtype)
    same = buckets == new  # (B, H, R, T): past tokens in the new token's bucket
    start = (buckets < new).sum(-1)  # (B, H, R): the first slot of its bucket
    slot = start + same.sum(-1)  # its own slot: last of its bucket
    window = torch.maximum((slot // C - 1) * C, start)  # the first slot it can see within its bucket
    from_end = same.flip(-1).cumsum(-1).flip(-1)  # 1 for the bucket's latest member, 2 for the one before ...
    seen = same & (from_end <= (slot - window)[..., None])  # (B, H, R, T)
    count = seen.sum(2, dtype=cdt)  # (B, H, T): rounds in which each past key is seen
    if dedup:
        count = count.clamp(max=1.0)
    q = qk.to(cdt)  # (B, H, 1, D)
    k = torch.nn.functional.normalize(cache.qk.to(cdt), dim=-1) * scale  # (B, H, T, D)
    scores = (q @ k.transpose(-2, -1)).squeeze(2) + count.log()  # (B, H, T), -inf where never seen
    lonely = count.sum(-1) == 0  # (B, H): met no other token, so it attends to itself
    weights = torch.softmax(scores.masked_fill(lonely[..., None], 0.0), dim=-1)
    out = (weights[:, :, None, :] @ cache.v.to(cdt)).to(v.dtype)  # (B, H, 1, D_v)
    return torch.where(lonely[..., None, None], v, out)
