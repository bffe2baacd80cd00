"""Scaled dot-product attention: the formula, and the fast path held equal to it.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V,   M[i, j] = -inf where i may not attend to j

Masks are boolean everywhere in attnkit, ``True`` meaning "may attend" (the polarity of
``torch.nn.functional.scaled_dot_product_attention``). A query row with no key it may attend to
gives a zero output (and zero gradient), never NaN. Two kinds, two names: an ``attn_mask`` broadcasts
to (.., T, S) (query by key); a ``key_mask`` is a (B, S) padding mask over the keys (True = real token),
checked by :func:`check_key_mask` and turned into an attention mask by :func:`key_to_attn_mask`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLS = ("auto", "reference", "sdpa")


def causal_mask(T: int, S: int | None = None, device=None) -> Tensor:
    """Boolean (T, S) mask, True where query i may attend to key j.

    With ``S > T`` (incremental decoding: T new queries after S - T cached keys) the queries are the
    last T positions, so query i sees keys ``j <= i + (S - T)``.
    """
    S = T if S is None else S
    if T < 0 or S < 0:
        raise ValueError(f"causal_mask: T and S must be >= 0, got T={T}, S={S}")
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def padding_mask(lengths: Tensor, S: int) -> Tensor:
    """Boolean (B, 1, 1, S) attention mask from sequence lengths: True for the first ``lengths[b]`` keys."""
    if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.is_floating_point():
        raise TypeError(f"padding_mask: lengths must be a 1-D integer tensor, got {_describe(lengths)}")
    if (lengths < 0).any() or (lengths > S).any():
        raise ValueError(f"padding_mask: lengths must lie in [0, S={S}], got {lengths.tolist()}")
    positions = torch.arange(S, device=lengths.device)
    return key_to_attn_mask(positions[None, :] < lengths[:, None])  # (B, 1, 1, S)


def check_key_mask(key_mask, B: int, S: int, name: str = "key_mask") -> Tensor | None:
    """Check a key padding mask: a boolean (B, S) tensor, True = real token. Returns it (None stays None).

    The one place attnkit validates a padding mask; :func:`key_to_attn_mask` turns it into an attention
    mask, and LSH attention takes it as it is.
    """
    if key_mask is None:
        return None
    if not isinstance(key_mask, Tensor):
        raise TypeError(f"{name} must be a boolean torch.Tensor (True = real token), got {_describe(key_mask)}")
    if key_mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a boolean tensor (True = real token), got dtype {key_mask.dtype}")
    if tuple(key_mask.shape) != (B, S):
        raise ValueError(
            f"{name} must be a key padding mask of shape (B, S) = ({B}, {S}), got shape {tuple(key_mask.shape)}"
            + (" (an attention mask (.., T, S) is not a key padding mask)" if key_mask.dim() > 2 else "")
        )
    return key_mask


def key_to_attn_mask(key_mask: Tensor | None) -> Tensor | None:
    """A (B, S) key padding mask as an attention mask (B, 1, 1, S): every query may attend to the real keys."""
    return None if key_mask is None else key_mask[:, None, None, :]


def dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    impl: str = "auto",
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Scaled dot-product attention over heads.

    Args:
        q: queries (B, H, T, D).
        k: keys (B, H_kv, S, D); ``H_kv`` divides ``H`` (grouped-query attention when smaller).
        v: values (B, H_kv, S, D_v).
        attn_mask: boolean attention mask, True = may attend, broadcastable to (B, H, T, S) (a (B, S) key
            padding mask becomes one by :func:`key_to_attn_mask`).
        causal: forbid attending to later positions; with ``T < S`` queries are aligned to the last
            T keys (decoding with a KV cache).
        dropout_p: dropout on the attention weights (the caller passes 0.0 in eval mode).
        scale: score scale, default ``1 / sqrt(D)``.
        impl: ``"reference"`` (the formula written out), ``"sdpa"`` (PyTorch's fused
            ``scaled_dot_product_attention``) or ``"auto"`` (the fast one).
        return_weights: also return the attention weights; this always uses the reference path,
            since the fused kernels never form the weights.

    Returns:
        (B, H, T, D_v) output, and with ``return_weights`` the (B, H, T, S) weights as well.
    """
    _check_qkv(q, k, v)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    B, H, T, D = q.shape
    S = k.shape[-2]
    if attn_mask is not None:
        _check_attn_mask(attn_mask, (B, H, T, S))
    scale = 1.0 / math.sqrt(D) if scale is None else scale

    if return_weights or impl == "reference":
        return _reference(q, k, v, attn_mask, causal, dropout_p, scale, return_weights)
    return _sdpa(q, k, v, attn_mask, causal, dropout_p, scale)


def _reference(q, k, v, mask, causal, dropout_p, scale, return_weights):
    B, H, T, _ = q.shape
    S = k.shape[-2]
    k, v = repeat_kv(k, H), repeat_kv(v, H)  # (B, H, S, D)
    allowed = _combined_mask(mask, causal, T, S, q.device)  # broadcastable to (B, H, T, S) or None
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if allowed is not None:
        # A row with no allowed key is all -inf and softmax gives NaN there; such a row attends to nothing.
        weights = weights.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v  # (B, H, T, D_v)
    return (out, weights) if return_weights else out


def _sdpa(q, k, v, mask, causal, dropout_p, scale):
    T, S = q.shape[-2], k.shape[-2]
    gqa = k.shape[1] != q.shape[1]
    if mask is None and (not causal or T == S):
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale, enable_gqa=gqa
        )
    allowed = _combined_mask(mask, causal, T, S, q.device)
    # Rows with nothing to attend to: let the kernel attend everywhere (finite, no NaN), then zero them.
    empty_row = ~allowed.any(dim=-1, keepdim=True)  # broadcastable to (B, H, T, 1)
    has_empty = bool(empty_row.any())
    if has_empty:
        allowed = allowed | empty_row
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=scale, enable_gqa=gqa
    )
    return out.masked_fill(empty_row, 0.0) if has_empty else out


def _combined_mask(mask, causal, T, S, device):
    if not causal:
        return mask
    c = causal_mask(T, S, device=device)  # (T, S)
    return c if mask is None else mask & c


def repeat_kv(x: Tensor, n_heads: int) -> Tensor:
    """(B, H_kv, S, D) -> (B, n_heads, S, D), each key/value head shared by n_heads / H_kv query heads."""
    groups = n_heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__}"


def _check_qkv(q, k, v):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {_describe(x)}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, T, D) (4 dims), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"q, k, v must share the batch size, got {q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share the head size D, got q D={q.shape[-1]} and k D={k.shape[-1]}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(
            f"k and v must share heads and length, got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"the number of key/value heads ({k.shape[1]}) must divide the query heads ({q.shape[1]})"
        )


def _check_attn_mask(mask, shape):
    if not isinstance(mask, Tensor):
        raise TypeError(f"attn_mask must be a boolean torch.Tensor, got {_describe(mask)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"attn_mask must be boolean (True = may attend), got dtype {mask.dtype}")
    ok = mask.dim() <= 4 and all(m in (1, s) for m, s in zip(mask.shape[::-1], shape[::-1]))
    if not ok:
        raise ValueError(
            f"attn_mask of shape {tuple(mask.shape)} does not broadcast to (B, H, T, S) = {tuple(shape)}"
        )
