"""Positional encodings: fixed sinusoidal, learned, and rotary (applied inside attention)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..functional import apply_rotary, rotary_angles


class SinusoidalPositionalEncoding(nn.Module):
    """The fixed encoding of "Attention Is All You Need" (section 3.5):

        PE(pos, 2i) = sin(pos / 10000^(2i / d_model)),  PE(pos, 2i + 1) = cos(pos / 10000^(2i / d_model))

    Computed from the positions on the fly, so it has no parameters and no maximum length.
    """

    def __init__(self, d_model: int, base: float = 10000.0):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"sinusoidal encodings need an even d_model, got {d_model}")
        self.d_model, self.base = d_model, base

    def forward(self, positions: Tensor) -> Tensor:
        """positions (..., T) integer -> encodings (..., T, d_model)."""
        i = torch.arange(0, self.d_model, 2, device=positions.device, dtype=torch.float32)
        angles = positions.to(torch.float32)[..., None] * torch.exp(-math.log(self.base) * i / self.d_model)
        pe = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (..., T, d_model / 2, 2)
        return pe.flatten(-2)  # (..., T, d_model): sin at even channels, cos at odd


class LearnedPositionalEmbedding(nn.Module):
    """A trained vector per position, up to ``max_len`` positions (BERT, GPT-2)."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.empty(max_len, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, positions: Tensor) -> Tensor:
        """positions (..., T) integer -> embeddings (..., T, d_model)."""
        if positions.numel() and int(positions.max()) >= self.max_len:
            raise ValueError(
                f"position {int(positions.max())} is beyond max_len={self.max_len}; "
                "raise max_len in the config or shorten the input"
            )
        return self.weight[positions]


class RotaryEmbedding(nn.Module):
    """Rotary embedding as a module: rotates (B, H, T, d_head) queries or keys by their positions."""

    def __init__(self, d_head: int, base: float = 10000.0):
        super().__init__()
        self.d_head, self.base = d_head, base

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        cos, sin = rotary_angles(positions, self.d_head, self.base)
        return apply_rotary(x, cos, sin)
