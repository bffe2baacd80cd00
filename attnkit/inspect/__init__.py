"""Attention you can see: capture the weights of any attnkit model's attention layers for one input
(:func:`capture_attention`), then draw them as PNG heatmaps or an interactive, self-contained HTML
explorer."""

from .capture import attention_modules, capture_attention, recording, token_labels
from .maps import AttentionMap

__all__ = ["AttentionMap", "attention_modules", "capture_attention", "recording", "token_labels"]
