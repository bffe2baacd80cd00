"""What attention capture returns: one :class:`AttentionMap` per attention layer, for one input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KINDS = ("self", "causal", "cross", "lsh")


@dataclass
class AttentionMap:
    """The attention weights of one layer for one input sequence.

    Attributes:
        name: the attention module's path in the model, e.g. ``"blocks.0.self_attn"``.
        kind: "self" (bidirectional), "causal", "cross" (encoder/decoder) or "lsh".
        query_tokens: the T query tokens as text; ``key_tokens`` the S key tokens (the same list for
            self-attention, the source sentence for cross-attention).
        heads: the heads of the layer these weights are of (indices into the layer's heads).
        weights: (len(heads), T, S): row i is how query i spreads its attention over the keys (rows sum
            to one; masked keys get zero). Dense for full attention; a sparse COO tensor for LSH layers,
            where each query attends to at most ``n_hashes * 2 * bucket_size`` keys.
        buckets: LSH only, (len(heads), n_hashes, T): each token's hash bucket in each round.
        chunks: LSH only, (len(heads), n_hashes, T): the chunk each token falls in after the round's sort
            by (bucket, position); a query meets the keys of its own chunk and of the chunk before.
        causal, attend_across_buckets: LSH only: the rules that decide which pairs of a chunk window meet.
    """

    name: str
    kind: str
    query_tokens: list[str]
    key_tokens: list[str]
    heads: list[int]
    weights: Tensor
    buckets: Tensor | None = None
    chunks: Tensor | None = None
    causal: bool = False
    attend_across_buckets: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        expected = (len(self.heads), len(self.query_tokens), len(self.key_tokens))
        if tuple(self.weights.shape) != expected:
            raise ValueError(f"weights must have shape (heads, queries, keys) = {expected}, "
                             f"got {tuple(self.weights.shape)}")

    @property
    def n_hashes(self) -> int:
        return 0 if self.buckets is None else self.buckets.shape[1]

    def dense(self) -> Tensor:
        """The weights as a dense (heads, T, S) float tensor."""
        w = self.weights
        return (w.to_dense() if w.is_sparse else w).float()

    def blocks(self, max_size: int = 1024) -> tuple[Tensor, int, int]:
        """The weights aggregated into blocks so that neither side exceeds ``max_size``:
        -> (heads, ceil(T / bq), ceil(S / bk)) float32 and the block sizes (bq, bk).

        Block (I, J) is the mean over the queries of I of their summed weight on the keys of J, so each
        row of blocks still sums to one. Never builds a dense (T, S) matrix from sparse (LSH) weights,
        nor a float32 copy of dense ones: those are pooled a slab of query blocks at a time.
        """
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        H, T, S = self.weights.shape
        bq, bk = -(-T // max_size), -(-S // max_size)
        nq, nk = -(-T // bq), -(-S // bk)
        w = self.weights.detach().cpu()
        out = torch.zeros(H, nq, nk, dtype=torch.float32)
        if w.is_sparse:
            w = w.coalesce()
            (h, i, j), v = w.indices(), w.values().float()
            out.view(H, -1).index_put_((h, (i // bq) * nk + (j // bk)), v, accumulate=True)
        else:
            slab = max(1, (1 << 22) // max(1, bq * S))  # query blocks per step: about 4M weights at a time
            for I0 in range(0, nq, slab):
                I1 = min(nq, I0 + slab)
                rows = w[:, I0 * bq : min(T, I1 * bq)].float()  # (H, rows, S)
                rows = torch.nn.functional.pad(rows, (0, nk * bk - S, 0, (I1 - I0) * bq - rows.shape[1]))
                out[:, I0:I1] = rows.view(H, I1 - I0, bq, nk, bk).sum(dim=(2, 4))
        counts = torch.bincount(torch.arange(T) // bq, minlength=nq).clamp_min(1).float()  # queries per block row
        return out / counts[None, :, None], bq, bk
