"""Model families, each built from its config dataclass."""

from .encoder import (
    MaskedLMHead, SequenceClassificationHead, TransformerEncoder, TransformerEncoderConfig,
    TransformerEncoderForMaskedLM, mask_tokens,
)
from .lm import TransformerLM, TransformerLMConfig
from .reformer import Reformer, ReformerConfig, ReformerLM
from .rnn import RNNSeq2Seq, RNNSeq2SeqConfig
from .transformer import Transformer, TransformerConfig

__all__ = [
    "MaskedLMHead",
    "RNNSeq2Seq",
    "RNNSeq2SeqConfig",
    "Reformer",
    "ReformerConfig",
    "ReformerLM",
    "SequenceClassificationHead",
    "Transformer",
    "TransformerConfig",
    "TransformerEncoder",
    "TransformerEncoderConfig",
    "TransformerEncoderForMaskedLM",
    "TransformerLM",
    "TransformerLMConfig",
    "mask_tokens",
]
