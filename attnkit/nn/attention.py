"""Multi-head attention: Q, K, V from dense layers, several heads in parallel, concatenated and projected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..functional import apply_rotary, dot_product_attention, rotary_angles


@dataclass(frozen=True)
class KVCache:
    """Keys and values already computed by one attention layer, (B, H_kv, S, D) each.

    For self-attention, each decoding step appends its keys/values and returns a new cache; for
    encoder/decoder attention the cache holds the projected encoder output and is reused as is.
    """

    k: Tensor
    v: Tensor

    @property
    def length(self) -> int:
        return self.k.shape[-2]


class AttentionOutput(NamedTuple):
    """What :class:`MultiHeadAttention` returns: the output and the keys/values to pass to the next call."""

    y: Tensor  # (B, T, d_model)
    cache: KVCache


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, section 3.2.2).

    Args:
        d_model: width of the input and output.
        n_heads: number of query heads.
        d_head: width of each head, default ``d_model // n_heads``.
        n_kv_heads: number of key/value heads (grouped-query attention when < n_heads), default n_heads.
        causal: self-attention that only looks at earlier positions.
        bias: biases in the four projections.
        dropout: dropout on the attention weights.
        rotary_base: if given, rotate queries and keys by position (rotary embedding with this base).
        d_context: width of the encoder output for encoder/decoder attention, default d_model.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        d_head: int | None = None,
        n_kv_heads: int | None = None,
        causal: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
        rotary_base: float | None = None,
        d_context: int | None = None,
    ):
        super().__init__()
        if d_head is None:
            if d_model % n_heads:
                raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}), or pass d_head")
            d_head = d_model // n_heads
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads ({n_kv_heads}) must be >= 1 and divide n_heads ({n_heads})")
        d_context = d_model if d_context is None else d_context
        self.d_model, self.n_heads, self.d_head, self.n_kv_heads = d_model, n_heads, d_head, n_kv_heads
        self.causal, self.dropout, self.rotary_base = causal, dropout, rotary_base
        self._rotary_table: tuple[Tensor, Tensor] | None = None  # cos/sin by position: constants, grown on demand
        self.q_proj = nn.Linear(d_model, n_heads * d_head, bias=bias)
        self.k_proj = nn.Linear(d_context, n_kv_heads * d_head, bias=bias)
        self.v_proj = nn.Linear(d_context, n_kv_heads * d_head, bias=bias)
        self.out_proj = nn.Linear(n_heads * d_head, d_model, bias=bias)

    def _rotary(self, past: int, T: int, device) -> tuple[Tensor, Tensor]:
        """cos/sin (T, d_head) for positions past .. past + T - 1.

        Decoding asks for one position per step in every layer, and recomputing the angles there was a
        visible share of a small model's step on a CPU, so a table is kept and grown by doubling. It is derived from
        ``rotary_base`` alone (not model state) and equals :func:`rotary_angles` of those positions.
        """
        table = self._rotary_table
        if table is None or table[0].shape[0] < past + T or table[0].device != torch.device(device):
            n = 1 << max(6, (past + T - 1).bit_length())
            # built outside inference mode so that training can use a table first made while decoding
            with torch.inference_mode(False), torch.no_grad():
                table = rotary_angles(torch.arange(n, device=device), self.d_head, self.rotary_base)
            self._rotary_table = table
        return table[0][past : past + T], table[1][past : past + T]

    def _split(self, x: Tensor, n_heads: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n_heads, self.d_head).transpose(1, 2)  # (B, H, T, D)

    def project(
        self, x: Tensor, context: Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The queries, keys and values :meth:`forward` attends with -> q (B, H, T, D), k and v
        (B, H_kv, S, D): projected, split into heads, rotated (rotary) and appended to the cache."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, T, d_model={self.d_model}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        q = self._split(self.q_proj(x), self.n_heads)  # (B, H, T, D)
        if context is not None and cache is not None:
            k, v = cache.k, cache.v  # encoder/decoder attention: the encoder's keys were cached
        elif context is not None:
            if context.dim() != 3 or context.shape[0] != B:
                raise ValueError(
                    f"context must have shape (B={B}, S, d_context), got {tuple(context.shape)}"
                )
            k = self._split(self.k_proj(context), self.n_kv_heads)  # (B, H_kv, S, D)
            v = self._split(self.v_proj(context), self.n_kv_heads)
        else:
            k = self._split(self.k_proj(x), self.n_kv_heads)  # (B, H_kv, T, D)
            v = self._split(self.v_proj(x), self.n_kv_heads)
            past = 0 if cache is None else cache.length
            if self.rotary_base is not None:
                cos, sin = self._rotary(past, T, x.device)  # (T, D)
                q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            if cache is not None:
                if cache.k.shape[0] != B:
                    raise ValueError(f"cache holds batch size {cache.k.shape[0]}, but x has {B}")
                k = torch.cat([cache.k, k], dim=2)  # (B, H_kv, past + T, D)
                v = torch.cat([cache.v, v], dim=2)
        return q, k, v

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        attn_mask: Tensor | None = None,
        cache: KVCache | None = None,
        impl: str = "auto",
    ) -> AttentionOutput:
        """Attend from x to itself (self-attention) or to ``context`` (encoder/decoder attention).

        Args:
            x: (B, T, d_model) queries' input.
            context: (B, S, d_context) encoder output; None for self-attention.
            attn_mask: boolean attention mask, True = may attend, broadcastable to (B, H, T, S) where S
                counts cached keys (a (B, S) key padding mask ``m`` is passed as ``m[:, None, None, :]``).
            cache: keys/values from earlier calls: for self-attention the new ones are appended; for
                encoder/decoder attention the cached ones are used instead of projecting ``context``.

        Returns:
            ``AttentionOutput(y, cache)``: y (B, T, d_model) and the cache to pass to the next call.
        """
        q, k, v = self.project(x, context, cache)
        B, T, _ = x.shape
        y = dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            # a single new query is the last position: it may see every key, so no causal mask is needed
            causal=self.causal and context is None and T > 1,
            dropout_p=self.dropout if self.training else 0.0,
            impl=impl,
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.d_head)  # (B, T, H * D)
        return AttentionOutput(self.out_proj(y), KVCache(k, v))
