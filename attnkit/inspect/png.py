"""Attention maps as PNG heatmaps (matplotlib, Agg): one head with its tokens on both axes, or a grid of
layers (rows) x heads (columns).

Long inputs are drawn from their weights aggregated into blocks (:meth:`AttentionMap.blocks`), so a picture
of an 8,192-token input costs no more than one of ``max_size`` tokens.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from .maps import AttentionMap

SUFFIXES = (".png", ".svg", ".pdf")
LABEL_LIMIT = 60  # at most this many tokens per side get their text as tick labels


def _top(w: Tensor, robust: bool) -> float:
    """The colour scale's top: the largest weight, or for aggregated maps (where the few blocks of the
    first queries, which have few keys to share their attention among, would wash out the rest) the
    99th percentile of the non-zero blocks."""
    positive = w[w > 0]
    if positive.numel() == 0:
        return 1.0
    return float(positive.float().quantile(0.99) if robust and positive.numel() <= 1 << 24 else positive.max())


def _display(token: str) -> str:
    """A token as a tick label: whitespace made visible, long tokens cut."""
    text = token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return text if len(text) <= 16 else text[:15] + "…"


def _check(maps: list[AttentionMap], path, suffixes: tuple[str, ...]) -> Path:
    if not isinstance(maps, (list, tuple)) or not maps:
        raise ValueError("maps must be a non-empty list of AttentionMap (nothing to draw)")
    for i, m in enumerate(maps):
        if not isinstance(m, AttentionMap):
            raise ValueError(f"maps[{i}] must be an AttentionMap, got {type(m).__name__}")
        if not m.heads:
            raise ValueError(f"maps[{i}] ({m.name!r}) has no heads")
        if not m.query_tokens or not m.key_tokens:
            raise ValueError(f"maps[{i}] ({m.name!r}) has no query or no key tokens")
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"path must end in one of {', '.join(suffixes)}, got {str(path)!r}")
    return path


def write_png(maps: list[AttentionMap], path, *, max_size: int = 256) -> Path:
    """Draws attention maps as heatmaps and writes them to ``path`` (.png; .svg and .pdf work too).

    One map with one head: a single heatmap, queries down, keys across, the tokens as tick labels when
    each side has at most 60 (else tick positions are token indices), a colourbar and the title
    "name, head h". Otherwise a grid, one row per map (layer) and one column per head, each small
    heatmap scaled to its own maximum. Inputs longer than ``max_size`` are aggregated into blocks
    (:meth:`AttentionMap.blocks`), their colour scale topped at the 99th percentile of the non-zero blocks.
    Returns ``path``.
    """
    path = _check(maps, path, SUFFIXES)
    if not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"max_size must be a positive integer, got {max_size!r}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("write_png needs matplotlib: `pip install matplotlib`") from None

    if len(maps) == 1 and len(maps[0].heads) == 1:
        fig = _single(Figure, maps[0], max_size)
    else:
        fig = _grid(Figure, maps, max_size)
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)
    return path


def _single(Figure, m: AttentionMap, max_size: int):
    T, S = len(m.query_tokens), len(m.key_tokens)
    w, bq, bk = m.blocks(max_size)
    labelled = T <= LABEL_LIMIT and S <= LABEL_LIMIT
    side = min(12.0, max(5.0, 0.2 * max(T, S) + 2.0)) if labelled else 8.0
    fig = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    blocked = (bq, bk) != (1, 1)
    top = _top(w[0], blocked)
    image = ax.imshow(w[0].numpy(), cmap="viridis", vmin=0.0, vmax=top, aspect="auto", interpolation="nearest",
                      extent=(-0.5, S - 0.5, T - 0.5, -0.5) if (bq, bk) == (1, 1) else (0, S, T, 0))
    if labelled:
        ax.set_xticks(range(S))
        ax.set_xticklabels([_display(t) for t in m.key_tokens], rotation=90, fontsize=8, parse_math=False)
        ax.set_yticks(range(T))
        ax.set_yticklabels([_display(t) for t in m.query_tokens], fontsize=8, parse_math=False)
    ax.set_xlabel("key" + ("" if (bq, bk) == (1, 1) else f" (blocks of {bk} tokens)"))
    ax.set_ylabel("query" + ("" if (bq, bk) == (1, 1) else f" (blocks of {bq} tokens)"))
    ax.set_title(f"{m.name}, head {m.heads[0]}", parse_math=False)
    fig.colorbar(image, ax=ax, label="attention weight" + (" (block)" if blocked else ""),
                 extend="max" if top < float(w[0].max()) else "neither")
    return fig


def _grid(Figure, maps: list[AttentionMap], max_size: int):
    rows, cols = len(maps), max(len(m.heads) for m in maps)
    cell = max(0.9, min(2.0, 14.0 / max(rows, cols)))
    fig = Figure(figsize=(cols * cell + 1.0, rows * cell + 0.6), dpi=100)
    fig.subplots_adjust(left=0.8 / (cols * cell + 1.0), right=0.99, bottom=0.02, top=1 - 0.45 / (rows * cell + 0.6),
                        wspace=0.06, hspace=0.06)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, m in enumerate(maps):
        w, bq, bk = m.blocks(max_size)
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(m.heads):
                ax.set_axis_off()
                continue
            ax.imshow(w[c].numpy(), cmap="viridis", vmin=0.0, vmax=_top(w[c], (bq, bk) != (1, 1)),
                      aspect="auto", interpolation="nearest")
            if r == 0 or len(maps[r - 1].heads) <= c:
                ax.set_title(f"head {m.heads[c]}", fontsize=8)
            if c == 0:
                name = m.name if len(m.name) <= 18 else "…" + m.name[-17:]
                ax.set_ylabel(f"{name}\n({m.kind})", fontsize=7, parse_math=False)
    return fig


__all__ = ["write_png"]
