"""Memory layouts and blocked helpers shared by the fused kernels and the functional paths (kernels import
nothing from ``attnkit.functional``, so these live here)."""

from __future__ import annotations

import torch
from torch import Tensor


def token_major(B: int, H: int, L: int, D: int, **kwargs) -> Tensor:
    """An uninitialised (B, H, L, D) tensor laid out as (B, L, H, D), so merging the heads afterwards is a
    view. ``kwargs`` (dtype, device) go to :func:`torch.empty`."""
    return torch.empty(B, L, H, D, **kwargs).permute(0, 2, 1, 3)  # (B, H, L, D) view of (B, L, H, D)


def row_dots(a: Tensor, b: Tensor, dtype: torch.dtype, max_elements: int) -> Tensor:
    """Dot products of the rows of a and b (B, H, L, D) -> (B, H, L), computed in ``dtype``, in blocks of
    tokens of at most ``max_elements`` products (at least one token), so the products are never held whole."""
    B, H, L, D = a.shape
    out = torch.empty(B, H, L, dtype=dtype, device=a.device)
    step = max(1, max_elements // (B * H * D))
    for t0 in range(0, L, step):
        t1 = t0 + step
        out[:, :, t0:t1] = torch.mul(a[:, :, t0:t1].to(dtype), b[:, :, t0:t1].to(dtype)).sum(-1)
    return out
