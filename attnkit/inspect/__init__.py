"""Attention you can see: capture the weights of any attnkit model's attention layers for one input
(:func:`capture_attention`), then draw them as PNG heatmaps (:func:`write_png`) or an interactive,
self-contained HTML explorer (:func:`write_html`)."""

from .capture import attention_modules, capture_attention, recording, token_labels
from .html import write_html
from .maps import AttentionMap
from .png import write_png

__all__ = [
    "AttentionMap", "attention_modules", "capture_attention", "recording", "token_labels", "write_html", "write_png",
]
