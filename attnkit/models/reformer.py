"""The Reformer (Kitaev, Kaiser & Levskaya 2020): LSH attention, reversible layers, chunking.

:class:`ReformerLM` is the decoder-only language model; :class:`Reformer` the encoder-decoder. Both are
built from one :class:`ReformerConfig`. Each layer is a pair of reversible residual branches
``Y1 = X1 + Attention(X2), Y2 = X2 + FeedForward(Y1)`` (pre-norm inside each branch); the attention of
each layer is LSH or full attention, as ``attn_layers`` says, cycled over the layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import Config, check_choice, check_dropout, check_heads, check_positive
from ..nn import MultiHeadAttention, make_norm
from ..nn.axial import AxialPositionalEmbedding, axial_shape
from ..nn.chunked import ChunkedFeedForward, chunked_cross_entropy, run_chunked
from ..nn.layers import ACTIVATIONS
from ..nn.lsh import LSHSelfAttention
from ..nn.reversible import ReversibleSequence
from .common import Embeddings, check_key_mask, check_same_batch, check_tokens

ATTENTION_KINDS = ("lsh", "full")
REFORMER_POSITIONALS = ("axial", "learned", "sinusoidal", "none")


@dataclass
class ReformerConfig(Config):
    """Configuration of :class:`ReformerLM` and of the encoder-decoder :class:`Reformer`.

    ``attn_layers`` lists attention kinds ("lsh" or "full") cycled over the layers: ``("lsh",)`` makes
    every layer LSH, ``("lsh", "full")`` alternates. ``ff_chunks`` and ``loss_chunks`` run the
    feed-forward layers (and the LSH layers' norm and projections) and the output projection + loss in
    slices of positions. ``axial_shape``
    (n_1, n_2) with n_1 * n_2 >= max_len lays out the axial positional embedding (default near-square).
    The encoder-decoder reads ``src_vocab_size`` (default ``vocab_size``) and ``n_decoder_layers``
    (default ``n_layers``); its encoder attention is bidirectional and its decoder's encoder/decoder
    attention is full attention.
    """

    vocab_size: int = 256
    d_model: int = 256
    n_heads: int = 4
    d_head: int | None = None
    n_layers: int = 6
    d_ff: int = 1024
    max_len: int = 65536
    attn_layers: tuple[str, ...] = ("lsh",)
    n_hashes: int = 4
    bucket_size: int = 64
    n_buckets: int | None = None
    attend_across_buckets: bool = False
    dedup: bool = False
    reversible: bool = True
    ff_chunks: int = 1
    loss_chunks: int = 1
    positional: str = "axial"  # axial | learned | sinusoidal | none
    axial_shape: tuple[int, int] | None = None
    dropout: float = 0.0
    attn_dropout: float = 0.0
    norm: str = "layer"
    norm_eps: float = 1e-5
    activation: str = "gelu"
    tie_embeddings: bool = True
    src_vocab_size: int | None = None
    n_decoder_layers: int | None = None
    pad_id: int | None = None  # encoder-decoder: derive padding masks from the tokens

    def __post_init__(self):
        if isinstance(self.attn_layers, str):
            self.attn_layers = (self.attn_layers,)
        self.attn_layers = tuple(self.attn_layers)
        if self.axial_shape is not None:
            self.axial_shape = tuple(self.axial_shape)
        check_positive(
            self, "vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_len", "n_hashes", "bucket_size",
            "ff_chunks", "loss_chunks",
        )
        for name in ("src_vocab_size", "n_decoder_layers", "d_head", "n_buckets"):
            if getattr(self, name) is not None:
                check_positive(self, name)
        check_heads(self)
        check_dropout(self, "dropout", "attn_dropout")
        check_choice(self, "positional", REFORMER_POSITIONALS)
        check_choice(self, "norm", ("layer", "rms"))
        check_choice(self, "activation", ACTIVATIONS)
        if not self.attn_layers or any(kind not in ATTENTION_KINDS for kind in self.attn_layers):
            raise ValueError(
                f"ReformerConfig.attn_layers must be a non-empty list of {ATTENTION_KINDS}, got {self.attn_layers!r}"
            )
        if self.n_buckets is not None and self.n_buckets > 1 and self.n_buckets % 2:
            raise ValueError(f"ReformerConfig.n_buckets must be 1 or even, got {self.n_buckets}")
        if self.axial_shape is not None:
            if len(self.axial_shape) != 2 or any(not isinstance(n, int) or n < 1 for n in self.axial_shape):
                raise ValueError(f"ReformerConfig.axial_shape must be two positive ints, got {self.axial_shape!r}")
            if self.axial_shape[0] * self.axial_shape[1] < self.max_len:
                raise ValueError(
                    f"ReformerConfig.axial_shape {self.axial_shape} covers {self.axial_shape[0] * self.axial_shape[1]} "
                    f"positions, fewer than max_len={self.max_len}; enlarge it or leave it None"
                )
        if self.pad_id is not None and not 0 <= self.pad_id < min(self.vocab_size, self.src_vocab_size or self.vocab_size):
            raise ValueError(f"ReformerConfig.pad_id={self.pad_id} must be a valid token id")

    def attention_kind(self, layer: int) -> str:
        return self.attn_layers[layer % len(self.attn_layers)]


class _SelfAttentionBranch(nn.Module):
    """``dropout(attention(norm(x)))``: LSH or full self-attention, the F of a reversible layer."""

    def __init__(self, c: ReformerConfig, kind: str, causal: bool):
        super().__init__()
        self.kind, self.chunks = kind, c.ff_chunks
        self.norm = make_norm(c.norm, c.d_model, c.norm_eps)
        if kind == "lsh":
            self.attn = LSHSelfAttention(
                c.d_model, c.n_heads, d_head=c.d_head, n_hashes=c.n_hashes, bucket_size=c.bucket_size,
                causal=causal, dropout=c.attn_dropout, n_buckets=c.n_buckets,
                attend_across_buckets=c.attend_across_buckets, dedup=c.dedup,
            )
        else:
            self.attn = MultiHeadAttention(c.d_model, c.n_heads, d_head=c.d_head, causal=causal, dropout=c.attn_dropout)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, **_) -> Tensor:
        if self.kind == "lsh":
            # The norm and the projections are position-wise: with chunks > 1 they run in slices
            # (checkpointed), so the norm's output is never held for the whole sequence.
            qk, v = run_chunked(self._project, x, self.chunks)  # 2 x (B, L, H * D)
            y = self.attn.attend(qk, v, mask=mask)
        else:
            y = self.attn(self.norm(x), mask=mask)[0]
        return self.dropout(y)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.norm(x)
        return self.attn.qk_proj(h), self.attn.v_proj(h)


class _CrossAttentionBranch(nn.Module):
    """``dropout(attention(norm(x), encoder output))``: full encoder/decoder attention."""

    def __init__(self, c: ReformerConfig):
        super().__init__()
        self.norm = make_norm(c.norm, c.d_model, c.norm_eps)
        self.attn = MultiHeadAttention(c.d_model, c.n_heads, d_head=c.d_head, dropout=c.attn_dropout)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None, **_) -> Tensor:
        if context is None:
            raise ValueError("encoder/decoder attention needs context (the encoder output)")
        return self.dropout(self.attn(self.norm(x), context=context, mask=context_mask)[0])


def _ff(c: ReformerConfig) -> ChunkedFeedForward:
    return ChunkedFeedForward(
        c.d_model, c.d_ff, chunks=c.ff_chunks, activation=c.activation, dropout=c.dropout, norm=c.norm,
        norm_eps=c.norm_eps,
    )


class _Embed(nn.Module):
    """Token embedding plus the configured positions (axial ones added here, the others by Embeddings)."""

    def __init__(self, c: ReformerConfig, vocab_size: int):
        super().__init__()
        positional = "none" if c.positional == "axial" else c.positional
        self.embed = Embeddings(vocab_size, c.d_model, max_len=c.max_len, positional=positional, dropout=c.dropout)
        self.axial = (
            AxialPositionalEmbedding(c.d_model, c.axial_shape or axial_shape(c.max_len))
            if c.positional == "axial"
            else None
        )
        self.drop = nn.Dropout(c.dropout)

    @property
    def token(self) -> nn.Embedding:
        return self.embed.token

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)  # (B, T, d_model); checks T <= max_len
        if self.axial is not None:
            x = self.drop(x + self.axial(torch.arange(tokens.shape[1], device=tokens.device)).to(x.dtype))
        return x


class ReformerLM(nn.Module):
    """Decoder-only Reformer language model.

    ``forward(tokens, mask) -> logits``; ``loss(tokens, mask)`` gives the next-token cross-entropy with
    the output projection run in ``loss_chunks`` slices (the logits are never all held at once);
    ``generate`` decodes by re-running the prefix (LSH attention keeps no KV cache).
    """

    def __init__(self, config: ReformerConfig):
        super().__init__()
        c = self.config = config
        self.embed = _Embed(c, c.vocab_size)
        branches = []
        for i in range(c.n_layers):
            branches += [_SelfAttentionBranch(c, c.attention_kind(i), causal=True), _ff(c)]
        self.layers = ReversibleSequence(branches, reversible=c.reversible)
        self.norm = make_norm(c.norm, c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.token.weight

    def hidden(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """tokens (B, T) -> final hidden states (B, T, d_model), after the last norm."""
        return self.norm(self._trunk(tokens, mask))

    def _trunk(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        # tokens (B, T) -> the layers' output (B, T, d_model), before the last norm
        check_tokens(tokens, self.config.vocab_size)
        attn_mask = check_key_mask(mask, tokens, "mask")  # (B, 1, 1, T) or None
        return self.layers(self.embed(tokens), mask=attn_mask)

    def _head(self, h: Tensor) -> Tensor:
        return self.lm_head(self.norm(h))

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """tokens (B, T) -> logits (B, T, vocab_size). ``mask`` (B, T) marks real tokens (True)."""
        return self.lm_head(self.hidden(tokens, mask))

    def loss(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean next-token cross-entropy of ``tokens`` (B, T): position t predicts token t + 1.

        Targets that are padding (``mask`` False) are left out.
        """
        h = self._trunk(tokens, mask)[:, :-1]  # (B, T - 1, d_model)
        targets = tokens[:, 1:]
        if mask is not None:
            targets = targets.masked_fill(~mask[:, 1:], -100)
        # The last norm runs inside the loss's slices too, so its output is never held whole.
        return chunked_cross_entropy(h, self._head, targets, chunks=self.config.loss_chunks)

    @torch.no_grad()
    def generate(
        self,
        tokens: Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        beam_size: int = 1,
        length_penalty: float = 1.0,
        **options,
    ) -> Tensor:
        """Continue ``tokens`` (B, T) -> (B, T + n); greedy at temperature 0, beam search with
        ``beam_size > 1``; ``options`` (repetition_penalty, on_token) as :meth:`TransformerLM.generate`.
        Each step re-runs the prefix: LSH attention keeps no KV cache."""
        from ..generation import beam_search, check_prompt, generate

        check_tokens(tokens, self.config.vocab_size)
        check_prompt(tokens, max_new_tokens, self.config.max_len)

        def step(new: Tensor, prefix: Tensor | None):
            seq = new if prefix is None else torch.cat([prefix, new], dim=1)
            return self(seq)[:, -new.shape[1] :], seq

        if beam_size > 1:
            return beam_search(step, tokens, max_new_tokens, beam_size=beam_size, eos_id=eos_id,
                               length_penalty=length_penalty)
        return generate(
            step, tokens, max_new_tokens, eos_id=eos_id, temperature=temperature, top_k=top_k, top_p=top_p,
            generator=generator, **options,
        )


class Reformer(nn.Module):
    """Encoder-decoder Reformer: reversible LSH encoder, reversible decoder with causal self-attention,
    full encoder/decoder attention and feed-forward branches.

    ``forward(src, tgt) -> logits`` with teacher forcing (``tgt`` shifted right by the caller);
    ``encode``/``decode`` separately.
    """

    def __init__(self, config: ReformerConfig):
        super().__init__()
        c = self.config = config
        self.src_vocab_size = c.src_vocab_size or c.vocab_size
        self.src_embed = _Embed(c, self.src_vocab_size)
        self.tgt_embed = _Embed(c, c.vocab_size)
        enc = []
        for i in range(c.n_layers):
            enc += [_SelfAttentionBranch(c, c.attention_kind(i), causal=False), _ff(c)]
        dec = []
        for i in range(c.n_decoder_layers or c.n_layers):
            dec += [_SelfAttentionBranch(c, c.attention_kind(i), causal=True), _CrossAttentionBranch(c), _ff(c)]
        self.encoder = ReversibleSequence(enc, reversible=c.reversible)
        self.decoder = ReversibleSequence(dec, reversible=c.reversible)
        self.encoder_norm = make_norm(c.norm, c.d_model, c.norm_eps)
        self.decoder_norm = make_norm(c.norm, c.d_model, c.norm_eps)
        self.out_proj = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.out_proj.weight = self.tgt_embed.token.weight

    def _mask(self, tokens: Tensor, mask: Tensor | None, name: str) -> Tensor | None:
        if mask is None and self.config.pad_id is not None:
            mask = tokens != self.config.pad_id
        return check_key_mask(mask, tokens, name)

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """src (B, S) -> memory (B, S, d_model). ``src_mask`` (B, S): True for real tokens."""
        check_tokens(src, self.src_vocab_size, "src")
        attn_mask = self._mask(src, src_mask, "src_mask")
        return self.encoder_norm(self.encoder(self.src_embed(src), mask=attn_mask))

    def decode(
        self, tgt: Tensor, memory: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None
    ) -> Tensor:
        """tgt (B, T), memory (B, S, d_model) -> logits (B, T, vocab_size)."""
        check_tokens(tgt, self.config.vocab_size, "tgt")
        check_same_batch(tgt=tgt, memory=memory)
        context_mask = check_key_mask(src_mask, memory[..., 0], "src_mask") if src_mask is not None else None
        x = self.decoder(
            self.tgt_embed(tgt), mask=self._mask(tgt, tgt_mask, "tgt_mask"), context=memory, context_mask=context_mask
        )
        return self.out_proj(self.decoder_norm(x))

    def forward(
        self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None
    ) -> Tensor:
        """src (B, S), tgt (B, T) -> logits (B, T, vocab_size)."""
        check_tokens(src, self.src_vocab_size, "src")
        check_tokens(tgt, self.config.vocab_size, "tgt")
        check_same_batch(src=src, tgt=tgt)
        if src_mask is None and self.config.pad_id is not None:
            src_mask = src != self.config.pad_id
        memory = self.encode(src, src_mask)
        return self.decode(tgt, memory, src_mask, tgt_mask)
