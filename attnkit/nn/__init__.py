"""Thin modules that own parameters and call the functional core."""

from torch.nn import LayerNorm

from .attention import AttentionOutput, KVCache, MultiHeadAttention
from .axial import AxialPositionalEmbedding
from .block import BlockCache, TransformerBlock
from .chunked import ChunkedFeedForward, TokenLoss, chunked_cross_entropy
from .layers import FeedForward, RMSNorm, make_norm
from .lsh import LSHSelfAttention, lsh_settings
from .positional import LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEncoding
from .reversible import ReversibleSequence

__all__ = [
    "AttentionOutput",
    "AxialPositionalEmbedding",
    "BlockCache",
    "ChunkedFeedForward",
    "FeedForward",
    "KVCache",
    "LSHSelfAttention",
    "lsh_settings",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "RMSNorm",
    "ReversibleSequence",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "TokenLoss",
    "TransformerBlock",
    "chunked_cross_entropy",
    "make_norm",
]
