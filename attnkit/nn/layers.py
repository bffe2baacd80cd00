"""Norms and the position-wise feed-forward network."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu")


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * weight."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def make_norm(kind: str, d_model: int, eps: float) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(d_model, eps=eps)
    if kind == "rms":
        return RMSNorm(d_model, eps=eps)
    raise ValueError(f"norm must be 'layer' or 'rms', got {kind!r}")


def activation_fn(name: str):
    fns = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "swiglu": F.silu,
           "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}
    if name not in fns:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return fns[name]


class FeedForward(nn.Module):
    """Position-wise feed-forward: down(act(up(x))), or with ``activation="swiglu"`` the gated
    form down(silu(gate(x)) * up(x)) (Shazeer 2020).

    Shape: (..., d_model) -> (..., d_model).
    """

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "relu", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.act = activation_fn(activation)
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if activation == "swiglu" else None
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.gate(x)) * self.up(x) if self.gate is not None else self.act(self.up(x))
        return self.down(self.dropout(h))
