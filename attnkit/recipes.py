"""Runs described by a TOML file: which model, which data, how to train.

    [model]
    type = "TransformerLM"        # TransformerLM | ReformerLM | Transformer | RNNSeq2Seq | TransformerEncoderForMaskedLM
    d_model = 256                 # any field of the model's config; vocabulary sizes come from the tokenizer

    [data]
    corpus = "kjv"                # kjv | de-en | a path to a UTF-8 text file
    tokenizer = "char"            # char | byte | bpe | wordpiece | unigram | gpt2
    context = 256

    [train]
    max_steps = 2000              # any field of attnkit.train.TrainConfig

A run folder holds ``run.json`` (the resolved configuration), ``tokenizer.json``, the checkpoints and
``metrics.jsonl``; ``attnkit resume DIR`` rebuilds everything from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import Config, check_choice, check_positive, unknown_key_message
from .models import (
    ReformerConfig, ReformerLM, RNNSeq2Seq, RNNSeq2SeqConfig, Transformer, TransformerConfig, TransformerEncoderConfig,
    TransformerEncoderForMaskedLM, TransformerLM, TransformerLMConfig,
)
from .train import LanguageModelingTask, MaskedLMTask, Seq2SeqTask, TrainConfig

MODELS: dict[str, tuple[type, type]] = {
    "TransformerLM": (TransformerLM, TransformerLMConfig),
    "Transformer": (Transformer, TransformerConfig),
    "RNNSeq2Seq": (RNNSeq2Seq, RNNSeq2SeqConfig),
    "TransformerEncoderForMaskedLM": (TransformerEncoderForMaskedLM, TransformerEncoderConfig),
    "ReformerLM": (ReformerLM, ReformerConfig),
}
LM_MODELS = ("TransformerLM", "ReformerLM")
SEQ2SEQ_MODELS = ("Transformer", "RNNSeq2Seq")
MLM_MODELS = ("TransformerEncoderForMaskedLM",)


def register_model(name: str, model_cls: type, config_cls: type, kind: str = "lm") -> None:
    """Make a model family available to run configs (``kind``: "lm" or "seq2seq")."""
    global LM_MODELS, SEQ2SEQ_MODELS
    MODELS[name] = (model_cls, config_cls)
    if kind == "lm":
        LM_MODELS = (*LM_MODELS, name)
    else:
        SEQ2SEQ_MODELS = (*SEQ2SEQ_MODELS, name)


@dataclass
class DataConfig(Config):
    corpus: str = "kjv"  # kjv | de-en | path to a UTF-8 text file
    tokenizer: str = "char"  # char | byte | bpe | wordpiece | unigram | gpt2
    vocab_size: int = 8000  # for the trained subword tokenizers
    context: int = 256  # language modelling window
    batch_size: int = 32
    max_len: int = 128  # translation: longest sequence in tokens
    eval_batches: int = 20
    seed: int = 0

    def __post_init__(self):
        check_choice(self, "tokenizer", ("char", "byte", "bpe", "wordpiece", "unigram", "gpt2"))
        check_positive(self, "vocab_size", "context", "batch_size", "max_len", "eval_batches")


@dataclass
class RunConfig:
    model: dict[str, Any]
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": dict(self.model), "data": self.data.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        unknown = set(values) - {"model", "data", "train"}
        if unknown:
            raise ValueError(f"unknown section(s) {sorted(unknown)}: a run config has [model], [data] and [train]")
        model = dict(values.get("model", {}))
        kind = model.get("type")
        if kind not in MODELS:
            close = difflib.get_close_matches(str(kind), MODELS, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"[model] type must be one of {sorted(MODELS)}, got {kind!r}{hint}")
        names = [f.name for f in dataclasses.fields(MODELS[kind][1])]
        for key in model:
            if key != "type" and key not in names:
                raise ValueError("[model] " + unknown_key_message(kind, key, names))
        return cls(model, DataConfig.from_dict(values.get("data", {})), TrainConfig.from_dict(values.get("train", {})))

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            values = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: {e}") from None
        for item in overrides:
            apply_override(values, item)
        return cls.from_dict(values)


def apply_override(values: dict[str, Any], item: str) -> None:
    """Apply ``section.key=value`` (value parsed as TOML, else taken as a string)."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ValueError(f"--set expects section.key=value (e.g. train.max_steps=100), got {item!r}")
    key, raw = item.split("=", 1)
    section, name = key.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    values.setdefault(section, {})[name] = value


# ---- building the pieces ----------------------------------------------------------------------

def build_tokenizer(data: DataConfig, texts: list[str]):
    from .data import ByteTokenizer, CharTokenizer, SubwordTokenizer, gpt2_tokenizer

    if data.tokenizer == "char":
        return CharTokenizer.train("".join(texts))
    if data.tokenizer == "byte":
        return ByteTokenizer()
    if data.tokenizer == "gpt2":
        return gpt2_tokenizer()
    return SubwordTokenizer.train(texts, vocab_size=data.vocab_size, algorithm=data.tokenizer)


def _corpus_text(data: DataConfig) -> tuple[str, str]:
    if data.corpus == "kjv":
        from .data import kjv_splits

        return kjv_splits()
    path = Path(data.corpus)
    if not path.is_file():
        raise FileNotFoundError(
            f"[data] corpus {data.corpus!r} is neither 'kjv', 'de-en' nor an existing text file"
        )
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.95)  # the last 5% is held out
    return text[:cut], text[cut:]


def build_run(config: RunConfig, run_dir: str | Path, tokenizer=None):
    """Model, task and tokenizer for ``config``; trains a tokenizer unless one is given."""
    from .data import load_de_en

    kind = config.model["type"]
    model_cls, config_cls = MODELS[kind]
    data = config.data
    model_values = {k: v for k, v in config.model.items() if k != "type"}
    if kind in SEQ2SEQ_MODELS:
        if data.corpus != "de-en":
            raise ValueError(f"{kind} is a sequence-to-sequence model: set [data] corpus = \"de-en\"")
        splits = load_de_en()
        if tokenizer is None:
            tokenizer = build_tokenizer(data, [t for p in splits["train"] for t in (p.de, p.en)])
        encode = lambda pairs: [(tokenizer.encode(p.de), tokenizer.encode(p.en)) for p in pairs]  # noqa: E731
        special = dict(pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
        task = Seq2SeqTask(
            encode(splits["train"]), encode(splits["validation"]), batch_size=data.batch_size, seed=data.seed,
            max_len=data.max_len, **special,
        )
        model_values.update(src_vocab_size=tokenizer.vocab_size, tgt_vocab_size=tokenizer.vocab_size,
                            pad_id=special["pad_id"])
        model_values.setdefault("max_len", data.max_len + 1)
    elif kind in LM_MODELS or kind in MLM_MODELS:
        if data.corpus == "de-en":
            raise ValueError(f"{kind} trains on a text stream: set [data] corpus to 'kjv' or a text file")
        train_text, valid_text = _corpus_text(data)
        if tokenizer is None:
            tokenizer = build_tokenizer(data, [train_text])
        as_tensor = lambda text: torch.tensor(tokenizer.encode(text), dtype=torch.long)  # noqa: E731
        stream = dict(context=data.context, batch_size=data.batch_size, seed=data.seed, eval_batches=data.eval_batches)
        if kind in MLM_MODELS:  # one extra id past the tokenizer's vocabulary is the [MASK] token
            vocab = tokenizer.vocab_size + 1
            task = MaskedLMTask(as_tensor(train_text), as_tensor(valid_text), mask_id=vocab - 1, vocab_size=vocab,
                                **stream)
        else:
            vocab = tokenizer.vocab_size
            task = LanguageModelingTask(as_tensor(train_text), as_tensor(valid_text), **stream)
        model_values["vocab_size"] = vocab
        model_values.setdefault("max_len", data.context)
    else:
        raise ValueError(f"training a bare {kind} is not supported by run configs yet")
    model_config = config_cls.from_dict(model_values)
    torch.manual_seed(config.train.seed)
    return model_cls(model_config), task, tokenizer


def save_run_config(config: RunConfig, run_dir: Path) -> None:
    from .train.checkpoint import write_json_atomic

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "run.json", config.to_dict())


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not an attnkit run folder")
    return RunConfig.from_dict(json.loads(path.read_text()))


def load_model(path: str | Path):
    """A model from a run folder (its newest checkpoint) or a checkpoint folder -> (model, tokenizer)."""
    from .data import load_tokenizer
    from .train.checkpoint import latest_checkpoint, load_checkpoint, read_config

    path = Path(path)
    ckpt = path if (path / "manifest.json").exists() else latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {path}: train first (attnkit train --config ...)")
    values = read_config(ckpt)
    kind = values.pop("type")
    entry = next(((m, c) for m, c in MODELS.values() if c.__name__ == kind), None)
    if entry is None:
        raise ValueError(f"{ckpt / 'config.json'}: unknown model config type {kind!r}")
    model = entry[0](entry[1].from_dict(values))
    load_checkpoint(ckpt, model)
    run_dir = ckpt.parent
    tok_path = run_dir / "tokenizer.json"
    tokenizer = load_tokenizer(tok_path) if tok_path.exists() else None
    return model.eval(), tokenizer
