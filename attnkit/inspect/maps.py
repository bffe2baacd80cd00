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
        -> (heads, ceil(T / bq), ceil(S / bk)) and the block sizes (bq, bk).

        Block (I, J) is the mean over the queries of I of their summed weight on the keys of J, so
        each row of blocks still sums to one. Computed without a dense (T, S) matrix for LSH layers.
        """
        H, T, S = self.weights.shape
        bq, bk = -(-T // max_size), -(-S // max_size)
        nq, nk = -(-T // bq), -(-S // bk)
        out = torch.zeros(H, nq * nk, dtype=torch.float32)
        w = self.weights.coalesce() if self.weights.is_sparse else self.weights.to_sparse().coalesce()
        (h, i, j), v = w.indices(), w.values().float()
        out.index_put_((h, (i // bq) * nk + (j // bk)), v, accumulate=True)
        counts = torch.bincount(torch.arange(T) // bq, minlength=nq).clamp_min(1).float()  # queries per block row
        return out.view(H, nq, nk) / counts[None, :, None], bq, bk
