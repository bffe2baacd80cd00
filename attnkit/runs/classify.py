"""The ``classify`` task kind: a label for each text (WordNet glosses: part of speech, lexicographer
file), scored by accuracy and macro-F1 on the test split; starting a classifier from a pre-trained run
(``[model] init_from``); and the ``bilm`` kind that pre-trains the ELMo-style BiLM on a text corpus.

Fine-tuning: ``init_from`` names the run folder of a masked-LM run (its encoder), of a BiLM run (the
BiLM), of another classifier run of the same family (its backbone), or, for the encoder classifier,
``"hf:FOLDER"``, a Hugging Face BERT folder (e.g. all-MiniLM-L6-v2). Then

- the tokenizer is the pre-trained model's, not a new one, so that token ids agree (``data.tokenizer``
  must name its kind: the source run's own, or a subword kind for a Hugging Face folder);
- the backbone's shape (widths, depth, vocabulary, positions, norms; every field of its config but
  ``dropout`` and ``pad_id``) is the pre-trained model's: the [model] values for those fields are
  replaced, so a preset fine-tunes any compatible run; the head (``n_classes``, ``pooling``,
  ``classifier_dropout``, ``freeze_bilm``) and the dropout stay as configured;
- when training starts (not on resume, which reads its own checkpoint) the backbone's weights are
  copied from the pre-trained model (:func:`load_backbone`).

The pre-trained run must still be there when the run is resumed or described (its shape is read from
it); evaluating and using the trained run need only its own folder.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..data import CLASSIFICATION_CORPORA
from ..data.wordnet import TextClassification
from ..errors import UsageError
from ..models import (
    BiLM,
    BiLMClassifierConfig,
    BiLMConfig,
    BiLMForClassification,
    EncoderClassifierConfig,
    TransformerEncoder,
    TransformerEncoderConfig,
    TransformerEncoderForClassification,
)
from ..train.classification import BiLMTask, ClassificationTask, collate, subsample
from .kinds import KINDS, Evaluation, TaskKind, _TextKind, _unit
from .registry import register_model

HF_PREFIX = "hf:"
HF_SPECIALS = ("[PAD]", "[CLS]", "[SEP]")  # BERT's, in the roles of <pad>, <bos>, <eos>
_OWN_FIELDS = {"dropout", "pad_id"}  # backbone fields that stay the classifier's own


@functools.lru_cache(maxsize=2)
def _splits(corpus: str) -> dict[str, TextClassification]:
    try:
        return CLASSIFICATION_CORPORA[corpus]()
    except FileNotFoundError as e:  # WordNet's files not installed
        raise UsageError(f"data.corpus = {corpus!r}: {e}") from None


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if hasattr(tokenizer, "encode_batch"):
        return tokenizer.encode_batch(texts)
    return [tokenizer.encode(t) for t in texts]


class ClassificationKind(TaskKind):
    """A label for each text of a classification corpus (:data:`attnkit.data.CLASSIFICATION_CORPORA`)."""

    def pretrained_tokenizer(self, init_from: str, data):
        return pretrained_tokenizer(init_from, data)

    def load_pretrained(self, model, init_from: str) -> None:
        load_backbone(model, init_from)

    name, noun, command = "classify", "text classifier", None
    data_fields = {"vocab_size": "the tokenizer's vocabulary", "n_classes": "the corpus's labels",
                   "pad_id": "the tokenizer's <pad>"}

    def describe(self, data) -> str:
        return f"a text classifier of {data.corpus}"

    def check_data(self, model_type, data):
        if data.corpus not in CLASSIFICATION_CORPORA:
            raise UsageError(f"{model_type} is a text classifier: data.corpus must be a classification corpus "
                             f"({', '.join(CLASSIFICATION_CORPORA)}), got {data.corpus!r}")
        if data.tokenizer == "ids":
            raise UsageError(f"{model_type} reads text: data.tokenizer = \"ids\" is for synthetic tasks of token ids; "
                             "use wordpiece, bpe, unigram, byte or char")

    def training_split(self, data) -> TextClassification:
        """The training examples a run trains on: all, or the ``data.train_examples`` of :func:`subsample`."""
        train = _splits(data.corpus)["train"]
        keep = subsample(len(train.texts), data.train_examples, data.seed)
        if len(keep) == len(train.texts):
            return train
        return TextClassification([train.texts[i] for i in keep], [train.labels[i] for i in keep], train.label_names)

    def tokenizer_texts(self, data):
        return self.training_split(data).texts

    def resolve(self, config_cls, values, data, tokenizer):
        values = dict(values)
        vocab = tokenizer.vocab_size
        if values.get("init_from"):
            shape = backbone_fields(config_cls, values["init_from"])
            vocab = shape["vocab_size"]
            if vocab < tokenizer.vocab_size:
                raise UsageError(f"model.init_from = {values['init_from']!r}: its vocabulary ({vocab}) is smaller "
                                 f"than its tokenizer's ({tokenizer.vocab_size})")
            if data.max_len > shape.get("max_len", data.max_len):
                raise UsageError(f"model.init_from = {values['init_from']!r} reads at most {shape['max_len']} "
                                 f"tokens: set data.max_len <= {shape['max_len']}, got {data.max_len}")
            values.update(shape)
        names = {f.name for f in fields(config_cls)}
        fixed = {"vocab_size": vocab, "n_classes": len(_splits(data.corpus)["train"].label_names),
                 "pad_id": getattr(tokenizer, "pad_id", None)}
        default = {"max_len": data.max_len} if "max_len" in names else {}  # a BiLM reads any length
        return {**default, **values, **{k: v for k, v in fixed.items() if k in names}}

    def build_task(self, data, tokenizer) -> ClassificationTask:
        train, valid = self.training_split(data), _splits(data.corpus)["validation"]
        return ClassificationTask(
            (_encode(tokenizer, train.texts), train.labels), (_encode(tokenizer, valid.texts), valid.labels),
            n_classes=len(train.label_names), pad_id=_pad(tokenizer), batch_size=data.batch_size,
            max_len=data.max_len, seed=data.seed, eval_batches=data.eval_batches,
        )

    @torch.no_grad()
    def evaluate(self, model, tokenizer, data, *, limit: int | None = None, show: int = 5, **_) -> Evaluation:
        """Accuracy and macro-F1 on the test split (or ``limit`` of its examples, spread evenly over it:
        WordNet's run part of speech by part of speech), beside the accuracy of always answering the
        training split's most frequent label; ``show`` examples spread evenly."""
        test, train = _splits(data.corpus)["test"], _splits(data.corpus)["train"]
        total = len(test.texts)
        n = min(limit or total, total)
        rows = [i * total // n for i in range(n)]
        texts, labels, names = [test.texts[i] for i in rows], [test.labels[i] for i in rows], test.label_names
        ids = [s[: data.max_len] for s in _encode(tokenizer, texts)]
        model.eval()
        device = next(model.parameters()).device
        predicted, B = [], data.batch_size
        for i in range(0, n, B):
            tokens, key_mask, _ = collate(ids[i : i + B], labels[i : i + B], _pad(tokenizer))
            predicted += model(tokens.to(device), key_mask.to(device)).argmax(-1).tolist()  # (B,)
        scores = classification_scores(predicted, labels, len(names))
        majority = max(range(len(names)), key=train.labels.count)
        baseline = sum(y == majority for y in labels) / max(n, 1)
        lines = [f"{data.corpus} test examples: {n:,}; accuracy {100 * scores['accuracy']:.1f}%; macro-F1 "
                 f"{100 * scores['macro_f1']:.1f}% (always {names[majority]}: {100 * baseline:.1f}%)"]
        step = max(1, n // max(show, 1))
        examples = [(texts[i], names[predicted[i]], [names[labels[i]]]) for i in range(0, n, step)[:show]]
        for text, guess, (truth,) in examples:
            lines += [f"  {text[:100]}", f"    -> {guess} (true: {truth})"]
        return Evaluation({**scores, "majority_accuracy": baseline, "examples": n}, lines, examples)


def _pad(tokenizer) -> int:
    """The id padding fills with: the tokenizer's <pad>, or 0 for one without (the key mask marks the
    real tokens either way)."""
    pad = getattr(tokenizer, "pad_id", None)
    return 0 if pad is None else pad


def classification_scores(predicted: list[int], labels: list[int], n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean F1 over the classes that occur among the labels or the
    predictions, as scikit-learn's ``f1_score(average="macro")``)."""
    p, y = torch.tensor(predicted, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
    if p.shape != y.shape:
        raise ValueError(f"predicted and labels differ in length: {p.numel()} and {y.numel()}")
    true_pos = torch.bincount(y[p == y], minlength=n_classes).double()
    n_pred, n_true = torch.bincount(p, minlength=n_classes).double(), torch.bincount(y, minlength=n_classes).double()
    present = (n_pred + n_true) > 0
    f1 = 2 * true_pos / (n_pred + n_true).clamp(min=1)
    return {"accuracy": float((p == y).double().mean()) if y.numel() else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0}


# ---- pre-training the BiLM -------------------------------------------------------------------------

class BiLMKind(_TextKind):
    """ELMo's bidirectional language modelling on a text corpus (:class:`BiLMTask`); scored by the
    forward and the backward LM's bits per token on the held-out text. A ``BiLMForClassification``
    starts from such a run (``model.init_from``)."""

    name, noun, command = "bilm", "bidirectional language model", None

    def resolve(self, config_cls, values, data, tokenizer):
        return {**values, "vocab_size": tokenizer.vocab_size}

    def build_task(self, data, tokenizer) -> BiLMTask:
        from .kinds import _text

        train, valid = _text(data.corpus)
        return BiLMTask(self._ids(train, tokenizer), self._ids(valid, tokenizer), **self._stream_args(data))

    @torch.no_grad()
    def evaluate(self, model, tokenizer, data, *, max_tokens: int | None = None, **_) -> Evaluation:
        """Each direction's cross-entropy over consecutive windows of ``data.context`` + 1 held-out tokens
        (the first ``max_tokens``), on the ``context`` neighbouring pairs of each."""
        import torch.nn.functional as F

        ids = self._held_out(data, tokenizer, max_tokens)
        T = data.context + 1
        n_windows = ids.numel() // T
        if n_windows == 0:
            raise UsageError(f"the held-out text has {ids.numel()} tokens, fewer than data.context + 1 = {T}")
        windows = ids[: n_windows * T].view(n_windows, T)  # (N, T)
        model.eval()
        device = next(model.parameters()).device
        sums = [0.0, 0.0]
        for i in range(0, n_windows, data.batch_size):
            x = windows[i : i + data.batch_size].to(device)  # (B, T)
            out = model(x)
            V = out.forward_logits.shape[-1]
            sums[0] += float(F.cross_entropy(out.forward_logits[:, :-1].reshape(-1, V).float(), x[:, 1:].reshape(-1),
                                             reduction="sum"))
            sums[1] += float(F.cross_entropy(out.backward_logits[:, 1:].reshape(-1, V).float(), x[:, :-1].reshape(-1),
                                             reduction="sum"))
        count = n_windows * (T - 1)
        forward, backward = (s / count / math.log(2) for s in sums)
        unit = _unit(data)
        return Evaluation({"forward_bits_per_token": forward, "backward_bits_per_token": backward, "tokens": count},
                          [f"held-out {unit}s: {count:,}; bits per {unit}: forward {forward:.3f}, "
                           f"backward {backward:.3f}"])


# ---- starting from a pre-trained model ----------------------------------------------------------

@dataclass(frozen=True)
class Backbone:
    """The pre-trained part of a classifier family: the attribute holding it, its module and config
    classes, and what it can start from (for messages)."""

    attr: str
    module: type
    config: type
    sources: str


BACKBONES: dict[type, Backbone] = {
    EncoderClassifierConfig: Backbone("encoder", TransformerEncoder, TransformerEncoderConfig,
                                      "a masked-LM run (TransformerEncoderForMaskedLM), an encoder classifier run "
                                      "or hf:FOLDER (a Hugging Face BERT folder)"),
    BiLMClassifierConfig: Backbone("bilm", BiLM, BiLMConfig, "a BiLM run or a BiLM classifier run"),
}


def _backbone(config_cls) -> Backbone:
    if config_cls not in BACKBONES:
        raise UsageError(f"model.init_from: a {config_cls.__name__} model cannot start from a pre-trained one")
    return BACKBONES[config_cls]


def _hf_folder(init_from: str) -> Path | None:
    return Path(init_from[len(HF_PREFIX):]) if init_from.startswith(HF_PREFIX) else None


def _source_run(init_from: str):
    """(RunFolder, RunConfig) of the run ``init_from`` names; a UsageError naming it if it is none."""
    from ..train import RunFolder
    from .config import RunConfig

    folder = RunFolder(init_from)
    if not folder.is_run():
        raise UsageError(f"model.init_from = {init_from!r} is not a run folder (no run.json there); give the "
                         f"folder of a pre-trained run, or hf:FOLDER for a Hugging Face BERT folder")
    return folder, RunConfig.from_dict(folder.read_config())


def _source_config(init_from: str, backbone: Backbone) -> dict[str, Any]:
    """The pre-trained model's config values (checked to be those of ``backbone``'s family)."""
    from ..interop import UnsupportedCheckpoint
    from ..interop.hf import bert_config, read_config
    from ..train import latest_checkpoint
    from ..train.checkpoint import read_config as read_checkpoint_config
    from .registry import MODELS

    folder = _hf_folder(init_from)
    if folder is not None:
        if backbone.module is not TransformerEncoder:
            raise UsageError(f"model.init_from = {init_from!r}: Hugging Face folders give encoders; this model "
                             f"starts from {backbone.sources}")
        try:
            return bert_config(read_config(folder)).to_dict()
        except (UnsupportedCheckpoint, FileNotFoundError) as e:
            raise UsageError(f"model.init_from = {init_from!r}: {e}") from None
    run, config = _source_run(init_from)
    if not issubclass(MODELS[config.model_type].config, backbone.config):
        raise UsageError(f"model.init_from = {init_from!r} is a {config.model_type} run; this model starts from "
                         f"{backbone.sources}")
    checkpoint = latest_checkpoint(run.path)
    if checkpoint is None:
        raise UsageError(f"model.init_from = {init_from!r} holds no checkpoint yet")
    values = read_checkpoint_config(checkpoint)
    values.pop("type", None)
    return values


def backbone_fields(config_cls, init_from: str) -> dict[str, Any]:
    """The backbone's shape fields of the pre-trained model ``init_from`` names: every field of the
    backbone's config but ``dropout`` and ``pad_id``, for a classifier config ``config_cls``."""
    backbone = _backbone(config_cls)
    values = _source_config(init_from, backbone)
    wanted = [f.name for f in fields(backbone.config) if f.name not in _OWN_FIELDS]
    return {k: values[k] for k in wanted if k in values}


def pretrained_tokenizer(init_from: str, data):
    """The tokenizer of the pre-trained model ``init_from`` names (``data.tokenizer`` must be its kind,
    so that the new run folder reads it back)."""
    from ..data import SubwordTokenizer
    from .ops import load_tokenizer

    folder = _hf_folder(init_from)
    if folder is not None:
        from ..interop import UnsupportedCheckpoint
        from ..interop import load_tokenizer as hf_tokenizer

        if data.tokenizer not in SubwordTokenizer.ALGORITHMS:
            raise UsageError(f"model.init_from = {init_from!r} brings a subword tokenizer: set data.tokenizer = "
                             f"\"wordpiece\", got {data.tokenizer!r}")
        try:
            return SubwordTokenizer(hf_tokenizer(folder), HF_SPECIALS)
        except (UnsupportedCheckpoint, ValueError) as e:
            raise UsageError(f"model.init_from = {init_from!r}: {e}") from None
    run, config = _source_run(init_from)
    if config.data.tokenizer != data.tokenizer:
        raise UsageError(f"model.init_from = {init_from!r} was trained with data.tokenizer = "
                         f"{config.data.tokenizer!r}, which this run reuses: set data.tokenizer = "
                         f"{config.data.tokenizer!r}, got {data.tokenizer!r}")
    return load_tokenizer(run, config)


def load_backbone(model: torch.nn.Module, init_from: str) -> None:
    """Copy the pre-trained backbone ``init_from`` names into ``model`` (a classifier of
    :data:`BACKBONES`); a UsageError naming ``init_from`` when the weights do not fit."""
    backbone = _backbone(type(model.config))
    target = getattr(model, backbone.attr)
    folder = _hf_folder(init_from)
    if folder is not None:
        from ..interop import UnsupportedCheckpoint, load_pretrained

        try:
            source = load_pretrained(folder, expect=TransformerEncoder)
        except (UnsupportedCheckpoint, FileNotFoundError) as e:
            raise UsageError(f"model.init_from = {init_from!r}: {e}") from None
    else:
        from .ops import load_run

        run = load_run(init_from)
        source = getattr(run.model, backbone.attr, run.model)
    if not isinstance(source, backbone.module):
        raise UsageError(f"model.init_from = {init_from!r} holds a {type(source).__name__}; this model starts "
                         f"from {backbone.sources}")
    copy_weights(source, target, init_from, f"{backbone.attr}.")


def copy_weights(source: torch.nn.Module, target: torch.nn.Module, init_from: str, prefix: str = "") -> None:
    """Load ``source``'s weights into ``target``; a UsageError naming ``init_from`` (and the weight, under
    ``prefix``) when their layers or shapes differ."""
    theirs, ours = source.state_dict(), target.state_dict()
    if theirs.keys() != ours.keys():
        odd = sorted(theirs.keys() ^ ours.keys())
        raise UsageError(f"model.init_from = {init_from!r} does not have this model's layers (differing weights: "
                         f"{', '.join(prefix + name for name in odd[:4])})")
    for name, t in theirs.items():
        if t.shape != ours[name].shape:
            raise UsageError(f"model.init_from = {init_from!r}: weight {prefix}{name} has shape "
                             f"{tuple(t.shape)} there and {tuple(ours[name].shape)} here")
    target.load_state_dict(theirs)


# This module's kinds and model families, added to the registries when attnkit.runs is imported.
KINDS.update({k.name: k for k in (ClassificationKind(), BiLMKind())})
register_model("TransformerEncoderForClassification", TransformerEncoderForClassification, EncoderClassifierConfig,
               "classify")
register_model("BiLMForClassification", BiLMForClassification, BiLMClassifierConfig, "classify")
register_model("BiLM", BiLM, BiLMConfig, "bilm")
