"""The Reformer (Kitaev, Kaiser & Levskaya 2020): LSH attention, reversible layers, chunking.

:class:`ReformerLM` is the decoder-only language model; :class:`Reformer` the encoder-decoder. Both are
built from one :class:`ReformerConfig`. Each layer is a pair of reversible residual branches
``Y1 = X1 + Attention(X2), Y2 = X2 + FeedForward(Y1)`` (pre-norm inside each branch); the attention of
each layer is LSH or full attention, as ``attn_layers`` says, cycled over the layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import Config, check_choice, check_dropout, check_heads, check_positive
from ..functional import LSHCache, check_key_mask, key_to_attn_mask
from ..generation import check_prompt, check_sampling, search
from ..nn import KVCache, MultiHeadAttention, make_norm
from ..nn.chunked import ChunkedFeedForward, TokenLoss, chunked_cross_entropy, run_chunked
from ..nn.layers import ACTIVATIONS
from ..nn.lsh import LSHSelfAttention
from ..nn.reversible import ReversibleSequence
from .common import Embeddings, check_same_batch, check_tokens, resolve_key_mask

IGNORE_INDEX = -100  # a target that the loss leaves out (PyTorch's cross-entropy default)

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
    attention is full attention. ``tie_embeddings``: the output projection shares the (target) token
    embedding. ``pad_id`` (encoder-decoder): missing key masks are derived as ``tokens != pad_id``.
    ``dropout`` acts on the embeddings and the branches' outputs, ``attn_dropout`` on attention weights.
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
        smallest_vocab = min(self.vocab_size, self.src_vocab_size or self.vocab_size)
        if self.pad_id is not None and not 0 <= self.pad_id < smallest_vocab:
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

    def forward(self, x: Tensor, key_mask: Tensor | None = None, **_) -> Tensor:
        """x (B, L, d_model), key_mask (B, L) (True = real token) -> (B, L, d_model)."""
        if self.kind == "lsh":
            # The norm and the projections are position-wise: with chunks > 1 they run in slices
            # (checkpointed), so the norm's output is never held for the whole sequence.
            qk, v = run_chunked(self._project, x, self.chunks)  # 2 x (B, L, H * D)
            y = self.attn.attend(qk, v, key_mask=key_mask)
        else:
            y = self.attn(self.norm(x), attn_mask=key_to_attn_mask(key_mask)).y
        return self.dropout(y)

    def step(self, x: Tensor, cache=None, **_) -> tuple[Tensor, LSHCache | KVCache]:
        """x (B, T, d_model) at the positions after ``cache`` -> (y, cache): causal decoding (eval mode)."""
        if self.kind == "lsh":
            y, cache = self.attn.decode(*self._project(x), cache)
        else:
            y, cache = self.attn(self.norm(x), cache=cache)
        return self.dropout(y), cache

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

    def forward(
        self, x: Tensor, context: Tensor | None = None, context_attn_mask: Tensor | None = None, **_
    ) -> Tensor:
        if context is None:
            raise ValueError("encoder/decoder attention needs context (the encoder output)")
        return self.dropout(self.attn(self.norm(x), context=context, attn_mask=context_attn_mask).y)

    def step(
        self, x: Tensor, cache: KVCache | None = None, context: Tensor | None = None,
        context_attn_mask: Tensor | None = None, **_
    ) -> tuple[Tensor, KVCache]:
        """As forward, keeping the projected encoder output in ``cache`` after the first call."""
        if cache is None and context is None:
            raise ValueError("encoder/decoder attention needs context (the encoder output)")
        y, cache = self.attn(self.norm(x), context=context, attn_mask=context_attn_mask, cache=cache)
        return self.dropout(y), cache


def _ff(c: ReformerConfig) -> ChunkedFeedForward:
    return ChunkedFeedForward(
        c.d_model, c.d_ff, chunks=c.ff_chunks, activation=c.activation, dropout=c.dropout, norm=c.norm,
        norm_eps=c.norm_eps,
    )


def _embeddings(c: ReformerConfig, vocab_size: int) -> Embeddings:
    return Embeddings(
        vocab_size, c.d_model, max_len=c.max_len, positional=c.positional, dropout=c.dropout,
        axial_shape=c.axial_shape,
    )


@dataclass
class ReformerCache:
    """What a Reformer decoder keeps while decoding: one entry per branch of its reversible stack
    (:class:`~attnkit.functional.LSHCache` for LSH self-attention, :class:`~attnkit.nn.KVCache` for full
    self- or encoder/decoder attention, None for feed-forward branches) and the number of positions held."""

    layers: tuple[LSHCache | KVCache | None, ...]
    length: int


def _can_decode(stack: ReversibleSequence) -> bool:
    return all(getattr(b.attn, "can_decode", True) for b in stack.branches if isinstance(b, _SelfAttentionBranch))


class ReformerLM(nn.Module):
    """Decoder-only Reformer language model.

    ``forward(tokens, key_mask) -> logits``; ``forward(tokens, key_mask, targets=targets) ->
    TokenLoss(sum, count)``, the summed cross-entropy with the last norm, the output projection and the
    loss run in ``loss_chunks`` slices (the logits are never all held at once); ``loss(tokens, key_mask)``
    the mean next-token loss; ``step(tokens, cache)`` runs new positions after cached ones (LSH layers
    keep their keys, values and buckets: :func:`~attnkit.functional.lsh_attention_step`), which
    ``generate`` uses.
    """

    owns_loss = True
    """Its forward computes the token loss itself when given ``targets`` (a trainer should pass them,
    rather than compute cross-entropy over full logits, so that ``loss_chunks`` takes effect)."""

    def __init__(self, config: ReformerConfig):
        super().__init__()
        c = self.config = config
        self.embed = _embeddings(c, c.vocab_size)
        branches = []
        for i in range(c.n_layers):
            branches += [_SelfAttentionBranch(c, c.attention_kind(i), causal=True), _ff(c)]
        self.layers = ReversibleSequence(branches, reversible=c.reversible)
        self.norm = make_norm(c.norm, c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.token.weight

    def hidden(self, tokens: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """tokens (B, T) -> final hidden states (B, T, d_model), after the last norm."""
        return self.norm(self._trunk(tokens, key_mask))

    def _trunk(self, tokens: Tensor, key_mask: Tensor | None) -> Tensor:
        # tokens (B, T) -> the layers' output (B, T, d_model), before the last norm
        check_tokens(tokens, self.config.vocab_size)
        key_mask = resolve_key_mask(tokens, key_mask)  # (B, T) or None
        return self.layers(self.embed(tokens), key_mask=key_mask)

    def _head(self, h: Tensor) -> Tensor:
        return self.lm_head(self.norm(h))

    def forward(
        self,
        tokens: Tensor,
        key_mask: Tensor | None = None,
        *,
        targets: Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> Tensor | TokenLoss:
        """Logits, or with ``targets`` the summed token loss.

        Args:
            tokens: (B, T) token ids.
            key_mask: (B, T), True for real tokens.
            targets: (B, T) the token each position predicts (the caller shifts: ``targets[:, t]`` is
                the token after ``tokens[:, t]``), ``-100`` where nothing is predicted.
            label_smoothing: as in :func:`torch.nn.functional.cross_entropy`; only with ``targets``.

        Returns:
            logits (B, T, vocab_size) without targets; with them ``TokenLoss(sum, count)``: the summed
            cross-entropy (0-dim float, computed in ``loss_chunks`` slices) and the number of targets
            counted (0-dim long).
        """
        h = self._trunk(tokens, key_mask)  # (B, T, d_model)
        if targets is None:
            if label_smoothing:
                raise ValueError("label_smoothing applies to the loss: pass targets as well")
            return self._head(h)
        _check_targets(targets, tokens, self.config.vocab_size)
        # The last norm runs inside the loss's slices too, so its output is never held whole.
        total = chunked_cross_entropy(
            h, self._head, targets, chunks=self.config.loss_chunks, ignore_index=IGNORE_INDEX, reduction="sum",
            label_smoothing=label_smoothing,
        )
        return TokenLoss(total, (targets != IGNORE_INDEX).sum())

    def step(self, tokens: Tensor, cache: ReformerCache | None = None) -> tuple[Tensor, ReformerCache]:
        """Run ``tokens`` (B, t) after the positions held in ``cache`` -> (logits (B, t, V), new cache).

        For decoding in eval mode: the logits equal ``forward`` over the whole sequence at the new
        positions. Needs causal LSH layers without ``attend_across_buckets`` (see ``can_decode``).
        """
        check_tokens(tokens, self.config.vocab_size)
        if not self.can_decode:
            raise ValueError("step needs LSH layers without attend_across_buckets; generate(use_cache=False) "
                             "re-runs the prefix instead")
        offset = 0 if cache is None else cache.length
        x = self.embed(tokens, offset=offset)  # (B, t, d_model)
        x, layers = self.layers.step(x, None if cache is None else cache.layers)
        return self._head(x), ReformerCache(layers, offset + tokens.shape[1])

    @property
    def can_decode(self) -> bool:
        """Whether :meth:`step` (cached decoding) supports this model's attention settings."""
        return _can_decode(self.layers)

    def loss(self, tokens: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Mean next-token cross-entropy of ``tokens`` (B, T): position t predicts token t + 1.

        Targets that are padding (``key_mask`` False) are left out.
        """
        check_tokens(tokens, self.config.vocab_size)
        key_mask = check_key_mask(key_mask, *tokens.shape)
        targets = torch.full_like(tokens, IGNORE_INDEX)  # (B, T): the last position predicts nothing
        targets[:, :-1] = tokens[:, 1:]
        if key_mask is not None:
            targets[:, :-1].masked_fill_(~key_mask[:, 1:], IGNORE_INDEX)
        total, count = self(tokens, key_mask, targets=targets)
        return total / count.clamp_min(1)

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
        use_cache: bool = True,
        **options,
    ) -> Tensor:
        """Continue ``tokens`` (B, T) -> (B, T + n); greedy at temperature 0, beam search with
        ``beam_size > 1``; ``options`` (repetition_penalty, on_token) as :meth:`TransformerLM.generate`.

        In eval mode each new token runs through :meth:`step`, against cached keys, values and buckets;
        with ``use_cache=False``, in training mode, or with ``attend_across_buckets``, each step re-runs
        the whole prefix (the same tokens in eval mode, much slower)."""
        check_tokens(tokens, self.config.vocab_size)
        check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, beam_size=beam_size,
                       max_new_tokens=max_new_tokens, length_penalty=length_penalty)
        check_prompt(tokens, max_new_tokens, self.config.max_len)

        def rerun(new: Tensor, prefix: Tensor | None):
            seq = new if prefix is None else torch.cat([prefix, new], dim=1)
            return self(seq)[:, -new.shape[1] :], seq

        step = self.step if use_cache and not self.training and self.can_decode else rerun

        return search(step, tokens, max_new_tokens, beam_size=beam_size, eos_id=eos_id, length_penalty=length_penalty,
                      temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, **options)


def _check_targets(targets, tokens: Tensor, vocab_size: int) -> None:
    if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.dtype == torch.bool:
        what = f"dtype {targets.dtype}" if isinstance(targets, Tensor) else type(targets).__name__
        raise TypeError(f"targets must be an integer tensor of token ids (-100 = ignored), got {what}")
    if targets.shape != tokens.shape:
        raise ValueError(f"targets must have the tokens' shape {tuple(tokens.shape)}, got {tuple(targets.shape)}")
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= vocab_size))
    if bad.any():
        raise ValueError(
            f"targets holds id {int(targets[bad][0])}, outside the vocabulary [0, {vocab_size}) (and not -100)"
        )


class Reformer(nn.Module):
    """Encoder-decoder Reformer: reversible LSH encoder, reversible decoder with causal self-attention,
    full encoder/decoder attention and feed-forward branches.

    ``forward(src, tgt) -> logits`` with teacher forcing (``tgt`` shifted right by the caller);
    ``encode``/``decode`` separately; ``decode_step`` for cached decoding, which ``generate`` uses.
    """

    def __init__(self, config: ReformerConfig):
        super().__init__()
        c = self.config = config
        self.src_vocab_size = c.src_vocab_size or c.vocab_size
        self.src_embed = _embeddings(c, self.src_vocab_size)
        self.tgt_embed = _embeddings(c, c.vocab_size)
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

    def _src_key_mask(self, src: Tensor, src_key_mask: Tensor | None) -> Tensor | None:
        check_tokens(src, self.src_vocab_size, "src")
        return resolve_key_mask(src, src_key_mask, self.config.pad_id, "src_key_mask")

    def encode(self, src: Tensor, src_key_mask: Tensor | None = None) -> Tensor:
        """src (B, S) -> memory (B, S, d_model). ``src_key_mask`` (B, S): True for real tokens (default
        ``src != pad_id`` when the config has a ``pad_id``)."""
        return self._encode(src, self._src_key_mask(src, src_key_mask))

    def _encode(self, src: Tensor, src_key_mask: Tensor | None) -> Tensor:
        # src and its key mask already checked
        return self.encoder_norm(self.encoder(self.src_embed(src), key_mask=src_key_mask))

    def decode(
        self, tgt: Tensor, memory: Tensor, src_key_mask: Tensor | None = None, tgt_key_mask: Tensor | None = None
    ) -> Tensor:
        """tgt (B, T), memory (B, S, d_model) -> logits (B, T, vocab_size).

        ``src_key_mask`` (B, S) and ``tgt_key_mask`` (B, T): True for real tokens (``tgt_key_mask``
        defaults to ``tgt != pad_id`` when the config has a ``pad_id``).
        """
        check_tokens(tgt, self.config.vocab_size, "tgt")
        check_same_batch(tgt=tgt, memory=memory)
        src_key_mask = check_key_mask(src_key_mask, *memory.shape[:2], name="src_key_mask")
        tgt_key_mask = resolve_key_mask(tgt, tgt_key_mask, self.config.pad_id, "tgt_key_mask")
        x = self.decoder(
            self.tgt_embed(tgt), key_mask=tgt_key_mask, context=memory, context_attn_mask=key_to_attn_mask(src_key_mask)
        )
        return self.out_proj(self.decoder_norm(x))

    def decode_step(
        self, tgt: Tensor, memory: Tensor, src_key_mask: Tensor | None = None, cache: ReformerCache | None = None
    ) -> tuple[Tensor, ReformerCache]:
        """Decode ``tgt`` (B, t) after the target positions held in ``cache`` -> (logits (B, t, V), cache).

        For decoding in eval mode (every target token real): the logits equal :meth:`decode` over the
        whole target at the new positions. Needs LSH layers without ``attend_across_buckets``.
        """
        check_tokens(tgt, self.config.vocab_size, "tgt")
        check_same_batch(tgt=tgt, memory=memory)
        if not _can_decode(self.decoder):
            raise ValueError("decode_step needs LSH layers without attend_across_buckets; "
                             "generate(use_cache=False) re-runs the target prefix instead")
        src_key_mask = check_key_mask(src_key_mask, *memory.shape[:2], name="src_key_mask")
        offset = 0 if cache is None else cache.length
        x, layers = self.decoder.step(
            self.tgt_embed(tgt, offset=offset), None if cache is None else cache.layers, context=memory,
            context_attn_mask=key_to_attn_mask(src_key_mask),
        )
        return self.out_proj(self.decoder_norm(x)), ReformerCache(layers, offset + tgt.shape[1])

    def forward(
        self, src: Tensor, tgt: Tensor, src_key_mask: Tensor | None = None, tgt_key_mask: Tensor | None = None
    ) -> Tensor:
        """src (B, S), tgt (B, T) -> logits (B, T, vocab_size); the key masks (True = real token) as in
        :meth:`encode` and :meth:`decode`."""
        src_key_mask = self._src_key_mask(src, src_key_mask)
        memory = self._encode(src, src_key_mask)
        return self.decode(tgt, memory, src_key_mask, tgt_key_mask)

    @torch.no_grad()
    def generate(
        self,
        src: Tensor,
        max_new_tokens: int,
        *,
        bos_id: int,
        eos_id: int | Sequence[int] | None = None,
        src_key_mask: Tensor | None = None,
        beam_size: int = 1,
        length_penalty: float = 1.0,
        use_cache: bool = True,
        **sampling,
    ) -> Tensor:
        """Translate ``src`` (B, S): target tokens (B, 1 + n) starting with ``bos_id``, as
        :meth:`Transformer.generate`. In eval mode the decoder runs one new token at a time against cached
        keys, values and buckets (:meth:`decode_step`); ``use_cache=False`` (or training mode, or
        ``attend_across_buckets``) re-runs the target prefix at each step."""
        check_sampling(beam_size=beam_size, max_new_tokens=max_new_tokens, length_penalty=length_penalty)
        src_key_mask = self._src_key_mask(src, src_key_mask)
        memory = self._encode(src, src_key_mask)
        if beam_size > 1:
            memory = memory.repeat_interleave(beam_size, 0)
            src_key_mask = None if src_key_mask is None else src_key_mask.repeat_interleave(beam_size, 0)
        start = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
        max_new_tokens = min(max_new_tokens, self.config.max_len - 1)

        def rerun(new: Tensor, prefix: Tensor | None):
            seq = new if prefix is None else torch.cat([prefix, new], dim=1)
            # every generated token is real, even one that equals pad_id
            logits = self.decode(seq, memory, src_key_mask, torch.ones_like(seq, dtype=torch.bool))
            return logits[:, -new.shape[1] :], seq

        def cached(new: Tensor, cache: ReformerCache | None):
            return self.decode_step(new, memory, src_key_mask, cache)

        step = cached if use_cache and not self.training and _can_decode(self.decoder) else rerun
        return search(step, start, max_new_tokens, beam_size=beam_size, eos_id=eos_id,
                      length_penalty=length_penalty, **sampling)
