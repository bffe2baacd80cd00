"""T5's span-corruption objective (Raffel et al. 2020, section 3.1.4 and 3.3.4).

About 15% of a sequence's tokens, in spans of about 3 on average, are dropped from the input; each dropped
span is replaced there by one sentinel id, and the target lists each sentinel followed by the tokens
of its span:

    original  Thank you for inviting me to your party last week .
    inputs    Thank you <X> me to your party <Y> week .
    targets   <X> for inviting <Y> last

The sentinels are T5's extra ids, which count down from the top of the vocabulary (<extra_id_0> =
32099, <extra_id_1> = 32098, ... in T5's 32,100-id vocabulary).

How the spans are laid out, as T5's ``random_spans_noise_mask`` does: the number of noise tokens is
round(length * noise_density) (at least 1, at most length - 1), the number of spans round(noise /
mean_noise_span_length) (at least 1); the noise tokens and the kept tokens are each split into that many
non-empty runs, uniformly among all such splits, and the runs alternate, kept first. So spans never
touch, and a sequence starts with kept tokens and ends with a noise span.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class SpanCorruption(NamedTuple):
    """What :func:`span_corruption` returns."""

    inputs: Tensor  # (T_in,): the kept tokens, one sentinel in place of each noise span (then eos)
    targets: Tensor  # (T_out,): each sentinel followed by its span's tokens (then the final sentinel, eos)
    noise_mask: Tensor  # (T,) bool: True where the original token was moved from the inputs to the targets


def _is_integer(tokens: Tensor) -> bool:
    return not (tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool)


def random_segmentation(n_items: int, n_segments: int, generator: torch.Generator | None = None) -> Tensor:
    """Split ``n_items`` into ``n_segments`` non-empty runs, uniformly among all such splits: their lengths
    (n_segments,), summing to n_items. Needs 1 <= n_segments <= n_items."""
    # the runs end at n_segments - 1 distinct cut points chosen among the n_items - 1 gaps between items
    cuts = torch.randperm(n_items - 1, generator=generator)[: n_segments - 1].sort().values + 1
    ends = torch.cat([torch.zeros(1, dtype=torch.long), cuts, torch.tensor([n_items])])
    return ends.diff()


def random_spans(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                 generator: torch.Generator | None = None) -> Tensor:
    """The layout of the noise spans in a sequence of ``length`` tokens (see the module docstring):
    (n_spans, 2) run lengths, row i = (kept tokens before span i, tokens of span i)."""
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(round(n_noise / mean_noise_span_length), 1)
    n_spans = min(n_spans, length - n_noise)  # each span needs a kept token before it (only very dense noise)
    noise_lengths = random_segmentation(n_noise, n_spans, generator)
    kept_lengths = random_segmentation(length - n_noise, n_spans, generator)
    return torch.stack([kept_lengths, noise_lengths], dim=1)


def span_corruption(
    tokens: Tensor,
    *,
    first_sentinel_id: int,
    generator: torch.Generator | None = None,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    eos_id: int | None = None,
    final_sentinel: bool = False,
) -> SpanCorruption:
    """Corrupt one sequence of token ids with T5's span corruption.

    Args:
        tokens: (T,) integer token ids, T >= 2, without eos (it is appended here) and without sentinel ids.
        first_sentinel_id: the sentinel of the first span (T5: ``vocab_size - 1`` of its sentencepiece
            vocabulary, 32099); span i gets ``first_sentinel_id - i``.
        generator: the random generator: equal seeds give equal corruptions.
        noise_density: the fraction of tokens to drop (T5: 0.15).
        mean_noise_span_length: the average length of a dropped span (T5: 3).
        eos_id: if given, appended to both inputs and targets (T5 appends its eos, id 1).
        final_sentinel: also end the targets with the next sentinel, as the paper's Figure 2 draws (T5's
            code does not).

    Returns:
        ``SpanCorruption(inputs, targets, noise_mask)``; the tokens of ``tokens`` are those of ``inputs``
        where ``~noise_mask`` and those of ``targets`` where ``noise_mask``, each exactly once.

    Raises:
        ValueError, TypeError: naming the argument that is out of range or of the wrong type.
    """
    if not isinstance(tokens, Tensor) or not _is_integer(tokens):
        got = f"dtype {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
        raise TypeError(f"tokens must be a tensor of integer token ids, got {got}")
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be one sequence, shape (T,), got shape {tuple(tokens.shape)}")
    if tokens.numel() < 2:
        raise ValueError(f"tokens must hold at least 2 ids to corrupt (one kept, one dropped), got {tokens.numel()}")
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density!r}")
    if not mean_noise_span_length >= 1.0:
        raise ValueError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length!r}")
    runs = random_spans(tokens.numel(), noise_density, mean_noise_span_length, generator)  # (n_spans, 2)
    n_spans = runs.shape[0]
    last_sentinel = first_sentinel_id - n_spans + (0 if final_sentinel else 1)
    if last_sentinel < 0:
        raise ValueError(f"first_sentinel_id={first_sentinel_id} leaves no id for all {n_spans} sentinels of a "
                         f"sequence of {tokens.numel()} tokens; pass the top id of the vocabulary's extra ids")
    if ((tokens >= last_sentinel) & (tokens <= first_sentinel_id)).any():
        raise ValueError(f"tokens holds sentinel ids (in [{last_sentinel}, {first_sentinel_id}]), which would make "
                         "the targets ambiguous")

    pieces = tokens.split(runs.flatten().tolist())  # kept, span, kept, span, ...
    inputs, targets = [], []
    for i in range(n_spans):
        sentinel = tokens.new_tensor([first_sentinel_id - i])
        inputs += [pieces[2 * i], sentinel]
        targets += [sentinel, pieces[2 * i + 1]]
    if final_sentinel:
        targets.append(tokens.new_tensor([first_sentinel_id - n_spans]))
    if eos_id is not None:
        inputs.append(tokens.new_tensor([eos_id]))
        targets.append(tokens.new_tensor([eos_id]))
    noise = torch.tensor([False, True]).repeat(n_spans).repeat_interleave(runs.flatten()).to(tokens.device)
    return SpanCorruption(torch.cat(inputs), torch.cat(targets), noise)
