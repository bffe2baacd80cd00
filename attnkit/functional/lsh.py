"""LSH self-attention (Kitaev, Kaiser & Levskaya 2020, "Reformer: The Efficient Transformer", section 2).

Queries and keys are shared: the keys are the queries scaled to unit length, so a query and a key
that point the same way land in the same hash bucket. For each of ``n_hashes`` rounds:

1. hash every token with angular LSH, ``h(x) = argmax([x R; -x R])`` for a fresh random rotation R
   (with many buckets, R is split into two smaller rotations whose buckets are combined);
2. sort the tokens by (bucket, position) and cut the sorted sequence into chunks of ``bucket_size``;
3. each chunk attends to itself and to the chunk before it, keeping only pairs in the same bucket
   (``attend_across_buckets=True`` keeps every pair of the two chunks, as reformer-pytorch and
   Hugging Face do); causal masking uses the original positions.

A token attends to itself only when it has no other target, since with shared QK a token is always
closest to itself: the paper gives the self pair a large negative score; here it is left out, and a token
that meets no other token in any round outputs its own value (the limit of that score, free of the
rounding a large constant brings into the log-sum-exp). The rounds are combined as one
softmax over all the pairs they found: round r contributes with weight ``exp(lse_r - lse)``. With
``dedup=True`` a pair met in N rounds has its score lowered by log N, so it is not counted N times
(the paper's eq. 6 with the m_ij term).

Four implementations, one signature:

* ``impl="reference"`` writes this out plainly: full (L, L) shared-QK scores per round, masked to
  the pairs that share a bucket and lie in adjacent chunks after sorting. O(n_hashes L^2) memory.
* ``impl="dense"`` (the ``"auto"`` choice on CPU for short sequences, where the rounds' windows reach at
  least half the keys) is one dense attention whose additive mask is the log of how many rounds each pair
  meets in (:mod:`attnkit.functional.lsh_dense`): a few large operations instead of many small ones.
* ``impl="chunked"`` (the ``"auto"`` choice on CPU beyond) works on the sorted order, in slices of chunks, as
  (chunks, bucket_size, 2 * bucket_size) matrix products, inside a custom autograd function that keeps
  only the sort orders and the per-token log-sum-exp and recomputes the scores in backward. Memory is
  O(n_hashes L) plus one slice of scores.
* ``impl="fused"`` (the ``"auto"`` choice on CUDA) is the same algorithm as two Triton kernels, one
  program per chunk (:mod:`attnkit.kernels.lsh`).

Tests hold them equal, values and gradients.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..kernels.alloc import row_dots, token_major
from ..seeding import derive_seed
from .attention import check_key_mask

IMPLS = ("auto", "reference", "chunked", "dense", "fused")
FACTORIZE_ABOVE = 128  # more buckets than this are hashed as a product of two smaller rotations
_HASH_BLOCK = 8192  # tokens hashed at a time on CPU (per head)
_HASH_ELEMENTS_GPU = 1 << 26  # projections computed at a time on a GPU (256 MB in fp32)
_HASH_ELEMENTS_CPU = 1 << 22  # up to this many projections in all (16 MB), a CPU hashes every head at once
_SLICE_ELEMENTS = 1 << 19  # scores per slice in the chunked path (2 MiB in fp32)
# On CPU, spread the heads over worker threads (set ATTNKIT_LSH_HEAD_THREADS=0 to use intra-op threads).
_HEAD_THREADS = os.environ.get("ATTNKIT_LSH_HEAD_THREADS", "1") != "0"


@dataclass(frozen=True)
class LSHPlan:
    """How a sequence of ``length`` tokens is hashed and chunked.

    ``chunk``: tokens per chunk (``bucket_size``, or the whole sequence when it is shorter);
    ``n_chunks``: chunks per round, ``padded_length = n_chunks * chunk``; ``factors``: the bucket counts
    of the rotations whose product is ``n_buckets`` (one factor unless factorized).
    """

    length: int
    chunk: int
    n_chunks: int
    n_buckets: int
    factors: tuple[int, ...]

    @property
    def padded_length(self) -> int:
        return self.chunk * self.n_chunks


def lsh_plan(length: int, bucket_size: int, n_buckets: int | tuple[int, ...] | None = None) -> LSHPlan:
    """Bucket count and chunking for a sequence of ``length`` tokens.

    By default a sequence no longer than ``bucket_size`` has one bucket (LSH attention is then exact
    shared-QK attention); a longer one has about ``length / bucket_size`` buckets (rounded up to even),
    factorized into two even factors above ``FACTORIZE_ABOVE`` buckets. ``n_buckets`` overrides the count;
    a tuple gives the factors explicitly.
    """
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    if not isinstance(bucket_size, int) or isinstance(bucket_size, bool) or bucket_size < 1:
        raise ValueError(f"bucket_size must be a positive int, got {bucket_size!r}")
    chunk = min(bucket_size, length)
    n_chunks = -(-length // chunk)
    if n_buckets is None:
        if length <= bucket_size:
            factors: tuple[int, ...] = (1,)
        else:
            n = -(-length // bucket_size)
            n += n % 2
            factors = _factorize(n) if n > FACTORIZE_ABOVE else (n,)
    elif isinstance(n_buckets, tuple):
        factors = n_buckets
        if not factors or any(not isinstance(f, int) or f < 2 or f % 2 for f in factors):
            raise ValueError(f"n_buckets factors must be even ints >= 2, got {n_buckets!r}")
    else:
        if not isinstance(n_buckets, int) or isinstance(n_buckets, bool) or n_buckets < 1:
            raise ValueError(f"n_buckets must be a positive int or a tuple of factors, got {n_buckets!r}")
        if n_buckets > 1 and n_buckets % 2:
            raise ValueError(
                f"n_buckets must be 1 or even (angular LSH buckets come in +/- pairs), got {n_buckets}"
            )
        factors = (n_buckets,)
    return LSHPlan(length, chunk, n_chunks, math.prod(factors), factors)


def _factorize(n: int) -> tuple[int, int]:
    # Two even factors whose product is at least n, as close to sqrt(n) as possible.
    a = 2 * max(1, round(math.sqrt(n) / 2))
    b = -(-n // a)
    return a, b + b % 2


def random_rotations(
    d: int, n_hashes: int, factors: tuple[int, ...], seed: int, device=None
) -> list[Tensor]:
    """One (d, n_hashes, f / 2) Gaussian rotation per bucket factor f, drawn from ``seed``.

    Drawn on the CPU and moved, so a seed gives the same rotations on every device.
    """
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(d, n_hashes, f // 2, generator=g).to(device) if f > 1 else None for f in factors
    ]


def lsh_buckets(
    x: Tensor, n_hashes: int, factors: tuple[int, ...], seed: int
) -> Tensor:
    """Angular LSH buckets of x (B, H, L, D) -> (B, H, n_hashes, L) integer ids in [0, prod(factors)).

    For each factor f: ``argmax([x R; -x R])`` over f directions; the factors' ids are combined in mixed
    radix. Rotations are shared by the batch and the heads, new for each round. Computed in fp32.
    """
    B, H, L, D = x.shape
    rotations = random_rotations(D, n_hashes, factors, seed, device=x.device)
    out = torch.zeros(B * H, n_hashes, L, dtype=torch.long, device=x.device)

    if x.device.type == "cpu" and B * H * n_hashes * L * max(factors) > _HASH_ELEMENTS_CPU:

        def heads(ns):  # one (batch, head) at a time, in blocks of tokens
            for n in ns:
                for t0 in range(0, L, _HASH_BLOCK):
                    t1 = t0 + _HASH_BLOCK
                    _hash_block(x[n // H, n % H, t0:t1], out[n, :, t0:t1], factors, rotations)

        _run_heads(heads, B * H, x.device)
    else:
        budget = _HASH_ELEMENTS_CPU if x.device.type == "cpu" else _HASH_ELEMENTS_GPU
        _hash_all_heads(x, out.view(B, H, n_hashes, L), factors, rotations, budget)
    return out.view(B, H, n_hashes, L)


def _hash_block(xb: Tensor, ids: Tensor, factors: tuple[int, ...], rotations: list) -> None:
    """Bucket ids of xb (..., T, D), accumulated in mixed radix into ids (..., n_hashes, T)."""
    for f, R in zip(factors, rotations):
        if R is None:
            continue
        proj = torch.einsum("...ld,drk->...rlk", xb.float(), R)  # (..., n_hashes, T, f / 2)
        # argmax over [proj, -proj] without building it: the largest +proj or the largest -proj.
        hi, i_hi = proj.max(dim=-1)
        lo, i_lo = proj.min(dim=-1)
        ids.mul_(f).add_(torch.where(hi >= -lo, i_hi, i_lo + f // 2))


def _hash_all_heads(x: Tensor, ids: Tensor, factors: tuple[int, ...], rotations: list, max_elements: int) -> None:
    """Every head at once, in blocks of tokens of at most ``max_elements`` projections (at least one token):
    the GPU way, and a CPU's for few tokens (fewer, larger operations than head by head).
    x (B, H, L, D), ids (B, H, n_hashes, L)."""
    B, H, n_hashes, L = ids.shape
    step = max(1, max_elements // (B * H * n_hashes * max(factors)))
    with torch.no_grad():
        for t0 in range(0, L, step):
            _hash_block(x[:, :, t0 : t0 + step], ids[..., t0 : t0 + step], factors, rotations)


def shared_qk_attention(
    qk: Tensor, v: Tensor, *, causal: bool = False, key_mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """Exact (full) shared-QK attention, the limit LSH attention approximates.

    Scores ``qk_i . k_j * scale`` with ``k_j = qk_j / |qk_j|``; a token attends to itself only when it
    has no other target. ``key_mask``: key padding mask (B, L), True = real token. Rows of padding
    tokens give zeros.

    Shape: qk (B, H, L, D), v (B, H, L, D_v) -> (B, H, L, D_v).
    """
    _check_inputs(qk, v)
    B, H, L, D = qk.shape
    valid = _valid(key_mask, B, H, L)
    scale = D**-0.5 if scale is None else scale
    k = torch.nn.functional.normalize(qk, dim=-1) * scale
    scores = (qk @ k.transpose(-2, -1)).to(_compute_dtype(qk.dtype))  # (B, H, L, L)
    allowed = ~torch.eye(L, dtype=torch.bool, device=qk.device)  # not itself ...
    if causal:
        allowed = allowed.tril()
    if valid is not None:
        allowed = allowed & valid[:, :, None, :] & valid[:, :, :, None]  # (B, H, L, L)
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked rows -> 0
    out = weights.to(v.dtype) @ v
    return _self_fallback(out, v, allowed.any(-1), valid)  # ... unless it has no other target


def _dense_shared_qk(qk: Tensor, v: Tensor, causal: bool, valid: Tensor | None, scale: float) -> Tensor:
    """:func:`shared_qk_attention` through ``scaled_dot_product_attention`` (fused kernels, no (L, L) scores
    kept for backward). A token with no other target is allowed itself, which gives its own value exactly as
    the fallback does; padding rows (allowed only themselves) are zeroed.

    Shape: qk (B, H, L, D), v (B, H, L, D_v), valid (B, H, L) or None -> (B, H, L, D_v).
    """
    L = qk.shape[2]
    k = torch.nn.functional.normalize(qk, dim=-1)
    eye = torch.eye(L, dtype=torch.bool, device=qk.device)
    allowed = ~eye  # (L, L)
    if causal:
        allowed = allowed.tril()
    if valid is not None:
        valid = valid[:, :1]  # (B, 1, L): the same mask for every head
        allowed = allowed & valid[..., None, :] & valid[..., :, None]  # (B, 1, L, L)
    allowed = allowed | (eye & ~allowed.any(-1, keepdim=True))  # itself, where nothing else
    out = torch.nn.functional.scaled_dot_product_attention(qk, k, v, attn_mask=allowed, scale=scale)
    return out if valid is None else out * valid[..., None]


def _self_fallback(out: Tensor, v: Tensor, has_target: Tensor, valid: Tensor | None) -> Tensor:
    # A real token with no other target attends to itself: its output is its own value.
    lonely = ~has_target if valid is None else valid & ~has_target  # (B, H, L)
    return torch.where(lonely[..., None], v, out)


def lsh_attention(
    qk: Tensor,
    v: Tensor,
    *,
    n_hashes: int = 4,
    bucket_size: int = 64,
    causal: bool = False,
    key_mask: Tensor | None = None,
    seed: int | None = None,
    impl: str = "auto",
    n_buckets: int | tuple[int, ...] | None = None,
    attend_across_buckets: bool = False,
    dedup: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """LSH attention with shared queries and keys.

    Args:
        qk: shared queries/keys (B, H, L, D); the keys are ``qk`` scaled to unit length.
        v: values (B, H, L, D_v).
        n_hashes: hash rounds; more rounds find more of each query's neighbours (and cost more).
        bucket_size: tokens per chunk; the default bucket count is about L / bucket_size. Any L works:
            the sequence is padded inside, and a sequence no longer than bucket_size is one bucket.
        causal: a token attends only to tokens at its position or before (original positions).
        key_mask: key padding mask (B, L), True = real token. Padding tokens are never attended to,
            and their own outputs are zero. (LSH attention takes no general attention mask.)
        seed: seeds the random rotations (and the dropout masks). ``None`` draws one from torch's
            global generator, so ``torch.manual_seed`` makes a run repeatable.
        impl: ``"reference"`` (plain full-matrix version), ``"chunked"`` (sorted, sliced, memory-lean),
            ``"dense"`` (one dense attention with the rounds' meeting counts as a mask, for short
            sequences), ``"fused"`` (Triton kernels, :mod:`attnkit.kernels.lsh`: CUDA, or CPU under
            TRITON_INTERPRET=1) or ``"auto"``: dense shared-QK attention when the sequence is one chunk
            and one bucket (the same result), else fused on CUDA when Triton is installed and the options
            allow, else dense where ``lsh_dense.dense_fits`` (and without dropout), else chunked.
        n_buckets: override the bucket count (even, or 1), or give its factors as a tuple.
        attend_across_buckets: keep pairs of different buckets that fall in adjacent chunks.
        dedup: lower the score of a pair found in N rounds by log N, so it counts once.
        dropout_p: dropout on the attention weights (chunked path only; the caller passes 0.0 in eval).
        scale: score scale, default ``1 / sqrt(D)``.

    Returns:
        (B, H, L, D_v), in v's dtype (scores and softmax are computed in at least fp32).
    """
    _check_inputs(qk, v)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not isinstance(n_hashes, int) or isinstance(n_hashes, bool) or n_hashes < 1:
        raise ValueError(f"n_hashes must be a positive int, got {n_hashes!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    B, H, L, D = qk.shape
    plan = lsh_plan(L, bucket_size, n_buckets)
    valid = _valid(key_mask, B, H, L)  # (B, H, L) or None
    scale = D**-0.5 if scale is None else float(scale)
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    with torch.no_grad():
        buckets = lsh_buckets(qk.detach(), n_hashes, plan.factors, seed)  # (B, H, n_hashes, L)
    one_chunk = plan.n_chunks == 1 and (plan.n_buckets == 1 or attend_across_buckets)
    if impl == "auto" and one_chunk and dropout_p == 0.0:
        # Every token meets every other in every round with the same score: exactly shared-QK attention
        # (with or without dedup), which dense matrix products compute faster than the chunked path.
        return _dense_shared_qk(qk, v, causal, valid, scale)
    if impl == "fused" or (impl == "auto" and qk.is_cuda):
        from ..kernels.lsh import fused_lsh_attention, unsupported

        why = unsupported(qk, dedup=dedup, dropout_p=dropout_p)
        if why is None:
            return fused_lsh_attention(
                qk, v, buckets, valid, chunk=plan.chunk, n_chunks=plan.n_chunks, n_buckets=plan.n_buckets,
                causal=causal, across=attend_across_buckets, scale=scale,
            )
        if impl == "fused":
            raise ValueError(f"impl='fused' cannot run these inputs: {why}")
    if impl in ("reference", "dense") and dropout_p > 0.0:
        raise ValueError("dropout_p > 0 is only supported by impl='chunked'")
    if impl == "reference":
        return _reference(qk, v, buckets, valid, plan, causal, attend_across_buckets, dedup, scale)
    from .lsh_dense import dense_fits, lsh_attention_dense

    if impl == "dense" or (impl == "auto" and dropout_p == 0.0 and dense_fits(B, H, L, n_hashes, plan.chunk)):
        return lsh_attention_dense(
            qk, v, buckets, valid, chunk=plan.chunk, n_chunks=plan.n_chunks, n_buckets=plan.n_buckets,
            causal=causal, across=attend_across_buckets, dedup=dedup, scale=scale,
        )
    return _chunked(qk, v, buckets, valid, plan, causal, attend_across_buckets, dedup, dropout_p, seed, scale)


# ----------------------------------------------------------------------------------------------------
# The weights, for looking at them: which keys each query attended to, and how much.


class LSHWeights(NamedTuple):
    """What :func:`lsh_attention_weights` returns.

    ``weights``: sparse COO (B, H, L, L), row i the weights query i gives the keys (summed over the
    rounds that met the pair; rows of real tokens sum to one, padding rows are empty); ``buckets``
    (B, H, n_hashes, L): each token's bucket per round; ``chunks`` (B, H, n_hashes, L): the chunk of
    the round's (bucket, position) order each token falls in.
    """

    weights: Tensor
    buckets: Tensor
    chunks: Tensor


@torch.no_grad()
def lsh_attention_weights(
    qk: Tensor,
    *,
    n_hashes: int = 4,
    bucket_size: int = 64,
    causal: bool = False,
    key_mask: Tensor | None = None,
    seed: int,
    n_buckets: int | tuple[int, ...] | None = None,
    attend_across_buckets: bool = False,
    dedup: bool = False,
    scale: float | None = None,
) -> LSHWeights:
    """The attention weights :func:`lsh_attention` uses for the same arguments (and ``seed``), as a
    sparse matrix: ``weights @ v`` is its output (without dropout). Memory O(n_hashes L bucket_size),
    so it serves for long sequences too; the tests hold it to ``impl="reference"``.
    """
    B, H, L, D = qk.shape
    plan = lsh_plan(L, bucket_size, n_buckets)
    valid = _valid(key_mask, B, H, L)
    scale = D**-0.5 if scale is None else float(scale)
    N, R, C, n = B * H, n_hashes, plan.chunk, plan.n_chunks
    buckets = lsh_buckets(qk, n_hashes, plan.factors, seed)  # (B, H, R, L)
    b_flat = buckets.reshape(N, R, L)
    real = None if valid is None else valid.reshape(N, L)
    ranks = _sort_ranks(b_flat, None if real is None else real[:, None].expand(N, R, L), plan.n_buckets)
    order = ranks.argsort(dim=-1)  # (N, R, L): the positions in the round's sorted order
    order = torch.cat([order, order.new_full((N, R, n * C - L), -1)], dim=-1).view(N, R, n, C)  # -1: empty slot
    before = torch.cat([order.new_full((N, R, 1, C), -1), order[:, :, :-1]], dim=2)  # the chunk before
    window = torch.cat([before, order], dim=-1)  # (N, R, n, 2C): the keys each chunk meets
    qi, kj = order[..., :, None], window[..., None, :]  # (N, R, n, C, 1), (N, R, n, 1, 2C)
    allowed = (qi >= 0) & (kj >= 0) & (qi != kj)  # (N, R, n, C, 2C); never itself (see _self_fallback)
    if causal:
        allowed &= kj < qi
    qc, kc = qi.clamp_min(0), kj.clamp_min(0)
    n_idx = torch.arange(N, device=qk.device).view(N, 1, 1, 1, 1)
    r_idx = torch.arange(R, device=qk.device).view(1, R, 1, 1, 1)
    if real is not None:
        allowed &= real[n_idx, qc] & real[n_idx, kc]
    if not attend_across_buckets:
        allowed &= b_flat[n_idx, r_idx, qc] == b_flat[n_idx, r_idx, kc]
    x = qk.reshape(N, L, D).float()
    k = torch.nn.functional.normalize(x, dim=-1) * scale
    q_rows = x[n_idx[..., 0], order.clamp_min(0)]  # (N, R, n, C, D)
    k_rows = k[n_idx[..., 0], window.clamp_min(0)]  # (N, R, n, 2C, D)
    scores = (q_rows @ k_rows.transpose(-2, -1)).masked_fill(~allowed, float("-inf"))  # (N, R, n, C, 2C)
    i_all, j_all, n_all = qc.expand_as(allowed), kc.expand_as(allowed), n_idx.expand_as(allowed)
    if dedup:  # a pair met in m rounds has its score lowered by log m, so it counts once
        pair = (n_all * L + i_all) * L + j_all
        _, inverse, counts = torch.unique(pair[allowed], return_inverse=True, return_counts=True)
        scores[allowed] -= counts[inverse].float().log()
    # one softmax over every pair the rounds found: lse_i = logsumexp over rounds of each round's lse
    lse_rounds = torch.full((N, R, L + 1), float("-inf"), device=qk.device)  # column L takes empty slots
    lse_rounds[n_idx[..., 0], r_idx[..., 0], order] = torch.logsumexp(scores, dim=-1)
    lse = torch.logsumexp(lse_rounds[..., :L], dim=1)  # (N, L)
    p = torch.exp(scores - lse[n_idx, qc])  # (N, R, n, C, 2C)
    n_kept, i_kept = n_all[allowed], i_all[allowed]
    indices = torch.stack([n_kept // H, n_kept % H, i_kept, j_all[allowed]])
    values = p[allowed]
    met = torch.zeros(N * L, dtype=torch.bool, device=qk.device)
    met[n_kept * L + i_kept] = True
    lonely = ~met.view(B, H, L) if valid is None else valid & ~met.view(B, H, L)
    lb, lh, li = lonely.nonzero(as_tuple=True)  # a real token that met no other token attends to itself
    indices = torch.cat([indices, torch.stack([lb, lh, li, li])], dim=1)
    values = torch.cat([values, values.new_ones(li.shape[0])])
    weights = torch.sparse_coo_tensor(indices, values, (B, H, L, L), check_invariants=False).coalesce()
    chunks = ranks.view(B, H, R, L) // C
    return LSHWeights(weights, buckets, chunks)


# ----------------------------------------------------------------------------------------------------
# Reference: the definition, with full (L, L) matrices.


def _sort_ranks(buckets: Tensor, valid: Tensor | None, n_buckets: int) -> Tensor:
    """Position of each token in the (bucket, position) order, padding tokens last: (..., L)."""
    L = buckets.shape[-1]
    key = buckets if valid is None else buckets.masked_fill(~valid, n_buckets)
    key = key * L + torch.arange(L, device=buckets.device)
    return key.argsort(dim=-1).argsort(dim=-1)


def _reference(qk, v, buckets, valid, plan, causal, across, dedup, scale):
    B, H, L, D = qk.shape
    R = buckets.shape[2]
    k = torch.nn.functional.normalize(qk, dim=-1) * scale
    scores = (qk @ k.transpose(-2, -1)).to(_compute_dtype(qk.dtype))  # (B, H, L, L)

    base = ~torch.eye(L, dtype=torch.bool, device=qk.device)  # never itself (see _self_fallback)
    if causal:
        base = base.tril()
    base = base.expand(B, H, L, L)
    if valid is not None:
        base = base & valid[:, :, :, None] & valid[:, :, None, :]
    allowed = []  # per round: (B, H, L, L), True where query i meets key j in that round
    for r in range(R):
        b = buckets[:, :, r]  # (B, H, L)
        chunk = _sort_ranks(b, valid, plan.n_buckets) // plan.chunk  # (B, H, L)
        offset = chunk[:, :, :, None] - chunk[:, :, None, :]  # chunk(i) - chunk(j)
        meet = base & ((offset == 0) | (offset == 1))  # same chunk, or j one chunk back
        if not across:
            meet = meet & (b[:, :, :, None] == b[:, :, None, :])
        allowed.append(meet)
    if dedup:
        count = torch.stack(allowed).sum(0).clamp_min(1)  # rounds in which each pair meets
        scores = scores - count.to(scores.dtype).log()
    per_round = [scores.masked_fill(~a, float("-inf")) for a in allowed]
    weights = torch.softmax(torch.cat(per_round, dim=-1), dim=-1).nan_to_num(0.0)  # (B, H, L, R * L)
    weights = weights.to(v.dtype).unflatten(-1, (R, L))  # (B, H, L, R, L)
    out = torch.einsum("bhirj,bhjd->bhid", weights, v)
    has_target = torch.stack(allowed).any(0).any(-1)  # (B, H, L)
    return _self_fallback(out, v, has_target, valid)


# ----------------------------------------------------------------------------------------------------
# Chunked: the sorted, sliced algorithm with recomputation in backward.


def _chunked(qk, v, buckets, valid, plan, causal, across, dedup, dropout_p, seed, scale):
    B, H, L, _ = qk.shape
    R = buckets.shape[2]
    Lp, C, N = plan.padded_length, plan.chunk, B * H
    device = qk.device
    with torch.no_grad():
        is_valid = torch.zeros(N, Lp, dtype=torch.bool, device=device)
        is_valid[:, :L] = True if valid is None else valid.reshape(N, L)
        b = torch.full((N, R, Lp), plan.n_buckets, dtype=torch.long, device=device)
        b[:, :, :L] = buckets.reshape(N, R, L)
        b.masked_fill_(~is_valid[:, None, :], plan.n_buckets)  # padding sorts last
        # A stable sort by bucket keeps the positions ascending within each bucket.
        _, order = torch.sort(b, dim=-1, stable=True)  # (N, R, Lp): sorted slot -> position
        group = b if not across else torch.where(b < plan.n_buckets, 0, plan.n_buckets)
        code = torch.gather(group, -1, order)  # (N, R, Lp), sorted: the group a query and key must share
        where = None
        if dedup:
            # Where each token sits in every round, as one number, group * (n_chunks + 1) + chunk: two
            # tokens meet in a round iff the query's number minus the key's is 0 or 1.
            rank = torch.empty_like(order)
            rank.scatter_(-1, order, torch.arange(Lp, device=device).expand(N, R, Lp))
            where = (group * (plan.n_chunks + 1) + rank // C).transpose(1, 2).contiguous()  # (N, Lp, R)
    cfg = _Config(plan, causal, across, dedup, dropout_p, seed, scale)
    return _LSHAttentionFunction.apply(qk, v, order, code, where, is_valid[:, :L].view(B, H, L), cfg)


@dataclass(frozen=True)
class _Config:
    plan: LSHPlan
    causal: bool
    across: bool
    dedup: bool
    dropout_p: float
    seed: int
    scale: float


class _Round:
    """One (batch*head, round) in sorted order, processed in slices of chunks.

    Slice [c0, c1) needs the queries of its chunks and, as keys, those chunks plus the one before:
    rows ``[c0 * C - C, c1 * C)`` of the sorted order, gathered into a small buffer (an empty chunk stands
    in front of chunk 0), whose windows (chunks c - 1 and c) are strided views rather than copies.
    Slots ``>= L`` hold the padding up to a whole number of chunks; they sort last.
    """

    def __init__(self, cfg: _Config, order: Tensor, code: Tensor, where: Tensor | None, L: int):
        plan = cfg.plan
        C, Lp = plan.chunk, plan.padded_length
        self.cfg, self.C, self.n_chunks, self.L = cfg, C, plan.n_chunks, L
        device = order.device
        self.order = order
        self.src = torch.cat([order.new_zeros(C), order.clamp(max=L - 1)])  # (C + Lp,) rows to gather
        if cfg.causal and cfg.across:
            # Pairs of different buckets meet, but only backwards in position, which is no interval of the
            # sorted order: the rule is arithmetic on each slot's group code and position (see scores).
            valid = code < plan.n_buckets  # (Lp,)
            self.q_code = code
            self.k_code = torch.full((C + Lp,), -1, dtype=code.dtype, device=device)
            self.k_code[C:] = code.masked_fill(~valid, -1)  # a padding key matches no query
            self.q_pos = order
            self.k_pos = torch.full((C + Lp,), Lp, dtype=order.dtype, device=device)
            self.k_pos[C:] = order
            self.interval = None
        else:
            self.interval = _interval_rows(code, C, cfg.causal, plan.n_buckets)  # (Lp,)
        if where is not None:
            self.q_where = where[order.clamp(max=L - 1)]  # (Lp, R)
            self.k_where = torch.full((C + Lp, where.shape[1]), _MEETS_NOTHING, dtype=where.dtype, device=device)
            self.k_where[C:] = self.q_where

    def gather(self, x: Tensor, c0: int, c1: int, out: Tensor) -> Tensor:
        """Rows of x (L, ...) for the keys of slice [c0, c1) -> ((c1 - c0 + 1) * C, ...); zeros before chunk 0."""
        C = self.C
        rows = out[: (c1 - c0 + 1) * C]
        torch.index_select(x, 0, self.src[c0 * C : (c1 + 1) * C], out=rows)
        if c0 == 0:
            rows[:C] = 0
        return rows

    def positions(self, lo: int, hi: int) -> Tensor:
        """Positions of sorted slots [lo, hi), without the padding slots (>= L, always last)."""
        return self.order[max(lo, 0) : min(hi, self.L)]

    def window(self, rows: Tensor, c0: int = 0, c1: int | None = None) -> Tensor:
        """(m, 2C, ...) view of key rows laid out as chunks c0 - 1 .. c1 - 1: chunk c's window."""
        C = self.C
        m = (rows.shape[0] // C - 1) if c1 is None else c1 - c0
        inner = math.prod(rows.shape[1:])
        return rows.as_strided(
            (m, 2 * C, *rows.shape[1:]), (C * inner, *rows.stride()), rows.storage_offset() + c0 * C * inner
        )

    def rows(self, x: Tensor, c0: int, c1: int) -> Tensor:
        """(c1 - c0, C, ...) view of a per-slot tensor: chunks [c0, c1)."""
        return x[c0 * self.C : c1 * self.C].view(c1 - c0, self.C, *x.shape[1:])

    def scores(self, q_s: Tensor, k_rows: Tensor, c0: int, c1: int, out: Tensor) -> Tensor:
        """Scores of chunks [c0, c1) against their windows, written into ``out`` (m, C, 2C): -inf for keys
        the rule excludes (another group, later in causal attention, the token itself), or at most
        ``_FORBIDDEN`` for another bucket under ``causal and across``; a row whose maximum is below
        ``_EMPTY_BELOW`` has no allowed key."""
        cfg = self.cfg
        if self.interval is not None:
            # The allowed keys of a query are one interval of its window: the rule is a row of a small
            # table, gathered into the scores and added to inside the product (no (m, C, 2C) arithmetic).
            s = _interval_bias(self.interval[c0 * self.C : c1 * self.C], self.C, out).baddbmm_(
                q_s, self.window(k_rows).transpose(1, 2))
        else:
            # _FORBIDDEN times the distance of the two group codes (0 for the same group), plus -inf for
            # later keys, computed by arithmetic: a boolean masked_fill of the bucket rule runs several times
            # slower on CPU.
            dtype = q_s.dtype
            bias = torch.sub(self.rows(self.q_code, c0, c1).to(dtype)[:, :, None],
                             self.window(self.k_code, c0, c1).to(dtype)[:, None, :], out=out).abs_().mul_(_FORBIDDEN)
            later = torch.gt(self.window(self.k_pos, c0, c1)[:, None, :], self.rows(self.q_pos, c0, c1)[:, :, None])
            s = bias.masked_fill_(later, float("-inf")).baddbmm_(q_s, self.window(k_rows).transpose(1, 2))
        if cfg.dedup:
            s.sub_(self._meet_counts(c0, c1, s.dtype).log_())
        s.diagonal(offset=self.C, dim1=1, dim2=2).fill_(float("-inf"))  # itself: see _self_fallback
        return s

    def probabilities(self, s: Tensor, empty: Tensor) -> Tensor:
        """Softmax of each row within this round. A row with no target (``empty``) is given its own
        token, to stay finite; the round's weight for it, exp(-inf), is zero."""
        s.diagonal(offset=self.C, dim1=1, dim2=2).masked_fill_(empty, 0.0)
        return torch.softmax(s, dim=-1)

    def _meet_counts(self, c0: int, c1: int, dtype) -> Tensor:
        qw = self.rows(self.q_where, c0, c1)  # (m, C, R)
        kw = self.window(self.k_where, c0, c1)  # (m, 2C, R)
        count = torch.zeros(c1 - c0, self.C, 2 * self.C, dtype=dtype, device=qw.device)
        for r in range(qw.shape[-1]):
            d = qw[:, :, None, r] - kw[:, None, :, r]
            count += (d >= 0) & (d <= 1)
        return count.clamp_min_(1.0)

    def dropout(self, p: Tensor, n: int, r: int, c0: int) -> Tensor:
        """p with dropout applied; the mask is drawn from (seed, n, r, c0), so backward redraws it."""
        g = torch.Generator(device=p.device)
        g.manual_seed(derive_seed(self.cfg.seed, "lsh-dropout", n, r, c0))
        keep = torch.rand(p.shape, generator=g, device=p.device, dtype=p.dtype) >= self.cfg.dropout_p
        return p * keep * (1.0 / (1.0 - self.cfg.dropout_p))


# The window id of the empty chunk before chunk 0: every query's id is far more than 1 above it, so it meets
# no query (real ids are below n_buckets * (n_chunks + 1), far under 2**40).
_MEETS_NOTHING = -(2**40)


# Under ``causal and across``, a pair of different buckets scores at most this (not -inf, so that the bucket
# rule is arithmetic: see _Round.scores). Its weight, exp(_FORBIDDEN - max), is exactly 0 in fp32 and fp64,
# and a row whose best score is below _EMPTY_BELOW met no allowed key.
_FORBIDDEN = -1e30
_EMPTY_BELOW = _FORBIDDEN / 2
_INTERVAL_TABLE_ELEMENTS = 1 << 22  # the largest table of whole rows (16 MiB in fp32; chunks up to 80 tokens)


def _interval_rows(code: Tensor, C: int, causal: bool, n_buckets: int) -> Tensor:
    """Which keys of its window each query of a round may meet, as one row index per sorted slot, (Lp,).

    The sorted order holds each group (bucket) contiguously, so the keys of a query's window (chunks c - 1
    and c, window slots 0 .. 2C) that share its group form an interval: from the group's first slot, or the
    window's start, to the group's end (or to the query itself, in causal attention, since a group is in
    position order). Row ``a * (2C + 1) + b`` stands for the interval [a, b). Padding slots (code
    ``n_buckets``) get [i, i + 1) or [i, i), so that with the token itself excluded they meet nothing.
    """
    Lp = code.shape[0]
    slot = torch.arange(Lp, device=code.device)
    new = torch.ones(Lp, dtype=torch.bool, device=code.device)
    new[1:] = code[1:] != code[:-1]  # a group starts here
    group = new.cumsum(0) - 1
    starts = slot[new]
    first = starts[group]
    end = torch.cat([starts[1:], starts.new_full((1,), Lp)])[group]
    padding = code >= n_buckets
    first = torch.where(padding, slot, first)
    end = torch.where(padding, slot + 1, end)
    window_start = (slot // C - 1) * C  # the slot at window position 0 (the query is at C + i)
    a = (first - window_start).clamp_min_(0)
    b = ((slot if causal else end) - window_start).clamp_max_(2 * C)  # causal: up to the query, excluded
    return a.mul_(2 * C + 1).add_(b)


def _interval_bias(rows: Tensor, C: int, out: Tensor) -> Tensor:
    """The additive rule of queries with interval rows ``rows`` (m C,): 0 on their interval, -inf elsewhere,
    written into ``out`` (m, C, 2C). Small chunks gather whole rows from one table; larger ones add a row
    that cuts below a to a row that cuts from b (two (2C + 1, 2C) tables)."""
    n = 2 * C + 1
    flat = out.view(-1, 2 * C)
    if n * n * 2 * C <= _INTERVAL_TABLE_ELEMENTS:
        torch.index_select(_interval_table(C, out.dtype, out.device), 0, rows, out=flat)
    else:
        below, from_ = _interval_edges(C, out.dtype, out.device)
        torch.index_select(below, 0, rows.div(n, rounding_mode="floor"), out=flat)
        flat += from_.index_select(0, rows.remainder(n))
    return out


@functools.lru_cache(maxsize=8)
def _interval_edges(C: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """(2C + 1, 2C) each: row a is -inf before window key a, row b is -inf from window key b on."""
    j = torch.arange(2 * C, device=device)
    edge = torch.arange(2 * C + 1, device=device)[:, None]
    inf = torch.tensor(float("-inf"), dtype=dtype, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(j < edge, inf, zero), torch.where(j >= edge, inf, zero)


@functools.lru_cache(maxsize=8)
def _interval_table(C: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """((2C + 1)^2, 2C): row a * (2C + 1) + b is 0 on window keys [a, b) and -inf elsewhere."""
    below, from_ = _interval_edges(C, dtype, device)
    return (below[:, None, :] + from_[None, :, :]).view(-1, 2 * C)


class _SliceRows:
    """A worker's buffers for one slice's rows (chunks c0 - 1 .. c1 - 1): queries, keys, values and the
    keys' scale factors, and the slice's scores, reused from slice to slice."""

    def __init__(self, S: int, C: int, D: int, Dv: int, dtype, device):
        n = (S + 1) * C
        self.q = torch.empty(n, D, dtype=dtype, device=device)
        self.k = torch.empty_like(self.q)
        self.v = torch.empty(n, Dv, dtype=dtype, device=device)
        self.key_scale = torch.empty(n, 1, dtype=dtype, device=device)
        self.scores = torch.empty(S, C, 2 * C, dtype=dtype, device=device)

    def load(self, rd: _Round, q: Tensor, key_scale: Tensor, v: Tensor, c0: int, c1: int):
        """Gather the slice's rows: (qr, kr, vr), each ((c1 - c0 + 1) C, ...), with kr = qr * key_scale."""
        qr = rd.gather(q, c0, c1, self.q)
        kr = torch.mul(qr, rd.gather(key_scale, c0, c1, self.key_scale), out=self.k[: qr.shape[0]])
        return qr, kr, rd.gather(v, c0, c1, self.v)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _slices(n_chunks: int, C: int):
    step = _slice_chunks(C)
    for c0 in range(0, n_chunks, step):
        yield c0, min(c0 + step, n_chunks)


def _slice_chunks(C: int) -> int:
    return max(1, _SLICE_ELEMENTS // (2 * C * C))


def _chunked_forward(qk, v, order, code, where, valid, cfg: _Config) -> tuple[Tensor, Tensor, Tensor]:
    """The chunked forward: (out (B, H, L, Dv) token-major in the compute dtype, lse (B, H, L), lse_rounds
    (B * H, R, Lp) in sorted order)."""
    B, H, L, D = qk.shape
    Dv = v.shape[-1]
    plan = cfg.plan
    C, R = plan.chunk, order.shape[1]
    cdt = _compute_dtype(qk.dtype)
    sdt = torch.float64 if cdt == torch.float64 else torch.float32  # log-sum-exp
    device = qk.device
    out = token_major(B, H, L, Dv, dtype=cdt, device=device)
    lse = torch.empty(B, H, L, dtype=sdt, device=device)
    lse_rounds = torch.empty(B * H, R, plan.padded_length, dtype=sdt, device=device)  # sorted order
    S = min(_slice_chunks(C), plan.n_chunks)

    def heads(ns):
        rows = _SliceRows(S, C, D, Dv, cdt, device)
        for n in ns:
            b, h = divmod(n, H)
            q_n = qk[b, h].to(cdt)  # (L, D)
            key_scale = _key_scale(q_n, cfg.scale)  # (L, 1): k = q * key_scale
            v_n = v[b, h].to(cdt)
            out_n, lse_n = out[b, h], lse[b, h]
            out_n.zero_()
            lse_n.fill_(float("-inf"))
            for r in range(R):
                rd = _Round(cfg, order[n, r], code[n, r], None if where is None else where[n], L)
                for c0, c1 in _slices(plan.n_chunks, C):
                    m = c1 - c0
                    qr, kr, vr = rows.load(rd, q_n, key_scale, v_n, c0, c1)
                    s = rd.scores(qr[C:].view(m, C, D), kr, c0, c1, rows.scores[:m])  # (m, C, 2C)
                    mx = s.amax(dim=-1)  # (m, C)
                    empty = mx < _EMPTY_BELOW  # no allowed key in this round
                    mx.masked_fill_(empty, float("-inf"))
                    p = rd.probabilities(s, empty)
                    # The largest weight is exp(max - lse), which gives the log-sum-exp.
                    lse_s = torch.sub(mx, p.amax(dim=-1).log_(), out=rd.rows(lse_rounds[n, r], c0, c1))
                    if cfg.dropout_p > 0.0:
                        p = rd.dropout(p, n, r, c0)
                    o = torch.bmm(p, rd.window(vr)).view(m * C, Dv)  # (m C, Dv), sorted
                    pos = rd.positions(c0 * C, c1 * C)
                    if pos.numel():
                        o, lse_s = o[: pos.numel()], lse_s.view(-1)[: pos.numel()]
                        if r > 0:
                            o, lse_s = _merge(out_n.index_select(0, pos), lse_n.index_select(0, pos), o, lse_s)
                        out_n.index_copy_(0, pos, o)
                        lse_n.index_copy_(0, pos, lse_s)
            lonely = valid[b, h] & (lse_n == float("-inf"))  # met no other token: attends to itself
            alone = lonely.nonzero().squeeze(1)
            out_n.index_copy_(0, alone, v_n.index_select(0, alone))

    _run_heads(heads, B * H, device)
    return out, lse, lse_rounds


class _LSHAttentionFunction(torch.autograd.Function):
    """Chunked LSH attention over (B, H, L, D).

    Saves the inputs, the sort orders, the output, each token's log-sum-exp over all rounds and its
    log-sum-exp in each round (sorted order); backward recomputes each slice's scores, and the share
    exp(lse_round - lse) turns the within-round softmax into that round's part of the whole. Each slice
    gathers its own rows and scatters its results back by position, so no sorted copy of a whole
    sequence is ever made.
    """

    @staticmethod
    def forward(ctx, qk, v, order, code, where, valid, cfg: _Config):
        out, lse, lse_rounds = _chunked_forward(qk, v, order, code, where, valid, cfg)
        ctx.save_for_backward(qk, v, order, code, where, valid, lse, lse_rounds)
        # The output is needed only for D = dO . O at the start of backward. It is held by a detached alias
        # (no reference cycle through the graph), which backward drops once D is computed, so the layer's
        # output and its gradients are never all held at once. A second backward through the same graph
        # (retain_graph=True) recomputes it. (The output is a view made here, which torch keeps from being
        # changed in place, so the alias needs no version check.)
        ctx.cfg, ctx.output = cfg, [out.detach()]
        return out.to(v.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        qk, v, order, code, where, valid, lse, lse_rounds = ctx.saved_tensors
        cfg = ctx.cfg
        B, H, L, D = qk.shape
        Dv = v.shape[-1]
        plan = cfg.plan
        C, R = plan.chunk, order.shape[1]
        cdt = _compute_dtype(qk.dtype)
        device = qk.device
        if ctx.output:
            out = ctx.output.pop()
        else:  # released by an earlier backward through this graph
            out = _chunked_forward(qk, v, order, code, where, valid, cfg)[0]
        grad_out = grad_out.to(cdt)
        delta = row_dots(grad_out, out, lse.dtype, _SLICE_ELEMENTS)  # D_i = dO_i . O_i, (B, H, L)
        del out
        # A token that met no other token has lse = -inf: it passed its own value through.
        lonely = lse == float("-inf")
        lse = lse.masked_fill(lonely, float("inf"))  # and its weights, exp(s - inf), are zero
        lonely &= valid
        # Head-major, so each head's accumulators are contiguous (scattered adds into a token-major
        # layout, rows H * D apart, run several times slower).
        dq = torch.empty(B, H, L, D, dtype=cdt, device=device)
        dv = torch.empty(B, H, L, Dv, dtype=cdt, device=device)
        S = min(_slice_chunks(C), plan.n_chunks)

        def heads(ns):
            rows = _SliceRows(S, C, D, Dv, cdt, device)
            dk_rows = torch.empty_like(rows.q)
            dv_rows = torch.empty_like(rows.v)
            for n in ns:
                b, h = divmod(n, H)
                q_n = qk[b, h].to(cdt)
                key_scale = _key_scale(q_n, cfg.scale)  # (L, 1)
                v_n = v[b, h].to(cdt)
                do_n = grad_out[b, h]  # (L, Dv)
                delta_n = delta[b, h]
                lse_n = lse[b, h]
                dq_acc, dv_acc = dq[b, h], dv[b, h]
                dq_acc.zero_()
                dv_acc.zero_()
                for r in range(R):
                    rd = _Round(cfg, order[n, r], code[n, r], None if where is None else where[n], L)
                    for c0, c1 in _slices(plan.n_chunks, C):
                        m = c1 - c0
                        qr, kr, vr = rows.load(rd, q_n, key_scale, v_n, c0, c1)
                        q_s = qr[C:].view(m, C, D)
                        src = rd.src[(c0 + 1) * C : (c1 + 1) * C]  # the slice's query rows
                        # Each pair's weight in the softmax over all rounds is its weight within the round
                        # times the round's share, exp(lse_round - lse): dO and D are scaled by the share.
                        # (exp of arguments below about -87 leaves the vectorized kernel for a scalar path
                        # ~10x slower: clamp, and set the share of rows empty in this round to zero exactly.)
                        lse_rs = lse_rounds[n, r, c0 * C : c1 * C]
                        empty = lse_rs == float("-inf")
                        share = (lse_rs - lse_n.index_select(0, src)).clamp_min_(-80.0).exp_()
                        share.masked_fill_(empty, 0.0)  # (m C,)
                        do_s = do_n.index_select(0, src).mul_(share[:, None].to(cdt)).view(m, C, Dv)
                        delta_s = delta_n.index_select(0, src).mul_(share).view(m, C, 1)
                        s = rd.scores(q_s, kr, c0, c1, rows.scores[:m])
                        p = rd.probabilities(s, empty.view(m, C))  # (m, C, 2C), within the round
                        dp = torch.bmm(do_s, rd.window(vr).transpose(1, 2))  # (m, C, 2C)
                        if cfg.dropout_p > 0.0:
                            p_drop = rd.dropout(p, n, r, c0)
                            dp = rd.dropout(dp, n, r, c0)
                        else:
                            p_drop = p
                        ds = dp.sub_(delta_s).mul_(p)  # dS = P (dP - D)
                        dq_s = torch.bmm(ds, rd.window(kr)).view(m * C, D)
                        # Window chunk w of the slice holds keys of chunk c0 - 1 + w: it gets the second half
                        # of window w - 1 and the first half of window w.
                        _fold(torch.bmm(p_drop.transpose(1, 2), do_s), dv_rows, m, C)  # dV = P^T dO
                        dk = _fold(torch.bmm(ds.transpose(1, 2), q_s), dk_rows, m, C)  # dK = dS^T Q
                        # Through the keys' normalization, k = q * s / |q| with s = scale: per row,
                        # dq = (s / |q|) (dk - u (u . dk)), u = q / |q|; ks = s / |q| is key_scale.
                        ks = rows.key_scale[: (m + 1) * C]
                        proj = (qr * dk).sum(-1, keepdim=True).mul_(ks.square() / cfg.scale**2)
                        dk.sub_(qr * proj).mul_(ks)
                        dk[C:] += dq_s  # the slice's queries are the window's last m chunks
                        lo = max(c0 * C - C, 0)
                        pos_k = rd.positions(lo, c1 * C)
                        skip = C if c0 == 0 else 0  # the empty chunk in front of chunk 0
                        dq_acc.index_add_(0, pos_k, dk[skip : skip + pos_k.numel()])
                        dv_acc.index_add_(0, pos_k, dv_rows[skip : skip + pos_k.numel()])
                alone = lonely[b, h].nonzero().squeeze(1)  # passed their own value through: dV += dO
                dv_acc.index_add_(0, alone, do_n.index_select(0, alone))

        _run_heads(heads, B * H, device)
        return dq.to(qk.dtype), dv.to(v.dtype), None, None, None, None, None


def _run_heads(fn, N: int, device) -> None:
    """``fn(heads)`` over the N = batch * heads sequences.

    On a multi-core CPU the heads are shared among worker threads that each run single-threaded
    kernels: the work per op is small (one slice of chunks), and one thread per head group avoids a
    barrier per op across cores, which costs most when the cores are shared with other processes.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or N < 2 or not _HEAD_THREADS:
        with torch.no_grad():
            fn(range(N))
        if device.type == "cpu":
            _release_free_memory()
        return

    def work(ns):
        with torch.no_grad():  # grad mode is per thread: the workers' ops are never recorded
            fn(ns)

    torch.set_num_threads(1)
    try:
        # One task per head, taken by whichever worker is free: a core slowed by other work takes fewer.
        pool = _pool(threads)
        for f in [pool.submit(work, [n]) for n in range(N)]:
            f.result()
    finally:
        torch.set_num_threads(threads)
        _release_free_memory()


_POOLS: dict[int, ThreadPoolExecutor] = {}
_MALLOC_TRIM = None


def _release_free_memory() -> None:
    """Hand the heap pages freed by an LSH pass back to the system (glibc's ``malloc_trim``).

    Each pass frees many slice-sized blocks in the worker threads' heaps; glibc keeps them resident,
    and after a few passes (the layers of a model, recomputed in backward) the process holds far more
    memory than it uses. Trimming after each pass keeps the resident size near the live size. A no-op
    where the C library has no ``malloc_trim``.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


def _pool(size: int) -> ThreadPoolExecutor:
    # Kept for the process: fresh threads on every call would each bring a new malloc arena.
    if size not in _POOLS:
        _POOLS[size] = ThreadPoolExecutor(size, thread_name_prefix="attnkit-lsh")
    return _POOLS[size]


def _fold(grad_windows: Tensor, rows: Tensor, m: int, C: int) -> Tensor:
    """Sum (m, 2C, D) per-window key gradients into ((m + 1) C, D) key rows (chunks c0 - 1 .. c1 - 1)."""
    out = rows[: (m + 1) * C]
    chunks = out.view(m + 1, C, -1)
    chunks[1:] = grad_windows[:, C:]
    chunks[0] = 0
    chunks[:m] += grad_windows[:, :C]
    return out


def _key_scale(q: Tensor, scale: float) -> Tensor:
    """(L, 1) factors that turn the queries into the keys: scale / |q| (F.normalize's eps)."""
    return scale / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _merge(out: Tensor, lse: Tensor, o_r: Tensor, lse_r: Tensor) -> tuple[Tensor, Tensor]:
    """The softmax-weighted combination of two partial results (out, lse) and (o_r, lse_r)."""
    new = torch.logaddexp(lse, lse_r)
    safe = new.masked_fill(new == float("-inf"), 0.0)
    w_old = (lse - safe).exp_().unsqueeze(-1)
    w_new = (lse_r - safe).exp_().unsqueeze(-1)
    return out.mul_(w_old.to(out.dtype)).addcmul_(o_r, w_new.to(out.dtype)), new


# ----------------------------------------------------------------------------------------------------
# Checks


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def _check_inputs(qk, v) -> None:
    for name, x in (("qk", qk), ("v", v)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {_describe(x)}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, L, D) (4 dims), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if qk.dtype != v.dtype:
        raise TypeError(f"qk and v must share a dtype, got {qk.dtype} and {v.dtype}")
    if qk.shape[:3] != v.shape[:3]:
        raise ValueError(f"qk and v must share (B, H, L), got qk {tuple(qk.shape)} and v {tuple(v.shape)}")
    if qk.shape[2] == 0:
        raise ValueError("qk has length 0: LSH attention needs at least one token")


def _valid(key_mask, B: int, H: int, L: int) -> Tensor | None:
    """The (B, L) key padding mask, checked, as (B, H, L) booleans (a view: one row per head)."""
    key_mask = check_key_mask(key_mask, B, L, "key_mask")
    return None if key_mask is None else key_mask[:, None, :].expand(B, H, L)
