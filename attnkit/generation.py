"""Decoding: pick the next token from logits, and the loop that feeds it back through a cached step.

A model exposes a step ``step(tokens (B, t), cache) -> (logits (B, t, V), cache)``; ``cache=None``
starts from scratch. The loop only ever passes the new token, so each step costs O(t) attention.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

Step = Callable[[Tensor, Any], tuple[Tensor, Any]]


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Next token ids (B,) from logits (B, V): greedy at temperature 0, otherwise sampled from the
    temperature-scaled distribution restricted to the top-k tokens and/or the top-p nucleus."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    step: Step,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    eos_id: int | None = None,
    cache: Any = None,
    **sampling,
) -> Tensor:
    """Extend ``prompt`` (B, T) by up to ``max_new_tokens`` tokens -> (B, T + n).

    Sequences that produced ``eos_id`` keep emitting it; the loop stops when all have.
    ``sampling`` goes to :func:`sample_next` (temperature, top_k, top_p, generator).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    out = [prompt]
    if max_new_tokens == 0:
        return prompt
    logits, cache = step(prompt, cache)
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for i in range(max_new_tokens):
        token = sample_next(logits[:, -1], **sampling)  # (B,)
        if eos_id is not None:
            token = token.masked_fill(done, eos_id)
            done |= token == eos_id
        out.append(token[:, None])
        if i + 1 == max_new_tokens or (eos_id is not None and bool(done.all())):
            break
        logits, cache = step(token[:, None], cache)
    return torch.cat(out, dim=1)
