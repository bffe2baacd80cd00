"""Batching helpers: padding, length-bucketed batches for seq2seq, random windows for language models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None) -> Tensor:
    """Right-pad token lists into a (B, T) long tensor, T = ``length`` or the longest sequence."""
    if not len(seqs):
        raise ValueError("seqs is empty")
    longest = max(len(s) for s in seqs)
    T = longest if length is None else length
    if T < longest:
        raise ValueError(f"length={length} is shorter than the longest sequence ({longest})")
    out = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def token_batches(
    lengths: Sequence[int],
    max_tokens: int,
    *,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    max_batch_size: int | None = None,
) -> list[list[int]]:
    """Group example indices into batches of similar length holding at most ``max_tokens`` padded
    tokens each (batch size x longest length), so little compute goes to padding.

    With ``shuffle`` the examples are shuffled before a stable sort by length (so equal lengths mix
    differently each epoch) and the batch order is shuffled; without it batches run from short to long.
    Every index appears in exactly one batch; an example longer than ``max_tokens`` gets a batch of its own.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    n = len(lengths)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    order.sort(key=lambda i: lengths[i])
    batches, batch, longest = [], [], 0
    for i in order:
        new_longest = max(longest, lengths[i])
        full = max_batch_size is not None and len(batch) >= max_batch_size
        if batch and (new_longest * (len(batch) + 1) > max_tokens or full):
            batches.append(batch)
            batch, new_longest = [], lengths[i]
        batch.append(i)
        longest = new_longest
    if batch:
        batches.append(batch)
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def random_windows(
    data: Tensor, batch_size: int, length: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Language-model batch from a 1-D token tensor: inputs (B, length) at random offsets and the
    targets (B, length), the same windows shifted one token to the right."""
    if data.dim() != 1:
        raise ValueError(f"data must be a 1-D tensor of token ids, got shape {tuple(data.shape)}")
    if data.numel() < length + 1:
        raise ValueError(f"data has {data.numel()} tokens, fewer than length + 1 = {length + 1}")
    starts = torch.randint(0, data.numel() - length, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(length + 1)  # (B, length + 1)
    window = data[idx]
    return window[:, :-1], window[:, 1:]
