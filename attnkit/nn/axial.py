"""Axial positional embeddings (Reformer; trax's AxialPositionalEncoding).

A learned table for 2^20 positions would dwarf the model. Axial embeddings lay the positions out on a
grid of ``shape = (n_1, n_2)`` (n_1 * n_2 >= max length) and learn one small table per axis:
position p = i * n_2 + j gets ``concat(E_1[i], E_2[j])``, with ``d_1 + d_2 = d_model`` channels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def axial_shape(max_len: int) -> tuple[int, int]:
    """A near-square (n_1, n_2) grid with n_1 * n_2 >= max_len, n_2 a power of two."""
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    n2 = 1 << max(0, math.ceil(math.log2(max_len)) // 2)
    return -(-max_len // n2), n2


class AxialPositionalEmbedding(nn.Module):
    """Learned axial positional embeddings.

    Args:
        d_model: width of the embedding.
        shape: the grid (n_1, n_2); the embedding covers n_1 * n_2 positions.
        dims: channels of each axis, summing to d_model; default half each (the first gets the odd one).
    """

    def __init__(self, d_model: int, shape: tuple[int, int], dims: tuple[int, int] | None = None):
        super().__init__()
        shape = tuple(shape)
        if len(shape) != 2 or any(not isinstance(n, int) or n < 1 for n in shape):
            raise ValueError(f"shape must be two positive ints (n_1, n_2), got {shape!r}")
        dims = (d_model - d_model // 2, d_model // 2) if dims is None else tuple(dims)
        if len(dims) != 2 or any(d < 1 for d in dims) or sum(dims) != d_model:
            raise ValueError(f"dims must be two positive ints summing to d_model={d_model}, got {dims!r}")
        self.d_model, self.shape, self.dims = d_model, shape, dims
        self.max_len = shape[0] * shape[1]
        self.rows = nn.Parameter(torch.empty(shape[0], dims[0]))  # E_1: (n_1, d_1)
        self.cols = nn.Parameter(torch.empty(shape[1], dims[1]))  # E_2: (n_2, d_2)
        nn.init.normal_(self.rows, std=0.02)
        nn.init.normal_(self.cols, std=0.02)

    def forward(self, positions: Tensor) -> Tensor:
        """positions (..., T) integer -> embeddings (..., T, d_model)."""
        if positions.is_floating_point():
            raise TypeError(f"positions must be integers, got dtype {positions.dtype}")
        if positions.numel() and (int(positions.max()) >= self.max_len or int(positions.min()) < 0):
            raise ValueError(
                f"positions must lie in [0, {self.max_len}) for the axial shape {self.shape}, got "
                f"[{int(positions.min())}, {int(positions.max())}]; enlarge the shape (or max_len)"
            )
        i, j = positions // self.shape[1], positions % self.shape[1]
        return torch.cat([self.rows[i], self.cols[j]], dim=-1)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, shape={self.shape}, dims={self.dims}"
