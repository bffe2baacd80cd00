"""Pieces shared by the model families: token and padding-mask checks, embeddings, a stack of blocks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..functional import check_key_mask
from ..nn import AxialPositionalEmbedding, LearnedPositionalEmbedding, SinusoidalPositionalEncoding, make_norm
from ..nn.axial import axial_shape as default_axial_shape
from ..nn.block import BlockCache, TransformerBlock

POSITIONALS = ("sinusoidal", "learned", "rotary", "none")  # the Transformer families' choices
EMBEDDING_POSITIONALS = (*POSITIONALS, "axial")  # what Embeddings builds (axial: the Reformer)


def check_tokens(tokens, vocab_size: int, name: str = "tokens") -> None:
    """Token ids must be a (B, T) integer tensor with every id in [0, vocab_size)."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.is_floating_point() or tokens.dtype == torch.bool or tokens.is_complex():
        raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {tokens.dtype}")
    if tokens.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T), got shape {tuple(tokens.shape)}")
    if tokens.numel():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            bad = hi if hi >= vocab_size else lo
            raise ValueError(f"{name} holds id {bad}, outside the vocabulary [0, {vocab_size})")


def resolve_key_mask(
    tokens: Tensor, key_mask: Tensor | None, pad_id: int | None = None, name: str = "key_mask"
) -> Tensor | None:
    """The (B, T) padding mask of ``tokens`` (True = real token): ``key_mask`` if given (checked against
    the tokens' shape), else ``tokens != pad_id`` when the model has a ``pad_id``, else None."""
    if key_mask is None and pad_id is not None:
        return tokens != pad_id
    return check_key_mask(key_mask, *tokens.shape, name=name)


def check_same_batch(**tensors: Tensor) -> None:
    sizes = {name: t.shape[0] for name, t in tensors.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch sizes differ: {sizes}")


class Embeddings(nn.Module):
    """Token embedding + positional encoding (+ token types, optional norm), then dropout (once).

    ``positional``: "sinusoidal", "learned", "axial" (the Reformer's, laid out on ``axial_shape``,
    default near-square for ``max_len``), "rotary" or "none"; rotary and "none" add nothing here
    (rotary acts inside attention). ``scale`` multiplies token embeddings by sqrt(d_model), as in the
    Transformer paper. ``word_dropout``: in training, each token's embedding is dropped whole (set to
    zero, the others scaled by 1 / (1 - p)) with this probability, its position kept (Gal & Ghahramani
    2016; on the target side, Sennrich & Zhang 2019 for low-resource translation).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        *,
        max_len: int,
        positional: str,
        dropout: float,
        scale: bool = False,
        n_token_types: int = 0,
        norm: str | None = None,
        norm_eps: float = 1e-5,
        axial_shape: tuple[int, int] | None = None,
        word_dropout: float = 0.0,
    ):
        super().__init__()
        if positional not in EMBEDDING_POSITIONALS:
            raise ValueError(f"positional must be one of {EMBEDDING_POSITIONALS}, got {positional!r}")
        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout!r}")
        self.word_dropout = word_dropout
        self.vocab_size, self.max_len = vocab_size, max_len
        self.token = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.token.weight, std=d_model**-0.5 if scale else 0.02)
        self.position = {
            "sinusoidal": lambda: SinusoidalPositionalEncoding(d_model),
            "learned": lambda: LearnedPositionalEmbedding(max_len, d_model),
            "axial": lambda: AxialPositionalEmbedding(d_model, axial_shape or default_axial_shape(max_len)),
        }.get(positional, lambda: None)()
        self.token_type = nn.Embedding(n_token_types, d_model) if n_token_types else None
        self.norm = make_norm(norm, d_model, norm_eps) if norm else None
        self.scale = math.sqrt(d_model) if scale else 1.0
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, offset: int = 0, token_types: Tensor | None = None) -> Tensor:
        """tokens (B, T) -> (B, T, d_model); ``offset`` is the position of the first token."""
        T = tokens.shape[1]
        if offset + T > self.max_len:
            raise ValueError(
                f"sequence reaches position {offset + T}, beyond max_len={self.max_len}; "
                "shorten the input or raise max_len in the config"
            )
        x = self.token(tokens) * self.scale  # (B, T, d_model)
        if self.training and self.word_dropout > 0:
            keep = torch.rand(tokens.shape, device=x.device) >= self.word_dropout  # (B, T): whole words
            x = x * keep.unsqueeze(-1).to(x.dtype) / (1.0 - self.word_dropout)
        if self.position is not None:
            x = x + self.position(torch.arange(offset, offset + T, device=tokens.device)).to(x.dtype)
        if self.token_type is not None:
            types = torch.zeros_like(tokens) if token_types is None else token_types
            x = x + self.token_type(types)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


@dataclass(frozen=True)
class LMCache:
    """The caches of a decoder stack, one :class:`~attnkit.nn.BlockCache` per layer (TransformerLM, and
    the Transformer's decoder). A dataclass, so that beam search can reorder it."""

    layers: tuple[BlockCache, ...]

    @property
    def length(self) -> int:
        """The number of positions the caches hold."""
        return self.layers[0].self_attn.length


def cache_length(cache: LMCache | None) -> int:
    return 0 if cache is None else cache.length


def run_blocks(
    blocks: nn.ModuleList, x: Tensor, cache: LMCache | None = None, layer_drop: float = 0.0, **kwargs
) -> tuple[Tensor, LMCache | None]:
    """Apply the blocks in order, threading each one's cache; ``kwargs`` go to every block.

    ``layer_drop``: in training (blocks in train mode, no cache), each block is skipped for the whole
    batch with this probability (LayerDrop, Fan et al. 2019); the cache returned is then None, since
    the skipped blocks have none.
    """
    new, dropping = [], layer_drop > 0 and cache is None and blocks.training
    for i, block in enumerate(blocks):
        if dropping and float(torch.rand(())) < layer_drop:
            new.append(None)
            continue
        x, layer = block(x, cache=None if cache is None else cache.layers[i], **kwargs)
        new.append(layer)
    return x, (None if None in new else LMCache(tuple(new)))


def make_blocks(n_layers: int, **block_args) -> nn.ModuleList:
    return nn.ModuleList(TransformerBlock(**block_args) for _ in range(n_layers))
