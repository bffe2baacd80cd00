"""The model families run configs can name: one entry each (model class, config class, task kind).

A new family is a file in ``attnkit/models/`` (the model and its config dataclass), one
:func:`register_model` call (or entry below) and a preset in ``attnkit/configs/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models import (
    ReformerConfig,
    ReformerLM,
    RNNSeq2Seq,
    RNNSeq2SeqConfig,
    Transformer,
    TransformerConfig,
    TransformerEncoderConfig,
    TransformerEncoderForMaskedLM,
    TransformerLM,
    TransformerLMConfig,
)
from .kinds import KINDS, TaskKind


@dataclass(frozen=True)
class ModelSpec:
    """A model family: ``model(config_instance)`` builds it; ``kind`` trains and scores it."""

    model: type
    config: type
    kind: TaskKind


MODELS: dict[str, ModelSpec] = {
    "TransformerLM": ModelSpec(TransformerLM, TransformerLMConfig, KINDS["lm"]),
    "ReformerLM": ModelSpec(ReformerLM, ReformerConfig, KINDS["lm"]),
    "TransformerEncoderForMaskedLM": ModelSpec(TransformerEncoderForMaskedLM, TransformerEncoderConfig, KINDS["mlm"]),
    "Transformer": ModelSpec(Transformer, TransformerConfig, KINDS["seq2seq"]),
    "RNNSeq2Seq": ModelSpec(RNNSeq2Seq, RNNSeq2SeqConfig, KINDS["seq2seq"]),
}


def register_model(name: str, model: type, config: type, kind: str) -> ModelSpec:
    """Make a model family available to run configs as ``[model] type = name``; ``kind`` is one of
    :data:`attnkit.runs.kinds.KINDS` ("lm", "mlm", "seq2seq", "classify", "bilm", "span", "text2text")."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    MODELS[name] = spec = ModelSpec(model, config, KINDS[kind])
    return spec
