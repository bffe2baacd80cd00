"""Run configs: one TOML file (or preset) says which model, which data and how to train.

    [model]
    type = "TransformerLM"        # a name in attnkit.runs.MODELS
    d_model = 256                 # any field of that model's config; vocabulary sizes and lengths
                                  # come from the tokenizer and the data
    [data]
    corpus = "kjv"                # attnkit.data.corpora: a named corpus, or a path to a UTF-8 text file
    tokenizer = "char"            # a name in attnkit.data.TOKENIZERS
    context = 256

    [train]
    max_steps = 2000              # any field of attnkit.train.TrainConfig

Every value is checked against its field's type before the configs validate themselves, so
``--set train.lr=fast`` says "train.lr must be a number, got 'fast'". Presets ship with the package
(``attnkit/configs/*.toml``) and are named without their suffix.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import Config, check_positive, unknown_key_message
from ..errors import UsageError
from ..train import TrainConfig

SECTIONS = ("model", "data", "train")


@dataclass
class DataConfig(Config):
    """Which data a run trains on and how it is cut into batches.

    ``corpus`` names a corpus of :mod:`attnkit.data.corpora` (or a text file); ``tokenizer`` a
    tokenizer of :data:`attnkit.data.TOKENIZERS`, with ``vocab_size`` entries where it is trained
    (subwords). Language models read windows of ``context`` tokens; translation models cut sentences
    to ``max_len`` tokens. ``eval_batches`` batches of held-out data are scored during training;
    translation runs also translate their first ``valid_bleu_sentences`` validation sources (greedy) at
    each evaluation and log BLEU and chrF on them (0: none), for curves of BLEU against training time.
    Classification runs cut texts to ``max_len`` tokens and train on ``train_examples`` examples of the
    training split (0: all), a seeded sample in which a smaller one is always part of a larger one
    (:func:`attnkit.train.classification.subsample`), for learning curves of accuracy against data.
    Text-to-text runs (T5, ``corpus`` a mixture of :data:`attnkit.data.TEXT2TEXT_CORPORA`) cut inputs and
    targets to ``max_len`` tokens, train on at most ``train_examples`` examples of each task (0: all; the
    same nested samples), draw the tasks examples-proportionally with each task's count capped at
    ``mixture_cap`` (T5's K, section 3.5.2; 0: no cap), and score the first ``valid_bleu_sentences``
    validation sources of each task (greedy) at each evaluation. Span-corruption runs corrupt windows of
    ``context`` tokens; their tokenizer also learns from the training text of ``tokenizer_corpus`` (a
    text-to-text mixture; "": none) without training on it, as T5's vocabulary covers the languages of its
    later tasks. Masked-LM runs choose ``mask_prob`` of the tokens of each training window (BERT:
    0.15); their held-out figures always mask 15%.
    """

    corpus: str = "kjv"
    tokenizer: str = "char"
    vocab_size: int = 8000
    context: int = 256
    batch_size: int = 32
    max_len: int = 128
    eval_batches: int = 20
    valid_bleu_sentences: int = 0
    train_examples: int = 0
    mixture_cap: int = 0
    mask_prob: float = 0.15
    tokenizer_corpus: str = ""
    seed: int = 0

    def __post_init__(self):
        from ..data import TOKENIZERS

        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"DataConfig.tokenizer must be one of {tuple(TOKENIZERS)}, got {self.tokenizer!r}")
        check_positive(self, "vocab_size", "context", "batch_size", "max_len", "eval_batches")
        if self.valid_bleu_sentences < 0:
            raise ValueError(f"DataConfig.valid_bleu_sentences must be >= 0, got {self.valid_bleu_sentences}")
        if self.train_examples < 0:
            raise ValueError(f"DataConfig.train_examples must be >= 0 (0: all), got {self.train_examples}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"DataConfig.mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.mixture_cap < 0:
            raise ValueError(f"DataConfig.mixture_cap must be >= 0 (0: no cap), got {self.mixture_cap}")


@dataclass
class RunConfig(Config):
    """A whole run: ``model`` (its ``type`` and config fields), ``data`` and ``train``."""

    model: dict[str, Any]
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def model_type(self) -> str:
        return self.model["type"]

    def to_dict(self) -> dict[str, Any]:
        return {"model": dict(self.model), "data": self.data.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Check and build; every problem is a :class:`UsageError` naming the key and what fits."""
        from .registry import MODELS

        unknown = set(values) - set(SECTIONS)
        if unknown:
            raise UsageError(f"unknown section(s) {sorted(unknown)}: a run config has [model], [data] and [train]")
        model = dict(values.get("model", {}))
        kind = model.get("type")
        if kind not in MODELS:
            hint = unknown_key_message("[model] type", str(kind), list(MODELS)).split(";", 1)[1]
            raise UsageError(f"model.type must be one of {sorted(MODELS)}, got {kind!r};{hint}")
        spec = MODELS[kind]
        fixed = sorted(set(model) & set(spec.kind.data_fields))
        if fixed:
            raise UsageError(f"model.{fixed[0]} is set from the data and the tokenizer "
                             f"({spec.kind.data_fields[fixed[0]]}); leave it out of [model]")
        model_values = check_types("model", spec.config, {k: v for k, v in model.items() if k != "type"})
        data = _build("data", DataConfig, values.get("data", {}))
        train = _build("train", TrainConfig, values.get("train", {}))
        return cls({"type": kind, **model_values}, data, train)

    @classmethod
    def load(cls, name_or_path: str | Path, overrides: list[str] = ()) -> RunConfig:
        """A preset's name or a TOML/JSON file, with ``section.key=value`` overrides applied."""
        path = config_path(name_or_path)
        try:
            values = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"{path} is not a valid config file: {e}") from None
        for item in overrides:
            apply_override(values, item)
        return cls.from_dict(values)


def _build(section: str, cls, values: dict[str, Any]):
    values = check_types(section, cls, values)
    try:
        return cls.from_dict(values)
    except ValueError as e:  # the config's own checks: a value the user gave does not fit
        raise UsageError(f"[{section}] {e}") from None


# ---- presets and overrides --------------------------------------------------------------------

def presets() -> dict[str, Path]:
    """The presets shipped with the package: {name: path}."""
    folder = resources.files("attnkit") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def config_path(name: str | Path) -> Path:
    """A config file's path, or the path of the preset ``name``."""
    path = Path(name)
    if path.is_file():
        return path
    found = presets()
    stem = path.name[: -len(".toml")] if path.name.endswith(".toml") else path.name
    if stem in found and path.parent == Path("."):
        return found[stem]
    names = ", ".join(sorted(found)) or "none"
    raise UsageError(f"config {str(name)!r} is neither a file nor a preset (presets: {names})")


def apply_override(values: dict[str, Any], item: str) -> None:
    """Apply ``section.key=value`` to a config's dict: the value is read as TOML (``3e-4``, ``true``,
    ``[1, 2]``, ``"text"``), and as a plain string where it is not TOML (``corpus=kjv``)."""
    key, sep, raw = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name or section not in SECTIONS:
        raise UsageError(f"--set expects SECTION.KEY=VALUE with SECTION one of {', '.join(SECTIONS)} "
                         f"(e.g. train.max_steps=100), got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    values.setdefault(section, {})[name] = value


# ---- type checks ------------------------------------------------------------------------------

def check_types(section: str, cls, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each checked (and ints widened to floats) against the field types of the
    dataclass ``cls``; unknown keys get the closest valid name."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in values.items():
        if key not in names:
            raise UsageError(f"[{section}] " + unknown_key_message(cls.__name__, key, names))
        out[key] = _coerce(value, hints[key], f"{section}.{key}")
    return out


_NONE_WORDS = ("none", "null")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in _NONE_WORDS)):
            return None
        for option in options:
            try:
                return _coerce(value, option, where)
            except UsageError:
                continue
        raise UsageError(f"{where} must be {' or '.join(_describe(a) for a in args)}, got {value!r}")
    if origin is tuple or origin is list:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise UsageError(f"{where} must be {_describe(hint)}, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise UsageError(f"{where} must be {_describe(hint)} ({len(args)} values), got {value!r}")
        item_types = [args[0]] * len(value) if (origin is list or args[-1] is Ellipsis) else list(args)
        return origin(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where} must be a table, got {value!r}")
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint)
    if ok is None:
        return value
    if not ok:
        raise UsageError(f"{where} must be {_describe(hint)}, got {value!r}")
    if hint is float:
        value = float(value)
        if math.isnan(value):
            raise UsageError(f"{where} must be a number, got nan")
    return value


def _describe(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "none"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (tuple, list):
        item = args[0] if args else Any
        return f"a list of {_describe(item).removeprefix('an ').removeprefix('a ')}s"
    return getattr(hint, "__name__", str(hint))
