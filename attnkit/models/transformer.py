"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import Config, check_choice, check_dropout, check_heads, check_positive
from ..functional import check_key_mask, key_to_attn_mask
from ..generation import check_sampling, search
from ..nn import make_norm
from ..nn.layers import ACTIVATIONS
from .common import (
    POSITIONALS,
    Embeddings,
    LMCache,
    cache_length,
    check_same_batch,
    check_tokens,
    make_blocks,
    resolve_key_mask,
    run_blocks,
)


@dataclass
class TransformerConfig(Config):
    """Configuration of :class:`Transformer`, the encoder-decoder of "Attention Is All You Need".

    ``n_layers``: encoder layers; ``n_decoder_layers``: decoder layers (default ``n_layers``).
    ``norm_first``: pre-norm with final norms (trains more easily) or post-norm (the paper).
    ``share_embeddings``: one token embedding for source and target (needs ``src_vocab_size ==
    tgt_vocab_size``). ``tie_embeddings``: the output projection shares the target token embedding
    (paper, section 3.4). ``pad_id``: when set, missing source/target key masks are derived as
    ``tokens != pad_id``. :meth:`base` is the paper's base model.
    """

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 3  # encoder layers
    n_decoder_layers: int | None = None  # default: n_layers
    d_ff: int = 1024
    max_len: int = 256
    dropout: float = 0.1
    positional: str = "sinusoidal"
    norm_first: bool = True  # the paper is post-norm (False); pre-norm trains more easily
    norm_eps: float = 1e-5
    activation: str = "relu"
    share_embeddings: bool = False  # one embedding for source and target (needs one vocabulary)
    tie_embeddings: bool = True  # the output projection is the target embedding (paper, section 3.4)
    pad_id: int | None = None  # if set, padding masks are derived from the tokens
    word_dropout: float = 0.0  # target token embeddings dropped whole in training
    decoder_layer_drop: float = 0.0  # decoder layers skipped in training (LayerDrop)

    def __post_init__(self):
        check_positive(self, "src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_len")
        if self.n_decoder_layers is not None:
            check_positive(self, "n_decoder_layers")
        check_heads(self)
        check_dropout(self, "dropout", "word_dropout", "decoder_layer_drop")
        check_choice(self, "positional", POSITIONALS)
        check_choice(self, "activation", ACTIVATIONS)
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"share_embeddings needs one vocabulary, but src_vocab_size={self.src_vocab_size} and "
                f"tgt_vocab_size={self.tgt_vocab_size}; make them equal or set share_embeddings=False"
            )
        if self.pad_id is not None and not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(f"pad_id={self.pad_id} must be a valid id in both vocabularies")

    @classmethod
    def base(cls, **overrides) -> TransformerConfig:
        """The paper's base model (Table 3): 6+6 layers, d_model 512, 8 heads, d_ff 2048, dropout 0.1,
        post-norm, a shared source/target BPE vocabulary of 37,000 with one embedding matrix shared
        by the encoder, the decoder and the output projection: about 63M parameters (the paper: 65M)."""
        values = dict(
            src_vocab_size=37000, tgt_vocab_size=37000, d_model=512, n_heads=8, n_layers=6, d_ff=2048,
            max_len=512, dropout=0.1, positional="sinusoidal", norm_first=False, share_embeddings=True,
            tie_embeddings=True,
        )
        return cls(**{**values, **overrides})


class Transformer(nn.Module):
    """Encoder-decoder Transformer for sequence-to-sequence tasks (translation).

    ``forward(src, tgt) -> logits`` with teacher forcing; ``encode`` and ``decode`` for inference;
    ``generate`` decodes greedily or by sampling with a KV cache.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = self.config = config
        emb = dict(d_model=c.d_model, max_len=c.max_len, positional=c.positional, dropout=c.dropout, scale=True)
        self.src_embed = Embeddings(c.src_vocab_size, **emb)
        self.tgt_embed = Embeddings(c.tgt_vocab_size, word_dropout=c.word_dropout, **emb)
        if c.share_embeddings:
            self.tgt_embed.token = self.src_embed.token
        block = dict(
            d_model=c.d_model, n_heads=c.n_heads, d_ff=c.d_ff, norm_first=c.norm_first, norm_eps=c.norm_eps,
            activation=c.activation, dropout=c.dropout,
        )
        self.encoder = make_blocks(c.n_layers, **block)
        self.decoder = make_blocks(c.n_decoder_layers or c.n_layers, causal=True, cross_attention=True, **block)
        final_norm = lambda: make_norm("layer", c.d_model, c.norm_eps) if c.norm_first else nn.Identity()  # noqa: E731
        self.encoder_norm, self.decoder_norm = final_norm(), final_norm()
        self.out_proj = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        if c.tie_embeddings:
            self.out_proj.weight = self.tgt_embed.token.weight

    def _src_key_mask(self, src: Tensor, src_key_mask: Tensor | None) -> Tensor | None:
        check_tokens(src, self.config.src_vocab_size, "src")
        return resolve_key_mask(src, src_key_mask, self.config.pad_id, "src_key_mask")

    def encode(self, src: Tensor, src_key_mask: Tensor | None = None) -> Tensor:
        """src (B, S) -> memory (B, S, d_model). ``src_key_mask`` (B, S): True for real tokens (default
        ``src != pad_id`` when the config has a ``pad_id``)."""
        return self._encode(src, self._src_key_mask(src, src_key_mask))

    def _encode(self, src: Tensor, src_key_mask: Tensor | None) -> Tensor:
        # src and its key mask already checked
        x, _ = run_blocks(self.encoder, self.src_embed(src), attn_mask=key_to_attn_mask(src_key_mask))
        return self.encoder_norm(x)

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        src_key_mask: Tensor | None = None,
        tgt_key_mask: Tensor | None = None,
        cache: LMCache | None = None,
        src: Tensor | None = None,
    ) -> tuple[Tensor, LMCache | None]:
        """tgt (B, T) after the cached positions, memory (B, S, d_model) -> (logits (B, T, V), cache).

        ``src_key_mask`` (B, S) marks the real source positions (or pass ``src`` with ``pad_id`` set);
        ``tgt_key_mask`` (B, T) the real target positions (default ``tgt != pad_id`` with ``pad_id``
        set; ignored when decoding with a cache, where the new positions see the cached ones).
        """
        check_tokens(tgt, self.config.tgt_vocab_size, "tgt")
        check_same_batch(tgt=tgt, memory=memory)
        if src_key_mask is None and src is not None:
            src_key_mask = resolve_key_mask(src, None, self.config.pad_id, "src_key_mask")
        src_key_mask = check_key_mask(src_key_mask, *memory.shape[:2], name="src_key_mask")
        tgt_attn = None
        if cache is None:
            tgt_attn = key_to_attn_mask(resolve_key_mask(tgt, tgt_key_mask, self.config.pad_id, "tgt_key_mask"))
        x = self.tgt_embed(tgt, offset=cache_length(cache))
        x, cache = run_blocks(
            self.decoder, x, cache, layer_drop=self.config.decoder_layer_drop, attn_mask=tgt_attn, context=memory,
            context_attn_mask=key_to_attn_mask(src_key_mask),
        )
        return self.out_proj(self.decoder_norm(x)), cache

    def forward(
        self, src: Tensor, tgt: Tensor, src_key_mask: Tensor | None = None, tgt_key_mask: Tensor | None = None
    ) -> Tensor:
        """src (B, S), tgt (B, T) (the shifted-right target) -> logits (B, T, tgt_vocab_size).

        ``src_key_mask`` (B, S) and ``tgt_key_mask`` (B, T): True for real tokens (padding masks, not the
        causal mask, which the decoder applies itself).
        """
        src_key_mask = self._src_key_mask(src, src_key_mask)
        memory = self._encode(src, src_key_mask)
        return self.decode(tgt, memory, src_key_mask, tgt_key_mask)[0]

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
        **sampling,
    ) -> Tensor:
        """Translate ``src`` (B, S): target tokens (B, 1 + n) starting with ``bos_id``.

        Greedy by default; ``beam_size > 1`` for beam search; ``sampling`` (temperature, top_k, top_p,
        repetition_penalty, generator, on_token) goes to :func:`attnkit.generation.generate`.
        """
        check_sampling(beam_size=beam_size, max_new_tokens=max_new_tokens, length_penalty=length_penalty)
        src_key_mask = self._src_key_mask(src, src_key_mask)
        memory = self._encode(src, src_key_mask)
        start = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
        max_new_tokens = min(max_new_tokens, self.config.max_len - 1)
        if beam_size > 1:
            memory = memory.repeat_interleave(beam_size, 0)
            src_key_mask = None if src_key_mask is None else src_key_mask.repeat_interleave(beam_size, 0)
        step = lambda tokens, cache: self.decode(tokens, memory, src_key_mask, cache=cache)  # noqa: E731
        return search(step, start, max_new_tokens, beam_size=beam_size, eos_id=eos_id,
                      length_penalty=length_penalty, **sampling)
