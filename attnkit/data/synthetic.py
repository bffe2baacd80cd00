"""Synthetic tasks from the papers.

The duplication task (Kitaev, Kaiser & Levskaya 2020, "Reformer", section 5): sequences ``0 w 0 w``
with ``w`` drawn uniformly from the symbols ``1 .. vocab_size - 1``; a language model is scored on the
second copy of ``w`` only, which it can predict exactly by finding the same position in the first
copy, ``|w| + 1`` tokens back: a task that needs long-range attention and nothing else.
"""

from __future__ import annotations

import torch
from torch import Tensor


def duplication_sequences(
    n: int, length: int, vocab_size: int = 128, generator: torch.Generator | None = None
) -> Tensor:
    """(n, length) sequences ``0 w 0 w`` with ``|w| = length / 2 - 1`` symbols from [1, vocab_size)."""
    if length < 4 or length % 2:
        raise ValueError(f"length must be an even number >= 4, got {length}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 (symbol 0 separates the copies), got {vocab_size}")
    w = torch.randint(1, vocab_size, (n, length // 2 - 1), generator=generator)
    zero = torch.zeros(n, 1, dtype=torch.long)
    return torch.cat([zero, w, zero, w], dim=1)


def second_copy_targets(sequences: Tensor, ignore: int = -100) -> tuple[Tensor, Tensor]:
    """Language-model inputs and targets of duplication sequences (B, L): inputs ``seq[:, :-1]``, targets
    ``seq[:, 1:]`` with every target outside the second copy of ``w`` set to ``ignore``."""
    x, y = sequences[:, :-1], sequences[:, 1:].clone()
    half = sequences.shape[1] // 2
    y[:, :half] = ignore  # target t is token t + 1: the second w starts at token half + 1
    return x, y
