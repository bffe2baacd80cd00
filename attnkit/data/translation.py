"""German-English sentence pairs from the Ding dictionary (Debian ``trans-de-en``).

The file ``/usr/share/trans/de-en`` holds one entry per line::

    Deutsch {n} | Beispielsatz. :: German | Example sentence.

``::`` separates the languages and `` | `` separates sub-entries, which align one to one between the
two sides. ``{...}`` (grammar) and ``[...]`` (register, field) are annotations. Most sub-entries are
words and phrases; the example sentences among them make a small parallel corpus. We keep a pair when
both sides end in ``.``, ``!`` or ``?``, have at least three words and contain no ``;`` (a ``;`` lists
alternative translations). That gives about 18,000 pairs.

Held-out rule (used for every translation figure attnkit reports): a pair is a test pair when
``int(sha1(german.encode()).hexdigest(), 16) % 20 == 0``, a validation pair when it is ``1``, and a
training pair otherwise. Since the rule looks only at the German side, every translation of one
German sentence falls in the same split.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = Path("/usr/share/trans/de-en")
SPLITS = ("train", "validation", "test")

_ANNOTATION = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.!?,:])")


@dataclass(frozen=True)
class Pair:
    """One German sentence and its English translation."""

    de: str
    en: str


def split_of(german: str) -> str:
    """The split ("train", "validation" or "test") the held-out rule gives a German sentence."""
    bucket = int(hashlib.sha1(german.encode("utf-8")).hexdigest(), 16) % 20
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def clean_text(text: str) -> str:
    """Drop ``{...}`` and ``[...]`` annotations and normalise the spaces they leave behind."""
    text = _ANNOTATION.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def is_sentence(text: str) -> bool:
    """Sentence filter: ends in . ! or ?, has at least 3 words, holds no ';'."""
    return text.endswith((".", "!", "?")) and len(text.split()) >= 3 and ";" not in text


def parse_line(line: str) -> list[Pair]:
    """The sentence pairs of one dictionary line (an empty list for comments, words, misaligned lines)."""
    line = line.strip()
    if not line or line.startswith("#") or " :: " not in line:
        return []
    german, english = line.split(" :: ", 1)
    de_parts, en_parts = german.split(" | "), english.split(" | ")
    if len(de_parts) != len(en_parts):  # sub-entries cannot be aligned
        return []
    pairs = []
    for de, en in zip(de_parts, en_parts):
        de, en = clean_text(de), clean_text(en)
        if is_sentence(de) and is_sentence(en):
            pairs.append(Pair(de, en))
    return pairs


def parse_lines(lines: Iterable[str]) -> Iterator[Pair]:
    """All sentence pairs of the dictionary lines, exact duplicates removed, in file order."""
    seen: set[Pair] = set()
    for line in lines:
        for pair in parse_line(line):
            if pair not in seen:
                seen.add(pair)
                yield pair


def _open_dictionary(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: install the Debian package trans-de-en (`apt-get install trans-de-en`), "
            "or pass the path of a copy of the Ding de-en dictionary"
        )
    return path


def load_pairs(path: str | Path = DEFAULT_PATH) -> list[Pair]:
    """Every German-English sentence pair of the dictionary, exact duplicates removed."""
    with _open_dictionary(path).open(encoding="utf-8") as f:
        return list(parse_lines(f))


def split_pairs(pairs: Iterable[Pair]) -> dict[str, list[Pair]]:
    """Apply the held-out rule: {"train": [...], "validation": [...], "test": [...]}."""
    out: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for pair in pairs:
        out[split_of(pair.de)].append(pair)
    return out


def load_de_en(split: str | None = None, path: str | Path = DEFAULT_PATH):
    """German-English pairs of one split (a list of :class:`Pair`), or all three splits as a dict.

    Args:
        split: "train", "validation", "test", or None for a dict of the three.
        path: the Ding dictionary file (Debian ``trans-de-en``).
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    splits = split_pairs(load_pairs(path))
    return splits if split is None else splits[split]


def references_by_source(pairs: Iterable[Pair]) -> dict[str, list[str]]:
    """Group pairs by German sentence: {german: [english, ...]} in first-seen order.

    A German sentence can have several translations in the dictionary; evaluating each source
    sentence once against all its translations avoids counting it several times.
    """
    out: dict[str, list[str]] = {}
    for pair in pairs:
        out.setdefault(pair.de, []).append(pair.en)
    return out
