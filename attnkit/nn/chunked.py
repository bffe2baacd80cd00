"""Position-wise layers run in slices of positions (Reformer, section 3, "Chunking").

A feed-forward layer's hidden activations are (L, d_ff), several times the size of its input; a
language model's logits are (L, vocab). Position-wise computations can run on slices of the sequence
one after the other: when gradients are needed, each slice is checkpointed (only its input is kept,
and its activations are rebuilt in backward one slice at a time), so at most one slice's activations
are alive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .layers import FeedForward, make_norm


def run_chunked(fn, x: Tensor, chunks: int, dim: int = -2):
    """``fn`` applied to ``chunks`` slices of x along ``dim`` and concatenated; ``fn`` must be
    position-wise along ``dim`` and return a tensor or a tuple of tensors (each concatenated).
    Checkpointed per slice when gradients are being recorded."""
    if chunks <= 1 or x.shape[dim] <= 1:
        return fn(x)
    pieces = x.chunk(chunks, dim=dim)
    if torch.is_grad_enabled():
        outs = [checkpoint(fn, p, use_reentrant=False) for p in pieces]
    else:
        outs = [fn(p) for p in pieces]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts, dim=dim) for parts in zip(*outs))
    return torch.cat(outs, dim=dim)


class ChunkedFeedForward(nn.Module):
    """Pre-norm feed-forward branch, ``dropout(FF(norm(x)))``, run in ``chunks`` slices of positions.

    Shape: (B, L, d_model) -> (B, L, d_model). ``norm=None`` leaves out the norm. A reversible stack
    runs such a position-wise branch slice by slice itself (``chunks`` and ``forward_chunk``).
    """

    position_wise = True

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        chunks: int = 1,
        activation: str = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
        norm: str | None = "layer",
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if not isinstance(chunks, int) or chunks < 1:
            raise ValueError(f"chunks must be a positive int, got {chunks!r}")
        self.chunks = chunks
        self.norm = make_norm(norm, d_model, norm_eps) if norm else nn.Identity()
        self.ff = FeedForward(d_model, d_ff, activation=activation, dropout=dropout, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward_chunk(self, x: Tensor) -> Tensor:
        return self.dropout(self.ff(self.norm(x)))

    def forward(self, x: Tensor, **_) -> Tensor:
        return run_chunked(self.forward_chunk, x, self.chunks)


class TokenLoss(NamedTuple):
    """A summed token loss and the number of tokens it counts (what a model computing its own loss
    returns, so that losses over micro-batches and processes add up before the one division).

    ``sum``: float 0-dim tensor (with grad); ``count``: 0-dim long tensor. The mean is ``sum / count``.
    """

    sum: Tensor
    count: Tensor


def chunked_cross_entropy(
    hidden: Tensor,
    head: Callable[[Tensor], Tensor],
    targets: Tensor,
    *,
    chunks: int = 1,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy of ``head(hidden)`` against ``targets``, never holding all the logits at once.

    Args:
        hidden: (B, L, d_model) final hidden states.
        head: the output projection (a module or function), (..., d_model) -> (..., vocab).
        targets: (B, L) token ids; ``ignore_index`` marks positions left out of the loss.
        chunks: slices of positions; each slice's logits are rebuilt in backward.
        reduction: "mean" over the counted positions, or "sum".
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy` (0 = none).

    Returns:
        the scalar loss, computed in float32 (float64 for float64 inputs).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets must have shape {tuple(hidden.shape[:-1])}, got {tuple(targets.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")

    def piece_loss(h: Tensor, t: Tensor) -> Tensor:
        logits = head(h)  # (B, l, vocab)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return F.cross_entropy(
            logits.flatten(0, 1), t.flatten(), ignore_index=ignore_index, reduction="sum",
            label_smoothing=label_smoothing,
        )

    if chunks <= 1:
        total = piece_loss(hidden, targets)
    else:
        total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
        for h, t in zip(hidden.chunk(chunks, dim=1), targets.chunk(chunks, dim=1)):
            if torch.is_grad_enabled():
                total = total + checkpoint(piece_loss, h, t, use_reentrant=False)
            else:
                total = total + piece_loss(h, t)
    if reduction == "sum":
        return total
    return total / (targets != ignore_index).sum().clamp_min(1)
