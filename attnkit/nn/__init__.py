"""Thin modules that own parameters and call the functional core."""

from .attention import KVCache, MultiHeadAttention
from .block import BlockCache, TransformerBlock
from .layers import FeedForward, RMSNorm, make_norm
from .positional import LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEncoding

from torch.nn import LayerNorm

__all__ = [
    "BlockCache",
    "FeedForward",
    "KVCache",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "TransformerBlock",
    "make_norm",
]
