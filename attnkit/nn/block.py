"""One Transformer layer: self-attention, optional encoder/decoder attention, feed-forward."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .attention import KVCache, MultiHeadAttention
from .layers import FeedForward, make_norm


@dataclass(frozen=True)
class BlockCache:
    """The caches of one :class:`TransformerBlock`: its self-attention's keys/values (grown at each step)
    and its encoder/decoder attention's (the projected encoder output, computed once), or None.

    A dataclass, as :class:`KVCache` is, so that beam search can reorder it field by field.
    """

    self_attn: KVCache | None = None
    cross_attn: KVCache | None = None


class TransformerBlock(nn.Module):
    """A residual layer of the Transformer.

    Post-norm (the paper, BERT): ``x = norm(x + sublayer(x))``; pre-norm (GPT-2, Llama):
    ``x = x + sublayer(norm(x))``, which trains more stably without warm-up tricks.

    Args:
        d_model, n_heads, d_ff: widths, as in the paper.
        causal: causal self-attention (decoder) instead of bidirectional (encoder).
        cross_attention: add encoder/decoder attention after self-attention (decoder of a seq2seq model).
        norm_first: pre-norm if True, post-norm if False.
        norm: "layer" or "rms"; norm_eps its epsilon.
        activation: feed-forward activation ("relu", "gelu", "gelu_tanh", "silu", "swiglu").
        dropout: dropout on each sublayer's output and on the attention weights.
        bias, d_head, n_kv_heads, rotary_base: passed to the attention (and bias to the feed-forward).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        *,
        causal: bool = False,
        cross_attention: bool = False,
        norm_first: bool = True,
        norm: str = "layer",
        norm_eps: float = 1e-5,
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        d_head: int | None = None,
        n_kv_heads: int | None = None,
        rotary_base: float | None = None,
    ):
        super().__init__()
        self.norm_first = norm_first
        attn_args = dict(d_head=d_head, bias=bias, dropout=dropout)
        self.self_attn = MultiHeadAttention(
            d_model, n_heads, causal=causal, n_kv_heads=n_kv_heads, rotary_base=rotary_base, **attn_args
        )
        self.self_attn_norm = make_norm(norm, d_model, norm_eps)
        if cross_attention:
            self.cross_attn = MultiHeadAttention(d_model, n_heads, **attn_args)
            self.cross_attn_norm = make_norm(norm, d_model, norm_eps)
        else:
            self.cross_attn = self.cross_attn_norm = None
        self.ff = FeedForward(d_model, d_ff, activation=activation, dropout=dropout, bias=bias)
        self.ff_norm = make_norm(norm, d_model, norm_eps)
        self.dropout = nn.Dropout(dropout)

    def _residual(self, x, norm, sublayer):
        if self.norm_first:
            y, cache = sublayer(norm(x))
            return x + self.dropout(y), cache
        y, cache = sublayer(x)
        return norm(x + self.dropout(y)), cache

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None = None,
        context: Tensor | None = None,
        context_attn_mask: Tensor | None = None,
        cache: BlockCache | None = None,
    ) -> tuple[Tensor, BlockCache]:
        """x (B, T, d_model) -> (B, T, d_model), and the caches of both attentions.

        ``attn_mask``/``context_attn_mask`` are boolean attention masks (True = may attend) broadcastable
        to (B, H, T, S) for the self- and the encoder/decoder attention; ``context`` (B, S, d_model) is
        the encoder output.
        """
        cache = BlockCache() if cache is None else cache
        x, self_cache = self._residual(
            x, self.self_attn_norm, lambda h: self.self_attn(h, attn_mask=attn_mask, cache=cache.self_attn)
        )
        cross_cache = cache.cross_attn
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has encoder/decoder attention: pass context (the encoder output)")
            x, cross_cache = self._residual(
                x,
                self.cross_attn_norm,
                lambda h: self.cross_attn(h, context=context, attn_mask=context_attn_mask, cache=cross_cache),
            )
        x, _ = self._residual(x, self.ff_norm, lambda h: (self.ff(h), None))
        return x, BlockCache(self_cache, cross_cache)
