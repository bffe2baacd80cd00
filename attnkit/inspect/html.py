"""Attention maps as one self-contained, interactive HTML file (no network access needed to open it).

The page (the template ``explorer.html`` next to this module, its JavaScript and CSS inline) has three
views: a head view (lines between query and key tokens, opacity = weight, for inputs of up to
:data:`HEAD_VIEW_LIMIT` tokens), a model view (every layer and head as a thumbnail; click one to enlarge
it into a heatmap with zoom, pan and a hover readout) and, for LSH layers, a bucket view (one strip per
hash round, tokens coloured by bucket, and the keys a chosen query meets in each round).

Everything is drawn on ``<canvas>``: long inputs (8,192 tokens and more) are embedded aggregated into
blocks (:meth:`AttentionMap.blocks`), so the page costs about the same at any length.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import torch

from .maps import AttentionMap
from .png import _check

TEMPLATE = Path(__file__).with_name("explorer.html")
FORMAT = "attnkit-explorer/1"
HEAD_VIEW_LIMIT = 200  # the head view draws a line per pair: inputs up to this many tokens a side
EXACT_LIMIT = 256  # inputs up to this many tokens a side are embedded unaggregated when the budget allows
CELL_BUDGET = 1 << 24  # weights embedded in all (one byte each before base64) when max_size is automatic
LONG_SIDE = 512  # the largest block grid a side when max_size is automatic


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.contiguous().numpy().tobytes()).decode("ascii")


def _sizes(maps: list[AttentionMap], max_size: int | None) -> list[int]:
    """The ``max_size`` each map is aggregated with."""
    if max_size is not None:
        return [max_size] * len(maps)
    heads = sum(len(m.heads) for m in maps)
    side = LONG_SIDE if heads * LONG_SIDE**2 <= CELL_BUDGET else max(64, math.isqrt(CELL_BUDGET // heads))
    short = [max(len(m.query_tokens), len(m.key_tokens)) <= EXACT_LIMIT for m in maps]
    exact_cells = sum(len(m.heads) * len(m.query_tokens) * len(m.key_tokens) for m, s in zip(maps, short) if s)
    fits = exact_cells <= CELL_BUDGET
    return [max(side, len(m.query_tokens), len(m.key_tokens)) if s and fits else side for m, s in zip(maps, short)]


def _layer(m: AttentionMap, max_size: int) -> dict:
    w, bq, bk = m.blocks(max_size)  # (H, nq, nk) float32
    H, nq, nk = w.shape
    top = w.flatten(1).amax(1).clamp_min(0)  # (H,)
    if not bool(torch.isfinite(top).all()):
        raise ValueError(f"{m.name}: the weights are not all finite")
    scaled = (w.clamp_min(0) / torch.where(top > 0, top, 1.0)[:, None, None]).sqrt()
    codes = (scaled * 255).round().clamp(0, 255).to(torch.uint8)
    same = list(m.key_tokens) == list(m.query_tokens)
    layer = {
        "name": m.name, "kind": m.kind, "heads": [int(h) for h in m.heads],
        "T": len(m.query_tokens), "S": len(m.key_tokens),
        "query_tokens": [str(t) for t in m.query_tokens],
        "key_tokens": None if same else [str(t) for t in m.key_tokens],
        "bq": bq, "bk": bk, "nq": nq, "nk": nk,
        "scale": [float(x) for x in top],
        "weights": [_b64(codes[h]) for h in range(H)],
        "causal": bool(m.causal), "attend_across_buckets": bool(m.attend_across_buckets),
        "n_hashes": m.n_hashes, "index_bytes": None, "buckets": None, "chunks": None,
    }
    if m.buckets is not None:
        found = [t for t in (m.buckets, m.chunks) if t is not None]
        top_index = max(int(t.max()) for t in found) if all(t.numel() for t in found) else 0
        if min(int(t.min()) for t in found if t.numel()) < 0:
            raise ValueError(f"{m.name}: buckets and chunks must be non-negative")
        size, dtype = ((1, torch.uint8) if top_index < 256 else (2, torch.int16) if top_index < 65536
                       else (4, torch.int32))
        layer["index_bytes"] = size
        for field, t in (("buckets", m.buckets), ("chunks", m.chunks)):
            if t is None:
                continue
            if tuple(t.shape) != (H, m.n_hashes, len(m.query_tokens)):
                raise ValueError(f"{m.name}: {field} must have shape (heads, n_hashes, T) = "
                                 f"{(H, m.n_hashes, len(m.query_tokens))}, got {tuple(t.shape)}")
            t = t.detach().cpu().long()
            if size == 2:  # uint16 as little-endian bytes: int16's bit pattern of values below 65536
                t = torch.where(t >= 32768, t - 65536, t)
            layer[field] = [_b64(t[h].to(dtype).reshape(-1)) for h in range(H)]
    return layer


def explorer_data(maps: list[AttentionMap], *, title: str = "attention", max_size: int | None = None) -> dict:
    """The data :func:`write_html` embeds in the page (a JSON-ready dict; see :func:`write_html`)."""
    if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
        raise ValueError(f"max_size must be a positive integer or None, got {max_size!r}")
    return {"format": FORMAT, "title": str(title), "head_view_limit": HEAD_VIEW_LIMIT,
            "layers": [_layer(m, s) for m, s in zip(maps, _sizes(maps, max_size))]}


def write_html(maps: list[AttentionMap], path, *, title: str = "attention", max_size: int | None = None) -> Path:
    """Writes an interactive attention explorer for ``maps`` (one per layer, for one input) to ``path``.

    One HTML file, the data inside it as JSON (``<script type="application/json" id="attn-data">``):
    ``{"format": "attnkit-explorer/1", "title", "head_view_limit", "layers": [...]}``, a layer being
    its ``name, kind, heads, T, S, query_tokens, key_tokens`` (null when the same as the queries),
    the block sizes ``bq, bk`` and grid ``nq, nk`` (1, 1 and T, S unless aggregated), per head a
    ``scale`` (the largest block weight) and ``weights``, base64 of nq * nk uint8 codes row-major,
    code = round(255 * sqrt(w / scale)) (so w = scale * (code / 255)^2); for LSH layers ``n_hashes``,
    ``causal``, ``attend_across_buckets`` and per head ``buckets`` and ``chunks``, base64 of
    n_hashes * T little-endian unsigned integers of ``index_bytes`` bytes each.

    ``max_size`` caps the blocks a side (None: every layer exact up to 256 tokens a side, else at most
    512 blocks a side, fewer when the model has more than 64 heads, about 16M weights in all).
    Returns ``path``.
    """
    path = _check(maps, path, (".html", ".htm"))
    data = explorer_data(maps, title=title, max_size=max_size)
    # JSON inside <script>: no "<", ">" or "&" survive as such, so the text can never close the tag
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    template = TEMPLATE.read_text(encoding="utf-8")
    head, sep, tail = template.partition("__ATTNKIT_DATA__")
    if not sep:
        raise RuntimeError(f"{TEMPLATE} has no __ATTNKIT_DATA__ placeholder")
    page = head.replace("__ATTNKIT_TITLE__", html.escape(str(title))) + text + tail
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


__all__ = ["write_html", "explorer_data"]
