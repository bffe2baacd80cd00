"""Decoding: choose next tokens from logits, and the loops that feed them back through a cached step.

A model exposes a step ``step(tokens (B, t), cache) -> (logits (B, t, V), cache)``; ``cache=None``
starts from scratch. The loops only ever pass the new token, so each step costs O(t) attention.
Caches are nested lists/tuples of tensors and :class:`~attnkit.nn.KVCache` with the batch first;
beam search reorders them along that dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass, replace
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor

Step = Callable[[Tensor, Any], tuple[Tensor, Any]]


def _stop_ids(eos_id: int | Sequence[int] | None) -> list[int]:
    if eos_id is None:
        return []
    return [int(eos_id)] if isinstance(eos_id, int) else [int(i) for i in eos_id]


def check_prompt(tokens: Tensor, max_new_tokens: int, max_len: int) -> None:
    """A prompt must hold at least one token and leave room for the new ones within ``max_len``."""
    if tokens.shape[1] == 0:
        raise ValueError("tokens is empty: generation needs a prompt of at least one token")
    if tokens.shape[1] + max_new_tokens > max_len:
        raise ValueError(
            f"prompt ({tokens.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds max_len={max_len}; "
            "shorten the prompt or ask for fewer tokens"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def check_sampling(
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    beam_size: int = 1,
    max_new_tokens: int = 0,
    length_penalty: float = 1.0,
) -> None:
    """Reject bad decoding arguments with a ValueError that names the argument, what it must be and what
    it got. Every default is valid, so a caller passes just the arguments it takes. :func:`generate`,
    :func:`beam_search` and :func:`sample_next` call it. A model's ``generate`` should call it first with
    all its decoding arguments: it alone sees ``beam_size`` (which picks the loop) and the arguments of
    the loop it does not pick."""
    problems = (
        ("temperature", temperature, "a finite number >= 0", _is_finite(temperature) and temperature >= 0),
        ("top_k", top_k, "an int >= 1 or None", top_k is None or (_is_int(top_k) and top_k >= 1)),
        ("top_p", top_p, "a number in (0, 1] or None", top_p is None or (_is_finite(top_p) and 0 < top_p <= 1)),
        ("repetition_penalty", repetition_penalty, "a finite number > 0",
         _is_finite(repetition_penalty) and repetition_penalty > 0),
        ("beam_size", beam_size, "an int >= 1", _is_int(beam_size) and beam_size >= 1),
        ("max_new_tokens", max_new_tokens, "an int >= 0", _is_int(max_new_tokens) and max_new_tokens >= 0),
        ("length_penalty", length_penalty, "a finite number", _is_finite(length_penalty)),
    )
    for name, value, expected, ok in problems:
        if not ok:
            raise ValueError(f"{name} must be {expected}, got {value!r}")


def apply_repetition_penalty(logits: Tensor, previous: Tensor, penalty: float) -> Tensor:
    """CTRL's penalty (Keskar et al. 2019): logits of tokens already in ``previous`` (B, t) are divided
    by ``penalty`` when positive and multiplied by it when negative."""
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    seen = logits.gather(-1, previous)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, previous, seen)


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
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)
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
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    step: Step,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    eos_id: int | Sequence[int] | None = None,
    cache: Any = None,
    repetition_penalty: float = 1.0,
    on_token: Callable[[Tensor], None] | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Extend ``prompt`` (B, T) by up to ``max_new_tokens`` tokens -> (B, T + n).

    ``eos_id`` is a stop token id or a list of them: a sequence that produced one keeps repeating it,
    and the loop ends when all have. ``on_token`` is called with each new column (B,) (streaming).
    ``temperature``, ``top_k``, ``top_p`` and ``generator`` go to :func:`sample_next`. Bad arguments
    raise a ValueError (:func:`check_sampling`) before ``step`` is called.
    """
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                   max_new_tokens=max_new_tokens)
    if max_new_tokens == 0:
        return prompt
    stops = torch.tensor(_stop_ids(eos_id), dtype=torch.long, device=prompt.device)
    tokens = prompt
    logits, cache = step(prompt, cache)
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for i in range(max_new_tokens):
        scores = apply_repetition_penalty(logits[:, -1], tokens, repetition_penalty)
        token = sample_next(scores, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if stops.numel():
            token = torch.where(done, tokens[:, -1], token)  # finished rows repeat their stop token
            done |= torch.isin(token, stops)
        tokens = torch.cat([tokens, token[:, None]], dim=1)
        if on_token is not None:
            on_token(token)
        if i + 1 == max_new_tokens or bool(done.all()):
            break
        logits, cache = step(token[:, None], cache)
    return tokens


def reorder_cache(cache: Any, index: Tensor) -> Any:
    """Select batch rows ``index`` from every tensor in a (nested) cache."""
    if cache is None:
        return None
    if isinstance(cache, Tensor):
        return cache.index_select(0, index)
    if isinstance(cache, (int, float, str)):  # a setting stored beside the tensors (e.g. a bucket count)
        return cache
    if is_dataclass(cache):
        return replace(cache, **{f.name: reorder_cache(getattr(cache, f.name), index) for f in fields(cache)})
    if isinstance(cache, (list, tuple)):
        return type(cache)(reorder_cache(c, index) for c in cache)
    raise TypeError(f"cannot reorder a cache of type {type(cache).__name__}")


@torch.no_grad()
def beam_search(
    step: Step,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    beam_size: int = 4,
    eos_id: int | Sequence[int] | None = None,
    length_penalty: float = 1.0,
    cache: Any = None,
) -> Tensor:
    """Beam search over ``step``; ``prompt`` (B, T) -> the best continuation per row (B, T + n).

    Hypotheses are ranked by sum(log p) / length^length_penalty (length counts generated tokens);
    a hypothesis ends at a stop token, and a row is done when it has ``beam_size`` ended hypotheses
    that no live beam can beat. ``step`` must accept batches of B * beam_size rows: expand anything
    it closes over (encoder output, masks) with ``repeat_interleave(beam_size, 0)`` first.
    """
    check_sampling(beam_size=beam_size, max_new_tokens=max_new_tokens, length_penalty=length_penalty)
    stops = set(_stop_ids(eos_id))
    B, T = prompt.shape
    K = beam_size
    beams = prompt.repeat_interleave(K, dim=0)  # (B * K, T)
    scores = torch.full((B, K), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0  # all K copies are the same prompt: start from one of them
    logits, cache = step(beams, cache)
    finished: list[list[tuple[float, Tensor]]] = [[] for _ in range(B)]
    done = [False] * B
    for i in range(max_new_tokens):
        logp = logits[:, -1].float().log_softmax(dim=-1)  # (B * K, V)
        V = logp.shape[-1]
        total = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)
        top_scores, top_ids = total.topk(min(2 * K, K * V), dim=-1)  # (B, 2K)
        next_rows, next_tokens, next_scores = [], [], []
        for b in range(B):
            chosen = []
            for s, flat in zip(top_scores[b].tolist(), top_ids[b].tolist()):
                beam, token = divmod(flat, V)
                row = b * K + beam
                if token in stops and not done[b]:
                    hyp = torch.cat([beams[row], beams.new_tensor([token])])
                    finished[b].append((s / (i + 1) ** length_penalty, hyp))
                elif token not in stops and len(chosen) < K:
                    chosen.append((row, token, s))
                if len(chosen) == K:
                    break
            while len(chosen) < K:  # fewer live candidates than beams: keep dead copies
                chosen.append((b * K, next(iter(stops), 0), float("-inf")))
            finished[b].sort(key=lambda h: -h[0])
            del finished[b][K:]
            best_live = max(c[2] for c in chosen) / (i + 1) ** length_penalty
            if len(finished[b]) == K and (length_penalty <= 0 or finished[b][-1][0] >= best_live):
                done[b] = True
            for row, token, s in chosen:
                next_rows.append(row)
                next_tokens.append(token)
                next_scores.append(s if not done[b] else float("-inf"))
        index = torch.tensor(next_rows, device=prompt.device)
        beams = torch.cat([beams[index], torch.tensor(next_tokens, device=prompt.device)[:, None]], dim=1)
        scores = torch.tensor(next_scores, device=prompt.device).view(B, K)
        if all(done) or i + 1 == max_new_tokens:
            break
        logits, cache = step(beams[:, -1:], reorder_cache(cache, index))
    n_new = beams.shape[1] - T
    results = []
    for b in range(B):
        live = [
            (scores[b, k].item() / max(n_new, 1) ** length_penalty, beams[b * K + k])
            for k in range(K)
            if scores[b, k] > float("-inf")
        ]
        results.append(max(finished[b] + live, key=lambda h: h[0])[1])
    width = max(r.shape[0] for r in results)
    fill = next(iter(stops), 0)
    return torch.stack([torch.cat([r, r.new_full((width - r.shape[0],), fill)]) for r in results])


def search(step: Callable, tokens: Tensor, max_new_tokens: int, *, beam_size: int = 1,
           eos_id: int | Sequence[int] | None = None, length_penalty: float = 1.0, **sampling) -> Tensor:
    """Decode with one step function: :func:`beam_search` when ``beam_size > 1`` (the ``sampling``
    options do not apply to it), else :func:`generate` with the ``sampling`` options."""
    check_sampling(beam_size=beam_size, max_new_tokens=max_new_tokens, length_penalty=length_penalty)
    if beam_size == 1:
        return generate(step, tokens, max_new_tokens, eos_id=eos_id, **sampling)
    return beam_search(step, tokens, max_new_tokens, beam_size=beam_size, eos_id=eos_id,
                       length_penalty=length_penalty)
