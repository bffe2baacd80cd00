"""Pieces shared by the model families: token checks, embeddings, a stack of blocks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..nn import LearnedPositionalEmbedding, SinusoidalPositionalEncoding, make_norm
from ..nn.block import BlockCache, TransformerBlock

POSITIONALS = ("sinusoidal", "learned", "rotary", "none")


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


def check_key_mask(mask, tokens: Tensor, name: str) -> Tensor | None:
    """A (B, T) boolean padding mask (True = real token) -> (B, 1, 1, T) attention mask."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a boolean tensor (True = real token), got {getattr(mask, 'dtype', type(mask))}")
    if mask.shape != tokens.shape:
        raise ValueError(f"{name} must have the tokens' shape {tuple(tokens.shape)}, got {tuple(mask.shape)}")
    return mask[:, None, None, :]  # (B, 1, 1, T)


def check_same_batch(**tensors: Tensor) -> None:
    sizes = {name: t.shape[0] for name, t in tensors.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch sizes differ: {sizes}")


class Embeddings(nn.Module):
    """Token embedding + positional encoding (+ token types, optional norm), then dropout.

    ``scale`` multiplies token embeddings by sqrt(d_model), as in the Transformer paper; rotary and
    "none" add nothing here (rotary acts inside attention).
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
    ):
        super().__init__()
        self.vocab_size, self.max_len = vocab_size, max_len
        self.token = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.token.weight, std=d_model**-0.5 if scale else 0.02)
        self.position = {
            "sinusoidal": lambda: SinusoidalPositionalEncoding(d_model),
            "learned": lambda: LearnedPositionalEmbedding(max_len, d_model),
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
        x = self.token(tokens) * self.scale
        if self.position is not None:
            x = x + self.position(torch.arange(offset, offset + T, device=tokens.device)).to(x.dtype)
        if self.token_type is not None:
            types = torch.zeros_like(tokens) if token_types is None else token_types
            x = x + self.token_type(types)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


def run_blocks(
    blocks: nn.ModuleList, x: Tensor, caches: list[BlockCache] | None = None, **kwargs
) -> tuple[Tensor, list[BlockCache]]:
    """Apply the blocks in order, threading each one's cache."""
    new_caches = []
    for i, block in enumerate(blocks):
        x, cache = block(x, cache=None if caches is None else caches[i], **kwargs)
        new_caches.append(cache)
    return x, new_caches


def make_blocks(n_layers: int, **block_args) -> nn.ModuleList:
    return nn.ModuleList(TransformerBlock(**block_args) for _ in range(n_layers))


def cache_length(caches) -> int:
    return 0 if caches is None else caches[0][0].length


class SavePretrainedMixin:
    """``save_pretrained(path)``: write the model as a Hugging Face folder (see attnkit.interop)."""

    def save_pretrained(self, path, *, tokenizer=None):
        """Write this model as a folder that transformers loads (config.json, safetensors, and the
        tokenizer if given). See :func:`attnkit.interop.save_pretrained`."""
        from ..interop import save_pretrained  # interop imports the models: import it when used

        return save_pretrained(self, path, tokenizer=tokenizer)
