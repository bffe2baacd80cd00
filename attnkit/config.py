"""Shared behaviour of the model config dataclasses: validation helpers and dict round trips."""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any


def unknown_key_message(owner: str, key: str, names) -> str:
    """"<owner> has no field 'x'; did you mean 'y'?" (or the list of valid names)."""
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
    return f"{owner} has no field {key!r}{hint}"


class Config:
    """Mixin for ``@dataclass`` configs: ``from_dict``/``to_dict`` and JSON files, unknown keys rejected."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                raise ValueError(unknown_key_message(cls.__name__, key, names))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"type": type(self).__name__, **self.to_dict()}, indent=2))

    @classmethod
    def load(cls, path: str | Path):
        values = json.loads(Path(path).read_text())
        kind = values.pop("type", cls.__name__)
        if kind != cls.__name__:
            raise ValueError(f"{path} holds a {kind}, not a {cls.__name__}")
        return cls.from_dict(values)


def check_positive(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{type(cfg).__name__}.{name} must be a positive int, got {value!r}")


def check_choice(cfg, name: str, choices) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise ValueError(f"{type(cfg).__name__}.{name} must be one of {tuple(choices)}, got {value!r}")


def check_heads(cfg) -> None:
    """d_model, n_heads, d_head and n_kv_heads must fit together."""
    name = type(cfg).__name__
    if getattr(cfg, "d_head", None) is None and cfg.d_model % cfg.n_heads:
        raise ValueError(
            f"{name}: d_model ({cfg.d_model}) must be divisible by n_heads ({cfg.n_heads}); "
            "change one of them or set d_head"
        )
    n_kv = getattr(cfg, "n_kv_heads", None)
    if n_kv is not None and (n_kv < 1 or cfg.n_heads % n_kv):
        raise ValueError(f"{name}: n_kv_heads ({n_kv}) must divide n_heads ({cfg.n_heads})")


def check_dropout(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{type(cfg).__name__}.{name} must be in [0, 1), got {value!r}")
