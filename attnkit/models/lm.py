"""Decoder-only Transformer language model (GPT-style; with rotary/RMSNorm/SwiGLU options, Llama-style)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, check_choice, check_dropout, check_heads, check_positive
from ..functional import key_to_attn_mask
from ..generation import beam_search, check_prompt, check_sampling, generate
from ..nn import KVCache, RMSNorm, make_norm
from ..nn.block import BlockCache
from ..nn.layers import ACTIVATIONS
from .common import (
    POSITIONALS,
    Embeddings,
    LMCache,
    cache_length,
    check_tokens,
    make_blocks,
    resolve_key_mask,
    run_blocks,
)


@dataclass
class TransformerLMConfig(Config):
    """Configuration of :class:`TransformerLM`, a decoder-only causal language model: GPT-2 style by
    default (learned positions, LayerNorm, GELU, biases), Llama style with ``positional="rotary"``,
    ``norm="rms"``, ``activation="swiglu"``, ``bias=False``.

    ``rotary_base``: the rotary embedding's base (theta; read only with ``positional="rotary"``).
    ``norm_first``: pre-norm (GPT-2, Llama; adds a final norm) or post-norm (the original Transformer).
    ``d_head``: width of each head, default ``d_model // n_heads``. ``n_kv_heads``: key/value heads
    (grouped-query attention when fewer than ``n_heads``), default ``n_heads``. ``bias``: biases in the
    attention and feed-forward projections. ``tie_embeddings``: the output projection shares the token
    embedding matrix. ``max_len``: the longest sequence (learned positions are allocated for it).
    """

    vocab_size: int = 256
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 1024
    max_len: int = 1024
    dropout: float = 0.1
    positional: str = "learned"  # sinusoidal | learned | rotary | none
    rotary_base: float = 10000.0
    norm: str = "layer"  # layer | rms
    norm_first: bool = True
    norm_eps: float = 1e-5
    activation: str = "gelu"
    bias: bool = True
    d_head: int | None = None
    n_kv_heads: int | None = None
    tie_embeddings: bool = True

    def __post_init__(self):
        check_positive(self, "vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_len")
        check_heads(self)
        check_dropout(self, "dropout")
        check_choice(self, "positional", POSITIONALS)
        check_choice(self, "norm", ("layer", "rms"))
        check_choice(self, "activation", ACTIVATIONS)


class TransformerLM(nn.Module):
    """Causal language model: embeddings, n_layers causal blocks, (final norm), output projection.

    ``forward(tokens) -> logits`` for training; ``step(tokens, cache) -> (logits, cache)`` for
    incremental decoding with an explicit :class:`LMCache`; ``generate`` for text.
    :func:`attnkit.interop.load_pretrained` loads Llama-family weights into one (Hugging Face folders or
    GGUF files).
    """

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        c = self.config = config
        self.embed = Embeddings(
            c.vocab_size, c.d_model, max_len=c.max_len, positional=c.positional, dropout=c.dropout
        )
        self.blocks = make_blocks(
            c.n_layers, d_model=c.d_model, n_heads=c.n_heads, d_ff=c.d_ff, causal=True,
            norm_first=c.norm_first, norm=c.norm, norm_eps=c.norm_eps, activation=c.activation,
            dropout=c.dropout, bias=c.bias, d_head=c.d_head, n_kv_heads=c.n_kv_heads,
            rotary_base=c.rotary_base if c.positional == "rotary" else None,
        )
        self.norm = make_norm(c.norm, c.d_model, c.norm_eps) if c.norm_first else nn.Identity()
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.token.weight

    def _run(self, tokens, key_mask, cache):
        check_tokens(tokens, self.config.vocab_size)
        attn_mask = key_to_attn_mask(resolve_key_mask(tokens, key_mask))  # (B, 1, 1, T) or None
        x = self.embed(tokens, offset=cache_length(cache))  # (B, T, d_model)
        x, cache = run_blocks(self.blocks, x, cache, attn_mask=attn_mask)
        return self.lm_head(self.norm(x)), cache  # (B, T, vocab)

    def forward(self, tokens: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """tokens (B, T) -> logits (B, T, vocab_size). ``key_mask`` (B, T) marks real tokens (True)."""
        return self._run(tokens, key_mask, None)[0]

    def step(self, tokens: Tensor, cache: LMCache | None = None) -> tuple[Tensor, LMCache]:
        """Run ``tokens`` (B, t) after the positions held in ``cache`` -> (logits (B, t, V), new cache)."""
        return self._run(tokens, None, cache)

    def _decode(self, tokens: Tensor, cache: LMCache | None) -> tuple[Tensor, LMCache]:
        """generate()'s step: like :meth:`step`, but only the last position's logits (B, 1, V), and for
        one new token per sequence of a pre-norm model in eval mode the blocks' arithmetic is written
        out here.

        At batch 1 on a CPU, the general path's module calls, no-op dropouts and per-call checks cost
        about a tenth of a small model's step (SmolLM2-135M); this is the same computation with fewer,
        plain tensor operations, and the same cache. tests/test_interop.py holds it equal to ``step``.
        """
        check_tokens(tokens, self.config.vocab_size)
        x = self.embed(tokens, offset=cache_length(cache))  # (B, t, d_model)
        if cache is None or tokens.shape[1] != 1 or self.training or not self.config.norm_first:
            x, cache = run_blocks(self.blocks, x, cache)
            return self.lm_head(self.norm(x[:, -1:])), cache
        B, _, d_model = x.shape
        x = x.view(B, d_model)  # one position: 2-D activations make each linear a single matrix-vector product
        rotary = self.blocks[0].self_attn.rotary_base is not None
        if rotary:
            # rotate_half(x) * sin == roll(x, D / 2) * sin with the first half of sin negated
            cos, sin = self.blocks[0].self_attn._rotary(cache_length(cache), 1, x.device)  # (1, D)
            sin = torch.cat([-sin[..., : sin.shape[-1] // 2], sin[..., sin.shape[-1] // 2 :]], dim=-1)
        new_cache = []
        for block, layer in zip(self.blocks, cache.layers):
            attn, ff, kv = block.self_attn, block.ff, layer.self_attn
            h = _norm(block.self_attn_norm, x)
            # (B, H * D) -> (B, H, 1, D): with one position no transpose is needed
            q = F.linear(h, attn.q_proj.weight, attn.q_proj.bias).view(B, attn.n_heads, 1, -1)
            k = F.linear(h, attn.k_proj.weight, attn.k_proj.bias).view(B, attn.n_kv_heads, 1, -1)
            v = F.linear(h, attn.v_proj.weight, attn.v_proj.bias).view(B, attn.n_kv_heads, 1, -1)
            if rotary:
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            k, v = torch.cat([kv.k, k], dim=2), torch.cat([kv.v, v], dim=2)  # (B, H_kv, S, D)
            # the one query is the last position: it sees every key, so no mask
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=attn.n_kv_heads != attn.n_heads)  # (B, H, 1, D)
            x = x + F.linear(y.reshape(B, -1), attn.out_proj.weight, attn.out_proj.bias)
            h = _norm(block.ff_norm, x)
            u = F.linear(h, ff.up.weight, ff.up.bias)
            u = ff.act(u) if ff.gate is None else ff.act(F.linear(h, ff.gate.weight, ff.gate.bias)) * u
            x = x + F.linear(u, ff.down.weight, ff.down.bias)
            new_cache.append(BlockCache(KVCache(k, v)))
        return self.lm_head(_norm(self.norm, x)).view(B, 1, -1), LMCache(tuple(new_cache))

    @torch.no_grad()
    def generate(
        self,
        tokens: Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        repetition_penalty: float = 1.0,
        beam_size: int = 1,
        length_penalty: float = 1.0,
        on_token: Callable[[Tensor], None] | None = None,
    ) -> Tensor:
        """Continue ``tokens`` (B, T) -> (B, T + n), n <= max_new_tokens.

        Greedy at temperature 0; sampling with temperature/top_k/top_p otherwise; beam search when
        ``beam_size > 1``. ``eos_id``: stop token(s). ``on_token`` receives each new column (streaming).
        """
        check_tokens(tokens, self.config.vocab_size)
        check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, beam_size=beam_size,
                       max_new_tokens=max_new_tokens, length_penalty=length_penalty)
        check_prompt(tokens, max_new_tokens, self.config.max_len)
        if beam_size > 1:
            return beam_search(self.step, tokens, max_new_tokens, beam_size=beam_size, eos_id=eos_id,
                               length_penalty=length_penalty)
        return generate(
            self._decode, tokens, max_new_tokens, eos_id=eos_id, temperature=temperature, top_k=top_k,
            top_p=top_p, generator=generator, repetition_penalty=repetition_penalty, on_token=on_token,
        )


def _norm(norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(x)``; RMSNorm as the single fused operation, which gives the same numbers."""
    if isinstance(norm, RMSNorm):
        return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.eps)
    return norm(x)


def _rotate(x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """Rotary embedding of x (B, H, 1, D) as :func:`attnkit.functional.apply_rotary` computes it, with
    ``sin_signed`` = sin with its first half negated (so that a roll replaces rotate_half)."""
    if x.dtype == torch.float32:
        return x * cos + x.roll(x.shape[-1] // 2, -1) * sin_signed
    x32 = x.float()
    return (x32 * cos + x32.roll(x.shape[-1] // 2, -1) * sin_signed).to(x.dtype)
