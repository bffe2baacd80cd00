"""Rotary position embedding (Su et al., RoFormer): rotate pairs of channels by position-dependent angles.

Channel i of the first half is paired with channel i of the second half (the layout of GPT-NeoX and
Llama in Hugging Face), and the pair is rotated by ``position * base^(-2i / d)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotary_angles(positions: Tensor, d_head: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles for integer ``positions`` (..., T): each (..., T, d_head)."""
    if d_head % 2:
        raise ValueError(f"rotary embeddings need an even d_head, got {d_head}")
    inv_freq = base ** (-torch.arange(0, d_head, 2, device=positions.device, dtype=torch.float32) / d_head)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., T, d_head / 2)
    angles = torch.cat([angles, angles], dim=-1)  # (..., T, d_head)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, T, D) by the angles whose cos/sin broadcast to it."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated_half = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated_half.float() * sin).to(x.dtype)
