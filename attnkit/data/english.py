"""English text for pretraining (masked-LM, bi-LSTM language models, span corruption): corpus ``english``.

Three sources, all installed offline:

- the Collaborative International Dictionary of English (GCIDE, Debian ``dict-gcide``): Webster's 1913
  definitions and quotations, about 29 MB once cleaned. Its entries taken from WordNet 1.5 (those marked
  ``[WordNet 1.5]``) are left out, since the WordNet tasks (:mod:`attnkit.data.wordnet`) classify WordNet
  glosses: pretraining on them would show the test glosses, next to their part of speech;
- the King James Bible (:mod:`attnkit.data.kjv`), its held-out books held out here too;
- the English package descriptions of Debian's description translations (:mod:`attnkit.data.descriptions`),
  each paragraph once, without those whose German or French translation is a validation or test pair of
  the translation corpora (a model pretrained here and fine-tuned to translate never saw a test reference).

Held out: a paragraph of the dictionary or the descriptions whose sha1 falls in the last 5% (the KJV's
held-out books for the Bible). The text is one paragraph per line, built once and cached under
``cache_dir() / "english"`` by the source files' dates and sizes.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..io import atomic_write_text
from .kjv import cache_dir

GCIDE_PATH = Path("/usr/share/dictd/gcide.dict.dz")
CACHE_VERSION = 1  # bump when the cleaning changes, so old caches are not reused
HELD_OUT_PERCENT = 5

# The tags naming an entry's sources: [1913 Webster], [WordNet 1.5 +PJC], [Webster 1913 Suppl.], [AS], ...
_SOURCE_TAG = re.compile(r"\[(?:[^\]\n]*(?:Webster|WordNet|PJC|Century Dict|RDH)[^\]\n]*|AS)\]")
_PRONUNCIATION = re.compile(r"\\[^\\\n]*\\")  # \A*buse"\ after a headword
_ACCENT = re.compile(r"\[[\^=~`.:\"'\-]?([A-Za-z]{1,2})[\^=~`.:\"'\-]?\]")  # [i^], [=a]: letters with marks
_SPACES = re.compile(r"\s+")


def gcide_entries(text: str) -> Iterator[list[str]]:
    """The entries of the dictionary's text (each a list of lines): an entry starts at a line that is not
    indented; the database's own header entries (``00-database-...``) and the notice before the first
    headword are skipped."""
    lines = text.split("\n")
    start = max((i for i, line in enumerate(lines) if line.startswith("00-database")), default=-1) + 1
    while start < len(lines) and not re.match(r"^\S.*\\", lines[start]):  # the first headword \pro*nun"ci*a*tion\
        start += 1
    entry: list[str] = []
    for line in lines[start:]:
        if line and not line[0].isspace() and entry:
            yield entry
            entry = []
        entry.append(line)
    if entry:
        yield entry


def clean_gcide_entry(lines: list[str]) -> list[str]:
    """An entry's paragraphs as plain text, or [] for an entry taken from WordNet: source tags dropped,
    pronunciations removed, {braces} and accent codes ([e^] -> e) resolved, lines joined."""
    if any("WordNet" in line for line in lines):  # in its tags, some of them malformed ("WordNet 1.5]")
        return []
    paragraphs, current = [], []
    for line in lines:
        stripped = _SOURCE_TAG.sub("", line).strip()
        if not stripped or _SOURCE_TAG.match(line.strip()):  # a tag line (and the next headwords after it)
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(stripped)
    if current:
        paragraphs.append(" ".join(current))
    out = []
    for p in paragraphs:
        p = _ACCENT.sub(r"\1", _PRONUNCIATION.sub("", _SOURCE_TAG.sub("", p)))  # tags split by a line too
        p = p.replace("{", "").replace("}", "").replace("\\", "")  # and the halves of a pronunciation split by a line
        p = _SPACES.sub(" ", p).strip().replace(" ,", ",")
        if p:
            out.append(p)
    return out


def gcide_paragraphs(path: str | Path = GCIDE_PATH) -> list[str]:
    """Every paragraph of the dictionary outside its WordNet entries, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install the Debian package dict-gcide "
                                "(`apt-get install dict-gcide`)")
    text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    return [p for entry in gcide_entries(text) for p in clean_gcide_entry(entry)]


def description_paragraphs(held_out_english: Iterable[str] = ()) -> list[str]:
    """The English package descriptions (synopses and paragraphs), each once, in file order, without
    ``held_out_english``."""
    from .descriptions import _descriptions, fetch_lists, lists_dir, translation_files

    if not translation_files("en"):
        fetch_lists()
    skip, seen, out = set(held_out_english), set(), []
    for d in _descriptions("en", lists_dir()):
        for p in (d.synopsis, *d.paragraphs):
            p = _SPACES.sub(" ", p).strip()
            if p and p not in seen and p not in skip:
                seen.add(p)
                out.append(p)
    return out


def held_out(paragraph: str) -> bool:
    """The held-out rule: the paragraph's sha1 in the last HELD_OUT_PERCENT of 100 buckets."""
    return int(hashlib.sha1(paragraph.encode("utf-8")).hexdigest(), 16) % 100 >= 100 - HELD_OUT_PERCENT


def split_paragraphs(paragraphs: Iterable[str]) -> tuple[list[str], list[str]]:
    train, held = [], []
    for p in paragraphs:
        (held if held_out(p) else train).append(p)
    return train, held


def _translation_references() -> set[str]:
    """The English side of every validation and test pair of the description corpora."""
    from .descriptions import LANGUAGES, load_descriptions

    return {p.en for lang in LANGUAGES for split in ("validation", "test") for p in load_descriptions(lang, split)}


def english_splits(cache: str | Path | None = None, gcide: str | Path = GCIDE_PATH) -> tuple[str, str]:
    """(training text, held-out text) of corpus ``english``: one paragraph per line; built once and cached."""
    from .descriptions import fetch_lists, translation_files
    from .kjv import kjv_splits

    folder = Path(cache) if cache is not None else cache_dir() / "english"
    stamp = Path(gcide).stat().st_mtime_ns if Path(gcide).is_file() else 0
    en_files = translation_files("en") or translation_files("en", fetch_lists())
    key = hashlib.sha1(repr((stamp, [(f.name, f.stat().st_size) for f in en_files])).encode()).hexdigest()[:10]
    paths = [folder / f"{name}-{key}-v{CACHE_VERSION}.txt" for name in ("train", "heldout")]
    if all(p.is_file() for p in paths):
        return tuple(p.read_text(encoding="utf-8") for p in paths)
    dictionary = split_paragraphs(gcide_paragraphs(gcide))
    descriptions = split_paragraphs(description_paragraphs(_translation_references()))
    bible_train, bible_held = kjv_splits()
    train = "\n".join([*dictionary[0], *descriptions[0], bible_train.strip()]) + "\n"
    held = "\n".join([*dictionary[1], *descriptions[1], bible_held.strip()]) + "\n"
    for path, text in zip(paths, (train, held)):
        atomic_write_text(path, text)
    return train, held
