"""WordNet 3.0 synsets (Debian ``wordnet-base``) and two classification tasks built on their glosses.

The database files ``/usr/share/wordnet/data.{noun,verb,adj,adv}`` start with the licence, lines that
begin with two spaces; every other line is one synset::

    offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt [ptr ...] [frames ...] | gloss

``offset`` is 8 decimal digits (the synset's byte offset in its file, unique within one part of speech),
``lex_filenum`` 2 decimal digits naming the lexicographer file (:data:`LEXNAMES`), ``ss_type`` one of
n, v, a, s (an adjective satellite), r; ``w_cnt`` is 2 *hexadecimal* digits, ``lex_id`` 1 hex digit;
``p_cnt`` is 3 decimal digits, each pointer 4 fields (symbol, offset, part of speech, source/target);
verb synsets then list their sentence frames (``f_cnt``, then ``+ f_num w_num`` each). Adjectives may
carry a syntactic marker, ``galore(ip)``, which we drop from the word. See wndb(5WN).

There are 117,659 synsets: 82,115 nouns, 13,767 verbs, 18,156 adjectives (7,463 head and 10,693
satellite) and 3,621 adverbs. Parsing the 22 MB takes about a second, so :func:`load_wordnet` caches
the records as one TSV under ``~/.cache/attnkit/wordnet/`` (or ``$ATTNKIT_CACHE/wordnet``), named by the
files' modification time, so an updated package is parsed again.

Held-out rule: a synset is a test synset when ``int(sha1(id).hexdigest(), 16) % 10 == 0`` and a
validation synset when it is ``1`` (80/10/10), with ``id`` the usual ``"02084071-n"`` (offset, dash,
n/v/a/r; satellites are "a"). Tasks (text = the gloss, definition and examples as WordNet writes them):
:func:`wordnet_pos_task` (4 classes) and :func:`wordnet_lexname_task` (the 45 lexicographer files).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from ..io import atomic_write_text
from .kjv import cache_dir

DEFAULT_PATH = Path("/usr/share/wordnet")
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
SS_TYPES = {"noun": ("n",), "verb": ("v",), "adj": ("a", "s"), "adv": ("r",)}  # per data file
POS_LETTERS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
SPLITS = ("train", "validation", "test")
CACHE_VERSION = 1  # bump when the parsing changes, so old caches are not reused
_TSV_HEADER = "offset\tpos\tlexname\twords\tgloss"

# The lexicographer files by number (lex_filenum), as listed in the man page lexnames(5WN) of WordNet 3.0
# (/usr/share/man/man5/lexnames.5WN.gz).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)
_LEXNAME_IDS = {name: i for i, name in enumerate(LEXNAMES)}


class Synset(NamedTuple):
    """One WordNet synset: its offset in its data file, part of speech ("noun", "verb", "adj" (satellites
    included) or "adv"), lexicographer file (e.g. "noun.animal"), words (lemmas as WordNet writes them,
    "domestic_dog") and gloss (definition and examples)."""

    offset: int
    pos: str
    lexname: str
    words: tuple[str, ...]
    gloss: str

    @property
    def id(self) -> str:
        """The synset's usual identifier, e.g. "02084071-n" (satellite adjectives are "a")."""
        return f"{self.offset:08d}-{POS_LETTERS[self.pos]}"


class TextClassification(NamedTuple):
    """One split of a text classification task."""

    texts: list[str]
    labels: list[int]  # indices into label_names
    label_names: tuple[str, ...]


def _strip_marker(word: str) -> str:
    """"galore(ip)" -> "galore": adjectives may end in a syntactic marker (a), (p) or (ip)."""
    for marker in ("(a)", "(p)", "(ip)"):
        if word.endswith(marker):
            return word[: -len(marker)]
    return word


def parse_synset_line(line: str, pos: str) -> Synset | None:
    """One line of ``data.<pos>`` -> its :class:`Synset`, or None for a licence or blank line.

    Raises ValueError when the line does not follow the format (the message says what is wrong)."""
    if pos not in SS_TYPES:
        raise ValueError(f"pos must be one of {PARTS_OF_SPEECH}, got {pos!r}")
    if line.startswith("  ") or not line.strip():
        return None
    head, _, gloss = line.partition(" | ")  # the gloss is everything after the first " | "
    fields = head.split()
    if len(fields) < 6:
        raise ValueError(f"a synset line needs at least 6 fields before ' | ', got {len(fields)}")
    offset, lex_filenum, ss_type, w_cnt = fields[:4]
    if not (offset.isdigit() and lex_filenum.isdigit()):
        raise ValueError(f"offset and lex_filenum must be decimal, got {offset!r} and {lex_filenum!r}")
    if ss_type not in SS_TYPES[pos]:
        raise ValueError(f"ss_type {ss_type!r} does not belong in data.{pos} (expected {SS_TYPES[pos]})")
    lex = int(lex_filenum)
    if not 0 <= lex < len(LEXNAMES) or LEXNAMES[lex].split(".")[0] != pos:
        raise ValueError(f"lex_filenum {lex_filenum} is not a {pos} lexicographer file")
    n_words = int(w_cnt, 16)
    words = tuple(_strip_marker(w) for w in fields[4 : 4 + 2 * n_words : 2])
    rest = fields[4 + 2 * n_words :]  # p_cnt, pointers, then a verb's frames
    if n_words < 1 or len(words) != n_words or not rest or not rest[0].isdigit():
        raise ValueError(f"w_cnt {w_cnt} (hex) does not match the words that follow")
    n_fields = 1 + 4 * int(rest[0])
    if pos == "verb" and len(rest) > n_fields:
        n_fields += 1 + 3 * int(rest[n_fields])
    if len(rest) != n_fields:
        raise ValueError(f"p_cnt {rest[0]} (and verb frames) account for {n_fields} fields, found {len(rest)}")
    return Synset(int(offset), pos, LEXNAMES[lex], words, gloss.strip())


def read_data_file(path: str | Path, pos: str) -> list[Synset]:
    """Every synset of one WordNet data file (``data.noun`` with ``pos="noun"``, ...), in file order."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                synset = parse_synset_line(line.rstrip("\n"), pos)
            except ValueError as e:
                raise ValueError(f"{path}, line {number}: {e}") from e
            if synset is not None:
                out.append(synset)
    return out


def _data_files(path: Path) -> list[Path]:
    files = [path / f"data.{pos}" for pos in PARTS_OF_SPEECH]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(
                f"{file} not found: install the Debian package wordnet-base (`apt-get install wordnet-base`), "
                "or pass the folder of a WordNet 3.0 database as path"
            )
    return files


def _cache_file(folder: Path, path: Path, files: list[Path]) -> Path:
    modified = datetime.fromtimestamp(max(f.stat().st_mtime for f in files), tz=UTC)
    source = hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:8]  # another copy, another cache
    return folder / f"synsets-{modified:%Y%m%dT%H%M%S}-{source}-v{CACHE_VERSION}.tsv"


def _to_tsv(synsets: list[Synset]) -> str:
    lines = [_TSV_HEADER]
    for s in synsets:
        fields = [str(s.offset), s.pos, s.lexname, " ".join(s.words), s.gloss]
        if any("\t" in field or "\n" in field for field in fields):
            raise ValueError(f"synset {s.id} holds a tab or a newline, which the TSV cache cannot store")
        lines.append("\t".join(fields))
    return "\n".join(lines) + "\n"


def _from_tsv(text: str) -> list[Synset] | None:
    lines = text.splitlines()
    if not lines or lines[0] != _TSV_HEADER:
        return None
    out = []
    for line in lines[1:]:
        offset, pos, lexname, words, gloss = line.split("\t")
        out.append(Synset(int(offset), pos, lexname, tuple(words.split(" ")), gloss))
    return out


def load_wordnet(path: str | Path = DEFAULT_PATH, cache: str | Path | None = None) -> list[Synset]:
    """Every synset of the WordNet database at ``path``: nouns, verbs, adjectives, adverbs, each in file order.

    Args:
        path: the folder of ``data.noun``, ``data.verb``, ``data.adj``, ``data.adv`` (Debian
            ``wordnet-base`` installs them in /usr/share/wordnet).
        cache: the cache folder, default ``cache_dir() / "wordnet"``; the file in it is named by the data
            files' latest modification time and the folder they are in.
    """
    path = Path(path)
    files = _data_files(path)
    cache_file = _cache_file(Path(cache) if cache is not None else cache_dir() / "wordnet", path, files)
    if cache_file.is_file():
        synsets = _from_tsv(cache_file.read_text(encoding="utf-8"))
        if synsets is not None:
            return synsets
    synsets = [s for file, pos in zip(files, PARTS_OF_SPEECH) for s in read_data_file(file, pos)]
    atomic_write_text(cache_file, _to_tsv(synsets))
    return synsets


def synset_split(synset: Synset) -> str:
    """The split ("train", "validation" or "test") the held-out rule gives a synset."""
    bucket = int(hashlib.sha1(synset.id.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def split_synsets(synsets: Iterable[Synset]) -> dict[str, list[Synset]]:
    """Apply the held-out rule: {"train": [...], "validation": [...], "test": [...]}, order kept."""
    out: dict[str, list[Synset]] = {name: [] for name in SPLITS}
    for synset in synsets:
        out[synset_split(synset)].append(synset)
    return out


def _gloss_task(
    synsets: Iterable[Synset] | None, label_of: Callable[[Synset], int], label_names: tuple[str, ...]
) -> dict[str, TextClassification]:
    splits = split_synsets(load_wordnet() if synsets is None else synsets)
    return {
        name: TextClassification([s.gloss for s in part], [label_of(s) for s in part], label_names)
        for name, part in splits.items()
    }


def wordnet_pos_task(synsets: Iterable[Synset] | None = None) -> dict[str, TextClassification]:
    """Part of speech from the gloss: {"train", "validation", "test"} -> :class:`TextClassification` with
    label names ("noun", "verb", "adj", "adv"). ``synsets``: default :func:`load_wordnet`."""
    return _gloss_task(synsets, lambda s: PARTS_OF_SPEECH.index(s.pos), PARTS_OF_SPEECH)


def wordnet_lexname_task(synsets: Iterable[Synset] | None = None) -> dict[str, TextClassification]:
    """Lexicographer file from the gloss (45 classes; label i is lex_filenum i, named by :data:`LEXNAMES`):
    {"train", "validation", "test"} -> :class:`TextClassification`. ``synsets``: default :func:`load_wordnet`."""
    return _gloss_task(synsets, lambda s: _LEXNAME_IDS[s.lexname], LEXNAMES)
