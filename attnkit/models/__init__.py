"""Model families, each built from its config dataclass."""

from .classifier import (
    BiLMClassifierConfig,
    BiLMForClassification,
    EncoderClassifierConfig,
    TransformerEncoderForClassification,
)
from .common import LMCache
from .elmo import BiLM, BiLMClassifier, BiLMConfig, BiLMOutput, ScalarMix
from .encoder import (
    MaskedLMHead,
    SequenceClassificationHead,
    TransformerEncoder,
    TransformerEncoderConfig,
    TransformerEncoderForMaskedLM,
)
from .lm import TransformerLM, TransformerLMConfig
from .reformer import Reformer, ReformerConfig, ReformerLM
from .rnn import RNNEncoding, RNNSeq2Seq, RNNSeq2SeqConfig, RNNState
from .t5 import T5, T5Config
from .transformer import Transformer, TransformerConfig

__all__ = [
    "BiLM",
    "BiLMClassifier",
    "BiLMClassifierConfig",
    "BiLMForClassification",
    "BiLMConfig",
    "BiLMOutput",
    "ScalarMix",
    "EncoderClassifierConfig",
    "LMCache",
    "MaskedLMHead",
    "RNNEncoding",
    "RNNSeq2Seq",
    "RNNSeq2SeqConfig",
    "RNNState",
    "Reformer",
    "ReformerConfig",
    "ReformerLM",
    "SequenceClassificationHead",
    "T5",
    "T5Config",
    "Transformer",
    "TransformerConfig",
    "TransformerEncoder",
    "TransformerEncoderConfig",
    "TransformerEncoderForClassification",
    "TransformerEncoderForMaskedLM",
    "TransformerLM",
    "TransformerLMConfig",
]
