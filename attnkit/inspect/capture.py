"""Capture the attention weights of any attnkit model for one input.

The normal forward never computes weights (SDPA and the LSH kernels do not return them). For the
duration of :func:`capture_attention` each attention module's forward is wrapped: it runs unchanged,
and beside it the weights are recomputed from the same queries and keys with the plain formula
(``dot_product_attention(impl="reference", return_weights=True)``; for LSH layers the sparse matrix
the hash rounds combine to, :func:`attnkit.functional.lsh_attention_weights`, with the same hash
seed). The wrappers are instance attributes removed on exit: nothing is left behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..functional import dot_product_attention
from ..functional.lsh import lsh_attention_weights
from ..nn import MultiHeadAttention
from ..nn.lsh import LSHSelfAttention
from .maps import AttentionMap


@dataclass
class _Record:
    name: str
    kind: str
    weights: list[Tensor] = field(default_factory=list)  # one per call: (B, H, T, S), dense or sparse
    buckets: Tensor | None = None
    chunks: Tensor | None = None
    causal: bool = False
    across: bool = False


def _is_attention(module: nn.Module) -> bool:
    from ..models.rnn import AdditiveAttention

    return isinstance(module, (MultiHeadAttention, LSHSelfAttention, AdditiveAttention))


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The attention modules of ``model`` in the order of ``named_modules`` (the layers' order)."""
    return [(name, m) for name, m in model.named_modules() if _is_attention(m)]


def _select(modules, layers) -> list[tuple[str, nn.Module]]:
    if layers is None:
        return modules
    names = [name for name, _ in modules]
    chosen = []
    for layer in layers:
        if isinstance(layer, int) and not isinstance(layer, bool):
            if not -len(modules) <= layer < len(modules):
                raise ValueError(f"layers: index {layer} is out of range: the model has {len(modules)} attention "
                                 f"layers ({', '.join(names)})")
            chosen.append(modules[layer])
        elif layer in names:
            chosen.append(modules[names.index(layer)])
        else:
            raise ValueError(f"layers: {layer!r} is neither an index nor an attention layer of the model "
                             f"({', '.join(names)})")
    return chosen


def _wrap_mha(module: MultiHeadAttention, record: _Record):
    forward = module.forward

    def wrapped(x, context=None, attn_mask=None, cache=None, impl="auto"):
        out = forward(x, context, attn_mask, cache, impl)
        q, k, v = module.project(x, context, cache)
        causal = module.causal and context is None and x.shape[1] > 1
        _, weights = dot_product_attention(q, k, v, attn_mask=attn_mask, causal=causal, impl="reference",
                                           return_weights=True)  # (B, H, T, S)
        record.kind = "cross" if context is not None else ("causal" if module.causal else "self")
        record.weights.append(weights.float())
        return out

    return "forward", wrapped


def _wrap_lsh(module: LSHSelfAttention, record: _Record):
    attend = module.attend

    def wrapped(qk, v, key_mask=None, seed=None):
        if seed is None and module.training:
            raise RuntimeError("capture_attention runs LSH layers in eval mode (a training-mode seed is random)")
        used_seed = module.eval_seed if seed is None else seed
        out = attend(qk, v, key_mask=key_mask, seed=used_seed)
        B, L, _ = qk.shape
        lsh = lsh_attention_weights(
            qk.view(B, L, module.n_heads, module.d_head).transpose(1, 2), n_hashes=module.n_hashes,
            bucket_size=module.bucket_size, causal=module.causal, key_mask=key_mask, seed=used_seed,
            n_buckets=module.n_buckets, attend_across_buckets=module.attend_across_buckets, dedup=module.dedup,
        )
        record.kind, record.causal, record.across = "lsh", module.causal, module.attend_across_buckets
        record.weights.append(lsh.weights)
        record.buckets, record.chunks = lsh.buckets, lsh.chunks
        return out

    return "attend", wrapped


def _wrap_additive(module: nn.Module, record: _Record):
    forward = module.forward

    def wrapped(s, keys_proj, keys, key_mask):
        context, weights = forward(s, keys_proj, keys, key_mask)
        record.kind = "cross"
        record.weights.append(weights.float()[:, None, None, :])  # one decoder step: (B, 1 head, 1, S)
        return context, weights

    return "forward", wrapped


@contextlib.contextmanager
def recording(model: nn.Module, layers: Sequence[int | str] | None = None) -> Iterator[list[_Record]]:
    """Within the block, every forward of the chosen attention layers also records its weights."""
    records, patched = [], []
    try:
        for name, module in _select(attention_modules(model), layers):
            record = _Record(name, "self")
            if isinstance(module, MultiHeadAttention):
                attr, fn = _wrap_mha(module, record)
            elif isinstance(module, LSHSelfAttention):
                attr, fn = _wrap_lsh(module, record)
            else:
                attr, fn = _wrap_additive(module, record)
            setattr(module, attr, fn)  # an instance attribute shadows the method until it is deleted
            patched.append((module, attr))
            records.append(record)
        yield records
    finally:
        for module, attr in patched:
            delattr(module, attr)


def _labels(tokens: Sequence[str] | None, n: int, what: str) -> list[str]:
    if tokens is None:
        return [str(i) for i in range(n)]
    if len(tokens) != n:
        raise ValueError(f"{what} has {len(tokens)} labels, but the layer sees {n} tokens")
    return list(tokens)


def _one(weights: Tensor, b: int, heads: list[int]) -> Tensor:
    index = torch.tensor(heads)
    if weights.is_sparse:
        return weights.coalesce().select(0, b).index_select(0, index).coalesce()
    return weights[b, index]


@torch.no_grad()
def capture_attention(model: nn.Module, *args: Any, tokens: Sequence[str] | None = None,
                      source_tokens: Sequence[str] | None = None, layers: Sequence[int | str] | None = None,
                      heads: Sequence[int] | None = None, batch_index: int = 0, **kwargs: Any) -> list[AttentionMap]:
    """Run ``model(*args, **kwargs)`` once in eval mode and return the attention of every attention layer
    (or the ``layers`` chosen by index or name) for sequence ``batch_index`` of the batch.

    Args:
        tokens: labels of the model's (decoder's) tokens; ``source_tokens`` those of the encoder's input
            (seq2seq models), used for the encoder's self-attention and as the keys of cross-attention.
        heads: which heads to keep (default all).

    Returns:
        one :class:`AttentionMap` per layer, in the model's order; queries and keys labelled.
    """
    was_training = model.training
    model.eval()
    try:
        with recording(model, layers) as records:
            model(*args, **kwargs)
    finally:
        model.train(was_training)
    maps = []
    for r in records:
        if not r.weights:
            continue  # a layer the forward did not use
        weights = r.weights[0] if len(r.weights) == 1 else torch.cat(r.weights, dim=2)  # decoder steps
        n_heads, T, S = weights.shape[1:]
        chosen = list(range(n_heads)) if heads is None else list(heads)
        if any(not 0 <= h < n_heads for h in chosen):
            raise ValueError(f"heads: {chosen} for layer {r.name}, which has heads 0..{n_heads - 1}")
        encoder_side = source_tokens is not None and r.kind in ("self", "lsh") and not r.causal
        query_labels = source_tokens if encoder_side else tokens
        key_labels = source_tokens if (encoder_side or r.kind == "cross") else tokens
        maps.append(AttentionMap(
            name=r.name, kind=r.kind, query_tokens=_labels(query_labels, T, "the query tokens"),
            key_tokens=_labels(key_labels, S, "the key tokens"), heads=chosen,
            weights=_one(weights, batch_index, chosen),
            buckets=None if r.buckets is None else r.buckets[batch_index, chosen],
            chunks=None if r.chunks is None else r.chunks[batch_index, chosen],
            causal=r.causal, attend_across_buckets=r.across,
        ))
    return maps


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own, for labels (a byte-level piece of a longer character may show as a
    replacement character); a special token, which decodes to nothing, shows as itself (e.g. [CLS])."""
    inner = getattr(tokenizer, "tokenizer", None)  # a Hugging Face tokenizer inside, if any
    labels = []
    for i in ids:
        text = tokenizer.decode([int(i)])
        if not text and inner is not None and hasattr(inner, "id_to_token"):
            text = inner.id_to_token(int(i)) or ""
        labels.append(text)
    return labels
