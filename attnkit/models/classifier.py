"""Sequence classifiers built from a run config: a Transformer encoder or an ELMo-style BiLM with a
classification head, each with its config dataclass (the backbone's fields plus the head's).

Both can start from a pre-trained backbone: ``init_from`` names it (a run folder; see
:mod:`attnkit.runs.classify`, which copies the weights, since models know nothing of run folders).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..config import check_choice, check_dropout, check_positive
from .common import resolve_key_mask
from .elmo import BiLM, BiLMClassifier, BiLMConfig
from .encoder import SequenceClassificationHead, TransformerEncoder, TransformerEncoderConfig

POOLINGS = ("mean", "cls")


def _check_init_from(cfg) -> None:
    if cfg.init_from is not None and (not isinstance(cfg.init_from, str) or not cfg.init_from.strip()):
        raise ValueError(f"{type(cfg).__name__}.init_from must be None or a run folder's path, got {cfg.init_from!r}")


@dataclass
class EncoderClassifierConfig(TransformerEncoderConfig):
    """Configuration of :class:`TransformerEncoderForClassification`: the encoder's fields
    (:class:`TransformerEncoderConfig`) plus the head's.

    ``n_classes``: the labels. ``pooling``: "mean" over the real tokens or "cls" (the first position).
    ``classifier_dropout``: on the pooled vector. ``init_from``: a run folder of a masked-LM (or encoder
    classifier) run whose encoder weights the classifier starts from, or ``"hf:FOLDER"`` for a Hugging
    Face BERT folder; ``None``: random initialisation. The run operations apply it when training starts
    (:func:`attnkit.runs.build_model`); building the model here never reads it.
    """

    n_classes: int = 2
    pooling: str = "mean"
    classifier_dropout: float = 0.1
    init_from: str | None = None

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "n_classes")
        check_choice(self, "pooling", POOLINGS)
        check_dropout(self, "classifier_dropout")
        _check_init_from(self)


class TransformerEncoderForClassification(nn.Module):
    """A :class:`TransformerEncoder` with a :class:`SequenceClassificationHead`.

    ``forward(tokens, key_mask=None) -> logits (B, n_classes)``; ``key_mask`` (B, T), True for real
    tokens, defaults to ``tokens != pad_id`` when the config has a ``pad_id``.
    """

    def __init__(self, config: EncoderClassifierConfig):
        super().__init__()
        self.config = config
        self.encoder = TransformerEncoder(config)
        self.head = SequenceClassificationHead(config.d_model, config.n_classes, pooling=config.pooling,
                                               dropout=config.classifier_dropout)

    def forward(self, tokens: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """tokens (B, T) -> logits (B, n_classes)."""
        key_mask = resolve_key_mask(tokens, key_mask, self.config.pad_id)
        hidden = self.encoder(tokens, key_mask)  # (B, T, d_model)
        return self.head(hidden, key_mask)


@dataclass
class BiLMClassifierConfig(BiLMConfig):
    """Configuration of :class:`BiLMForClassification`: the BiLM's fields (:class:`BiLMConfig`, with
    ``d_embed == d_hidden`` so every layer can be mixed) plus the head's.

    ``n_classes``: the labels. ``classifier_dropout``: on the pooled vector. ``freeze_bilm``: train only
    the scalar mix and the head (ELMo's setting). ``init_from``: a run folder of a BiLM (or BiLM
    classifier) run whose BiLM weights the classifier starts from; ``None``: random initialisation.
    """

    n_classes: int = 2
    classifier_dropout: float = 0.1
    freeze_bilm: bool = False
    init_from: str | None = None

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "n_classes")
        check_dropout(self, "classifier_dropout")
        if self.d_embed != self.d_hidden:
            raise ValueError(f"BiLMClassifierConfig mixes every layer, which needs d_embed == d_hidden "
                             f"(got {self.d_embed} and {self.d_hidden}): make them equal")
        if not isinstance(self.freeze_bilm, bool):
            raise ValueError(f"BiLMClassifierConfig.freeze_bilm must be True or False, got {self.freeze_bilm!r}")
        _check_init_from(self)


class BiLMForClassification(BiLMClassifier):
    """:class:`BiLMClassifier` built from a :class:`BiLMClassifierConfig` (so a run config can name it):
    ScalarMix over the BiLM's layers, mean over the real tokens, dropout, a linear head.

    ``forward(tokens, key_mask=None) -> logits (B, n_classes)``; sequences are right-padded.
    """

    def __init__(self, config: BiLMClassifierConfig):
        super().__init__(BiLM(config), config.n_classes, freeze_bilm=config.freeze_bilm,
                         dropout=config.classifier_dropout)
        self.config = config
