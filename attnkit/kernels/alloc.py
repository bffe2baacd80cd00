"""Memory layouts shared by the fused kernels and the functional paths (kernels import nothing from
``attnkit.functional``, so the allocator lives here)."""

from __future__ import annotations

import torch
from torch import Tensor


def token_major(B: int, H: int, L: int, D: int, **kwargs) -> Tensor:
    """An uninitialised (B, H, L, D) tensor laid out as (B, L, H, D), so merging the heads afterwards is a
    view. ``kwargs`` (dtype, device) go to :func:`torch.empty`."""
    return torch.empty(B, L, H, D, **kwargs).permute(0, 2, 1, 3)  # (B, H, L, D) view of (B, L, H, D)
