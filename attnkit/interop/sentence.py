"""Sentence embeddings from an encoder: mean pooling over real tokens, then L2 normalization
(what sentence-transformers' all-MiniLM-L6-v2 pipeline, Transformer -> Pooling(mean) -> Normalize, does)."""

from __future__ import annotations

import torch
from torch import Tensor

from .tokenizer import encode


def sentence_embeddings(hidden: Tensor, key_mask: Tensor, normalize: bool = True) -> Tensor:
    """Mean of the hidden states over real tokens, L2-normalized if ``normalize``.

    Shape: hidden (B, T, d_model), key_mask (B, T) boolean (True = real token) -> (B, d_model).
    """
    m = key_mask.to(hidden.dtype)[..., None]  # (B, T, 1)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=-1) if normalize else pooled


def embed_sentences(
    model, tokenizer, texts: list[str], *, batch_size: int = 32, max_length: int = 256, normalize: bool = True
) -> Tensor:
    """Embed ``texts`` with an encoder -> (N, d_model), in the order given.

    Texts are batched by length (longest first), so that padding is short; ``max_length`` cuts long
    texts (sentence-transformers' ``max_seq_length``, 256 for all-MiniLM-L6-v2).
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got one str; wrap it in a list")
    if not texts:
        raise ValueError("texts is empty")
    with torch.inference_mode():
        emb = _embed(model, tokenizer, list(texts), batch_size, max_length, normalize)
    return emb.clone()  # outside inference mode: an ordinary tensor, usable with autograd


def _embed(model, tokenizer, texts, batch_size, max_length, normalize):
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    device = next(model.parameters()).device
    out = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        tokens, key_mask = encode(tokenizer, [texts[i] for i in idx], max_length=max_length)
        tokens, key_mask = tokens.to(device), key_mask.to(device)
        emb = sentence_embeddings(model(tokens, key_mask=key_mask), key_mask, normalize=normalize)
        for j, i in enumerate(idx):
            out[i] = emb[j]
    return torch.stack(out)
