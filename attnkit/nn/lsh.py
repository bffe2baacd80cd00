"""LSH self-attention as a module: shared query/key projection, value projection, output projection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..functional.lsh import lsh_attention
from ..functional.lsh_decode import LSHCache, lsh_attention_step


class LSHSelfAttention(nn.Module):
    """Multi-head LSH self-attention (Reformer, section 2): queries and keys share one projection.

    Args:
        d_model: width of the input and output.
        n_heads: number of heads.
        d_head: width of each head, default ``d_model // n_heads``.
        n_hashes, bucket_size, n_buckets, attend_across_buckets, dedup: see
            :func:`attnkit.functional.lsh_attention`.
        causal: attend only to earlier positions (and itself).
        dropout: dropout on the attention weights, in training only.
        bias: biases in the shared QK and the value projections (the output projection always has one).
        eval_seed: the hash seed in eval mode, so evaluation is deterministic; in training each call
            draws a seed from torch's global generator (``torch.manual_seed`` repeats a run, and a
            reversible layer replays it in backward).
        impl: passed to ``lsh_attention``: "auto" (see there), "chunked", "dense", "fused" or "reference".
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        d_head: int | None = None,
        n_hashes: int = 4,
        bucket_size: int = 64,
        causal: bool = False,
        dropout: float = 0.0,
        n_buckets: int | tuple[int, ...] | None = None,
        attend_across_buckets: bool = False,
        dedup: bool = False,
        bias: bool = False,
        eval_seed: int = 0,
        impl: str = "auto",
    ):
        super().__init__()
        if d_head is None:
            if d_model % n_heads:
                raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}), or pass d_head")
            d_head = d_model // n_heads
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_head
        self.n_hashes, self.bucket_size, self.n_buckets = n_hashes, bucket_size, n_buckets
        self.causal, self.dropout = causal, dropout
        self.attend_across_buckets, self.dedup = attend_across_buckets, dedup
        self.eval_seed, self.impl = eval_seed, impl
        self.qk_proj = nn.Linear(d_model, n_heads * d_head, bias=bias)
        self.v_proj = nn.Linear(d_model, n_heads * d_head, bias=bias)
        self.out_proj = nn.Linear(n_heads * d_head, d_model)

    def forward(self, x: Tensor, key_mask: Tensor | None = None, seed: int | None = None) -> Tensor:
        """x (B, L, d_model) -> y (B, L, d_model).

        ``key_mask``: key padding mask (B, L), True = real token. ``seed`` overrides the hash seed (see
        ``eval_seed``).
        """
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, L, d_model={self.d_model}), got {shape}")
        return self.attend(self.qk_proj(x), self.v_proj(x), key_mask=key_mask, seed=seed)

    def attend(self, qk: Tensor, v: Tensor, key_mask: Tensor | None = None, seed: int | None = None) -> Tensor:
        """The attention after the projections: qk, v (B, L, n_heads * d_head) -> y (B, L, d_model).

        Lets a caller compute the projections itself (a reversible branch runs its norm and these
        projections in slices of positions, so their inputs are never held whole).
        """
        B, L, _ = qk.shape
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item()) if self.training else self.eval_seed
        qk = qk.view(B, L, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, L, D)
        v = v.view(B, L, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, L, D)
        y = lsh_attention(
            qk,
            v,
            n_hashes=self.n_hashes,
            bucket_size=self.bucket_size,
            causal=self.causal,
            key_mask=key_mask,
            seed=seed,
            impl=self.impl,
            n_buckets=self.n_buckets,
            attend_across_buckets=self.attend_across_buckets,
            dedup=self.dedup,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, L, D), laid out token-major by the chunked and fused paths, so the next line is a view
        y = y.transpose(1, 2).reshape(B, L, self.n_heads * self.d_head)  # (B, L, H * D)
        return self.out_proj(y)

    def decode(self, qk: Tensor, v: Tensor, cache: LSHCache | None = None) -> tuple[Tensor, LSHCache]:
        """Causal attention of new positions after the cached ones, in eval mode: qk, v (B, T, H * D) ->
        (y (B, T, d_model), cache). Without a cache the T positions (a prompt) run as in :meth:`attend`
        and start one; after that each position is one :func:`~attnkit.functional.lsh_attention_step`.
        The outputs equal :meth:`attend` over the whole sequence at those positions (same ``eval_seed``).
        """
        if not self.causal or self.attend_across_buckets or (self.training and self.dropout > 0):
            raise ValueError("decode needs causal LSH attention without attend_across_buckets or dropout")
        B, T, _ = qk.shape
        if cache is None:
            y = self.attend(qk, v, seed=self.eval_seed)
            heads = lambda x: x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # noqa: E731
            return y, LSHCache(heads(qk), heads(v))
        ys = []
        for t in range(T):
            q_t = qk[:, t].view(B, self.n_heads, 1, self.d_head)
            v_t = v[:, t].view(B, self.n_heads, 1, self.d_head)
            y, cache = lsh_attention_step(
                q_t, v_t, cache, n_hashes=self.n_hashes, bucket_size=self.bucket_size, seed=self.eval_seed,
                n_buckets=self.n_buckets, dedup=self.dedup,
            )  # (B, H, 1, D)
            ys.append(y.reshape(B, 1, self.n_heads * self.d_head))
        return self.out_proj(torch.cat(ys, dim=1)), cache

    @property
    def can_decode(self) -> bool:
        """Whether :meth:`decode` supports this layer's settings."""
        return self.causal and not self.attend_across_buckets

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, d_head={self.d_head}, n_hashes={self.n_hashes}, "
            f"bucket_size={self.bucket_size}, causal={self.causal}"
        )


@contextlib.contextmanager
def lsh_settings(model: nn.Module, *, n_hashes: int | None = None, bucket_size: int | None = None,
                 n_buckets: int | None = None) -> Iterator[int]:
    """Within the block, every :class:`LSHSelfAttention` of ``model`` hashes with these settings instead
    of its own (None keeps a layer's own): evaluate a model with other numbers of hashes, a single chunk
    (``bucket_size`` >= the length: full shared-QK attention) or a single bucket (``n_buckets=1``: local
    attention over the chunk and the one before), without retraining. Yields the number of layers."""
    layers = [m for m in model.modules() if isinstance(m, LSHSelfAttention)]
    saved = [(m.n_hashes, m.bucket_size, m.n_buckets) for m in layers]
    try:
        for m in layers:
            m.n_hashes = m.n_hashes if n_hashes is None else n_hashes
            m.bucket_size = m.bucket_size if bucket_size is None else bucket_size
            m.n_buckets = m.n_buckets if n_buckets is None else n_buckets
        yield len(layers)
    finally:
        for m, (h, b, n) in zip(layers, saved):
            m.n_hashes, m.bucket_size, m.n_buckets = h, b, n
