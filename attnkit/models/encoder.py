"""Encoder-only Transformer (BERT-style bidirectional self-attention) with masked-LM and classification heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import Config, check_choice, check_dropout, check_heads, check_positive
from ..functional import check_key_mask, key_to_attn_mask
from ..nn import make_norm
from ..nn.layers import ACTIVATIONS, activation_fn
from .common import POSITIONALS, Embeddings, check_tokens, make_blocks, resolve_key_mask, run_blocks


@dataclass
class TransformerEncoderConfig(Config):
    """Configuration of :class:`TransformerEncoder`, a bidirectional (BERT-style) encoder.

    ``n_token_types``: segment embeddings added to the tokens (BERT: 2; 0 for none). ``embed_norm``:
    LayerNorm the summed embeddings (BERT does). ``norm_first``: pre-norm with a final norm, or post-norm
    (BERT: False). ``pad_id``: when set, a missing ``key_mask`` is derived as ``tokens != pad_id``.
    ``positional``: "learned" or "sinusoidal" (or "none"); rotary is not supported here.
    """

    vocab_size: int = 8000
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 1024
    max_len: int = 512
    dropout: float = 0.1
    positional: str = "learned"
    n_token_types: int = 0  # BERT's segment embeddings (2); 0 for none
    embed_norm: bool = False  # BERT normalizes the summed embeddings
    norm_first: bool = True  # BERT is post-norm (False)
    norm_eps: float = 1e-5
    activation: str = "gelu"
    pad_id: int | None = None

    def __post_init__(self):
        check_positive(self, "vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_len")
        check_heads(self)
        check_dropout(self, "dropout")
        check_choice(self, "positional", POSITIONALS)
        check_choice(self, "activation", ACTIVATIONS)
        if self.positional == "rotary":
            raise ValueError(
                "TransformerEncoderConfig.positional: rotary is not supported here; use learned or sinusoidal"
            )
        if self.n_token_types < 0:
            raise ValueError(f"n_token_types must be >= 0, got {self.n_token_types}")


class TransformerEncoder(nn.Module):
    """Bidirectional encoder: every position attends to every (unpadded) position.

    ``forward(tokens, key_mask=None) -> hidden states (B, T, d_model)``; put a :class:`MaskedLMHead` or
    a :class:`SequenceClassificationHead` on top. :func:`attnkit.interop.load_pretrained` loads
    BERT-family weights into one.
    """

    def __init__(self, config: TransformerEncoderConfig):
        super().__init__()
        c = self.config = config
        self.embed = Embeddings(
            c.vocab_size, c.d_model, max_len=c.max_len, positional=c.positional, dropout=c.dropout,
            n_token_types=c.n_token_types, norm="layer" if c.embed_norm else None, norm_eps=c.norm_eps,
        )
        self.blocks = make_blocks(
            c.n_layers, d_model=c.d_model, n_heads=c.n_heads, d_ff=c.d_ff, norm_first=c.norm_first,
            norm_eps=c.norm_eps, activation=c.activation, dropout=c.dropout,
        )
        self.norm = make_norm("layer", c.d_model, c.norm_eps) if c.norm_first else nn.Identity()

    def forward(
        self, tokens: Tensor, key_mask: Tensor | None = None, token_types: Tensor | None = None
    ) -> Tensor:
        """tokens (B, T) -> hidden states (B, T, d_model); ``key_mask`` (B, T) is True for real tokens
        (default ``tokens != pad_id`` when the config has a ``pad_id``)."""
        check_tokens(tokens, self.config.vocab_size)
        attn_mask = key_to_attn_mask(resolve_key_mask(tokens, key_mask, self.config.pad_id))  # (B, 1, 1, T)
        if token_types is not None:
            check_tokens(token_types, max(self.config.n_token_types, 1), "token_types")
        x, _ = run_blocks(self.blocks, self.embed(tokens, token_types=token_types), attn_mask=attn_mask)
        return self.norm(x)


class MaskedLMHead(nn.Module):
    """BERT's prediction head: dense, activation, layer norm, then a projection to the vocabulary
    (pass ``embedding`` to tie it to the input embedding)."""

    def __init__(self, d_model: int, vocab_size: int, *, activation: str = "gelu", norm_eps: float = 1e-5,
                 embedding: nn.Embedding | None = None):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.act = activation_fn(activation)
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.decoder = nn.Linear(d_model, vocab_size)
        if embedding is not None:
            self.decoder.weight = embedding.weight

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, T, d_model) -> logits (B, T, vocab_size)."""
        return self.decoder(self.norm(self.act(self.dense(hidden))))


class TransformerEncoderForMaskedLM(nn.Module):
    """A :class:`TransformerEncoder` with a :class:`MaskedLMHead` tied to its token embedding:
    ``forward(tokens, key_mask=None) -> logits (B, T, vocab_size)`` for masked-LM pre-training;
    ``forward(tokens, positions=chosen)`` with a boolean (B, T) ``chosen`` -> logits (N, vocab_size) at
    the N chosen positions only, in row-major order (the head's vocabulary projection is the costliest
    layer of a small encoder, and the loss needs it at 15% of the positions)."""

    def __init__(self, config: TransformerEncoderConfig):
        super().__init__()
        self.config = config
        self.encoder = TransformerEncoder(config)
        self.head = MaskedLMHead(config.d_model, config.vocab_size, activation=config.activation,
                                 norm_eps=config.norm_eps, embedding=self.encoder.embed.token)

    def forward(self, tokens: Tensor, key_mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        hidden = self.encoder(tokens, key_mask)  # (B, T, d_model)
        if positions is not None:
            if positions.dtype != torch.bool or positions.shape != tokens.shape:
                raise ValueError(f"positions must be a boolean tensor of the tokens' shape {tuple(tokens.shape)}, "
                                 f"got {positions.dtype} {tuple(positions.shape)}")
            hidden = hidden[positions]  # (N, d_model)
        return self.head(hidden)


class SequenceClassificationHead(nn.Module):
    """Pools the hidden states ("cls": the first position; "mean": mean over real tokens) and classifies."""

    def __init__(self, d_model: int, n_classes: int, *, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, n_classes)

    def forward(self, hidden: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """hidden (B, T, d_model), key_mask (B, T) (True = real token) -> logits (B, n_classes)."""
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            key_mask = check_key_mask(key_mask, *hidden.shape[:2])
            m = torch.ones(hidden.shape[:2], device=hidden.device) if key_mask is None else key_mask.to(hidden.dtype)
            pooled = (hidden * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        return self.classifier(self.dropout(pooled))

