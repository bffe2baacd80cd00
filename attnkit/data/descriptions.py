"""German-English and French-English pairs from Debian's package-description translations.

Debian's description translation project (DDTP) translates the descriptions of packages by hand. apt
fetches them as "Translation" index files, one per language and suite, made of records like::

    Package: 0ad-data
    Description-md5: 26581e685027d5ae84824362a4ba59ee
    Description-de: Echtzeit-Strategiespiel über antike Kriegsführung (Datendateien)
     0 A.D. ist ein freies, quelloffenes, plattformübergreifendes
     ...
     .
     Dieses Paket enthält die wichtigsten von 0 A.D. benötigten Datendateien.

The first line of ``Description-<lang>`` is the synopsis; the lines after it, each starting with a
space, form the long description, whose paragraphs are separated by `` .`` lines. ``Description-md5``
is the md5 of the English description a translation was made from, so records of two languages with
the same md5 are translations of each other. We pair the synopses, and paragraph i with paragraph i;
a record whose paragraph count differs from its English one (a translation that merged or split
paragraphs) is skipped whole. Identical (source, target) pairs are kept once: many packages share a
description or a paragraph ("This package contains the documentation."), which would otherwise be
trained on, and scored, many times. On 2026-11-30 (Debian 12 "bookworm", main) this gives 32,774
German-English and 50,040 French-English pairs (40,278 and 59,747 before removing the repeats),
about 19 English words each, technical and repetitive ("Dieses Paket enthält ..." / "This package
contains ..."); a hundred or so are code or names left untranslated (source = target).

The files are fetched with apt into a private lists folder (``-o Dir::State::Lists=...``), never the
system's, and follow the archive, so the extracted pairs are cached as a TSV named by the fetch date
under ``cache_dir() / "descriptions"``; :func:`load_description_pairs` reads the newest cache and
fetches only when there is none, :func:`refresh` fetches again. The held-out rule is the project's
(:func:`attnkit.data.translation.split_of`) applied to the source (German or French) side. Pairs are
:class:`attnkit.data.translation.Pair` records with the source in ``de`` and the English in ``en``
(the field names come from the German-English corpus: for French-English, ``pair.de`` is French).
"""

from __future__ import annotations

import bz2
import contextlib
import datetime
import gzip
import lzma
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_write_text
from .kjv import cache_dir
from .translation import SPLITS, Pair, load_de_en, split_pairs

LANGUAGES = ("de", "fr")
CACHE_VERSION = 1  # bump when the parsing or the pairing changes, so old caches are not reused

_SPACES = re.compile(r"\s+")
_DATED_CACHE = re.compile(r"^(de|fr)-en_(\d{4}-\d{2}-\d{2})\.tsv$")


@dataclass(frozen=True)
class Description:
    """One record of a Translation file: a package's description in one language."""

    package: str
    md5: str  # of the English description this one translates
    language: str
    synopsis: str
    paragraphs: tuple[str, ...]


def _one_line(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _stanzas(lines: Iterable[str]) -> Iterator[list[str]]:
    """The records of a deb822 file as lists of lines, split at blank lines."""
    stanza: list[str] = []
    for line in lines:
        line = line.rstrip("\n")
        if line.strip():
            stanza.append(line)
        elif stanza:
            yield stanza
            stanza = []
    if stanza:
        yield stanza


def _fields(stanza: list[str]) -> dict[str, list[str]]:
    """{field name: [first line, continuation lines...]} of one record."""
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in stanza:
        if line[0] in " \t":
            if current is not None:  # a continuation line before any field is malformed: dropped
                current.append(line)
        elif ":" in line:
            name, value = line.split(":", 1)
            current = fields[name.strip()] = [value.strip()]
    return fields


def _paragraphs(body: list[str]) -> tuple[str, ...]:
    """The long description's paragraphs, each on one line (` .` lines separate them)."""
    paragraphs: list[list[str]] = [[]]
    for line in body:
        if line.strip() == ".":
            paragraphs.append([])
        else:
            paragraphs[-1].append(line)
    return tuple(text for text in (_one_line(" ".join(p)) for p in paragraphs) if text)


def parse_translation(lines: Iterable[str]) -> Iterator[Description]:
    """The descriptions of a Translation file's lines (records without a description are skipped)."""
    for stanza in _stanzas(lines):
        fields = _fields(stanza)
        md5 = fields.get("Description-md5", [""])[0]
        for name, value in fields.items():
            if name.startswith("Description-") and name != "Description-md5":
                if md5 and _one_line(value[0]):
                    yield Description(
                        package=fields.get("Package", [""])[0],
                        md5=md5,
                        language=name.removeprefix("Description-"),
                        synopsis=_one_line(value[0]),
                        paragraphs=_paragraphs(value[1:]),
                    )


def align(source: Description, english: Description) -> list[Pair]:
    """Synopsis with synopsis and paragraph i with paragraph i; nothing when the paragraph counts differ."""
    if source.md5 != english.md5:
        raise ValueError(f"{source.package}: description md5 {source.md5} does not match the English "
                         f"record's {english.md5}")
    if len(source.paragraphs) != len(english.paragraphs):
        return []
    return [Pair(s, e) for s, e in zip((source.synopsis, *source.paragraphs), (english.synopsis, *english.paragraphs))]


def description_pairs(sources: Iterable[Description], english: Iterable[Description]) -> list[Pair]:
    """Join the source-language descriptions with the English ones on ``md5``: the aligned pairs, in
    the order of ``sources``, each identical (source, target) pair once."""
    by_md5: dict[str, Description] = {}
    for record in english:
        by_md5.setdefault(record.md5, record)
    seen: set[Pair] = set()
    out: list[Pair] = []
    for record in sources:
        if record.md5 in by_md5:
            for pair in align(record, by_md5[record.md5]):
                if pair not in seen:
                    seen.add(pair)
                    out.append(pair)
    return out


# --- the Translation files --------------------------------------------------------------------

def lists_dir() -> Path:
    """The private apt lists folder the Translation files are fetched into."""
    return cache_dir() / "descriptions" / "apt-lists"


def fetch_lists(folder: str | Path | None = None, languages: Iterable[str] = ("en", *LANGUAGES)) -> Path:
    """Fetch the Translation files with ``apt-get update`` into ``folder`` (default :func:`lists_dir`).

    apt's lists folder, cache files and Packages indexes are redirected or switched off, so the
    system's package lists are left untouched; root is not needed. Returns the folder.
    """
    folder = Path(folder) if folder is not None else lists_dir()
    if shutil.which("apt-get") is None:
        raise FileNotFoundError("apt-get not found: fetching Debian's description translations needs apt "
                                "(a Debian or Ubuntu system)")
    (folder / "partial").mkdir(parents=True, exist_ok=True)
    command = [
        "apt-get", "-q",
        "-o", f"Dir::State::Lists={folder.resolve()}",  # our own folder, never /var/lib/apt/lists
        "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",  # no /var/cache/apt/*.bin rebuilt
        "-o", f"Acquire::Languages={','.join(languages)}",
        "-o", "Acquire::IndexTargets::deb::Packages::DefaultEnabled=false",  # only the Translation files
        "-o", "Acquire::GzipIndexes=true",  # keep them compressed on disk
        "update",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed ({result.returncode}):\n{result.stderr.strip()}")
    return folder


def translation_files(language: str, folder: str | Path | None = None) -> list[Path]:
    """The Translation files of one language in an apt lists folder (one per suite and component)."""
    folder = Path(folder) if folder is not None else lists_dir()
    suffixes = ("", ".lz4", ".gz", ".xz", ".bz2")  # apt keeps them plain or compressed, by its settings
    return sorted(p for p in folder.glob(f"*_i18n_Translation-{language}*")
                  if p.is_file() and p.name.split(f"Translation-{language}", 1)[1] in suffixes)


def _lz4_bytes(path: Path) -> bytes:
    try:
        import lz4.frame
    except ImportError:
        lz4cat = shutil.which("lz4cat")
        if lz4cat is None:
            raise FileNotFoundError(f"{path} is lz4-compressed: install the Debian package lz4 "
                                    "(`apt-get install lz4`) or `pip install lz4`") from None
        return subprocess.run([lz4cat, str(path)], capture_output=True, check=True).stdout
    return lz4.frame.decompress(path.read_bytes())


def read_translation_file(path: str | Path) -> list[str]:
    """The lines of a Translation file, plain or compressed (lz4, gz, xz, bz2) as apt left it."""
    path = Path(path)
    openers = {".gz": gzip.decompress, ".xz": lzma.decompress, ".bz2": bz2.decompress}
    if path.suffix == ".lz4":
        data = _lz4_bytes(path)
    elif path.suffix in openers:
        data = openers[path.suffix](path.read_bytes())
    else:
        data = path.read_bytes()
    return data.decode("utf-8").splitlines()


def _descriptions(language: str, folder: Path) -> Iterator[Description]:
    files = translation_files(language, folder)
    if not files:
        raise FileNotFoundError(
            f"no Translation-{language} files in {folder}: fetch them with attnkit.data.descriptions.fetch_lists() "
            f"(apt-get -o Dir::State::Lists={folder} -o Acquire::Languages=en,de,fr update)"
        )
    for path in files:
        yield from (d for d in parse_translation(read_translation_file(path)) if d.language == language)


def build_pairs(language: str, folder: str | Path | None = None) -> list[Pair]:
    """The (language, English) pairs of the Translation files in an apt lists folder, uncached."""
    _check_language(language)
    folder = Path(folder) if folder is not None else lists_dir()
    return description_pairs(_descriptions(language, folder), _descriptions("en", folder))


# --- the cache --------------------------------------------------------------------------------

def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")


def _cache_folder(cache: str | Path | None) -> Path:
    return Path(cache) if cache is not None else cache_dir() / "descriptions" / f"v{CACHE_VERSION}"


def cached_files(language: str, cache: str | Path | None = None) -> list[tuple[datetime.date, Path]]:
    """(fetch date, TSV file) of every cached extraction for ``language``, oldest first."""
    _check_language(language)
    folder = _cache_folder(cache)
    found = []
    for path in folder.glob(f"{language}-en_*.tsv") if folder.is_dir() else []:
        match = _DATED_CACHE.match(path.name)
        if match and match.group(1) == language:
            found.append((datetime.date.fromisoformat(match.group(2)), path))
    return sorted(found)


def write_pairs_tsv(path: str | Path, pairs: Iterable[Pair], header: str) -> None:
    """A TSV of pairs: one ``# header`` line, then ``source<TAB>target`` lines.

    Only the first line is a comment: a sentence may itself start with ``#``.
    """
    if "\n" in header:
        raise ValueError(f"the header must be one line, got {header!r}")
    lines = [f"# {header}\n"]
    for pair in pairs:
        if any(c in pair.de + pair.en for c in "\t\n\r"):
            raise ValueError(f"pair holds a tab or line break, which the TSV cannot store: {pair}")
        lines.append(f"{pair.de}\t{pair.en}\n")
    atomic_write_text(path, "".join(lines))


def read_pairs_tsv(path: str | Path) -> list[Pair]:
    """The pairs of a TSV written by :func:`write_pairs_tsv`."""
    with open(path, encoding="utf-8", newline="") as f:  # newline="": a stray \r or \u2028 is text
        lines = f.read().split("\n")
    if not lines[0].startswith("# "):
        raise ValueError(f"{path} is not a pairs TSV: its first line is not a '# ' header")
    pairs = []
    for number, line in enumerate(lines[1:], 2):
        if line:
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}, line {number}: expected source<TAB>target, got {len(fields)} fields")
            pairs.append(Pair(*fields))
    return pairs


def refresh(
    languages: Iterable[str] = LANGUAGES,
    cache: str | Path | None = None,
    folder: str | Path | None = None,
    fetch: bool = True,
) -> dict[str, Path]:
    """Fetch the Translation files (unless ``fetch`` is false) and write today's cache for each language.

    Returns {language: TSV path}, the file named ``<language>-en_<date>.tsv`` with the fetch date.
    """
    languages = tuple(languages)
    for language in languages:
        _check_language(language)
    if fetch:
        folder, fetched = fetch_lists(folder), _today()
    else:
        folder = Path(folder) if folder is not None else lists_dir()
        fetched = _fetch_date(folder, languages)
    out = {}
    for language in languages:
        pairs = build_pairs(language, folder)
        path = _cache_folder(cache) / f"{language}-en_{fetched.isoformat()}.tsv"
        header = (f"{language}-en pairs from Debian's package-description translations, fetched "
                  f"{fetched.isoformat()}: {len(pairs)} pairs from "
                  + ", ".join(p.name for p in translation_files(language, folder)))
        write_pairs_tsv(path, pairs, header)
        out[language] = path
    return out


def _today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def _fetch_date(folder: Path, languages: tuple[str, ...]) -> datetime.date:
    """For a folder fetched earlier: the day its newest Translation file of ``languages`` was written."""
    files = [p for language in languages for p in translation_files(language, folder)]
    if not files:
        return _today()
    newest = max(p.stat().st_mtime for p in files)
    return datetime.datetime.fromtimestamp(newest, datetime.UTC).date()


def load_description_pairs(language: str, cache: str | Path | None = None) -> list[Pair]:
    """Every (``language``, English) pair, from the newest cache; fetched and cached if there is none.

    Args:
        language: "de" or "fr".
        cache: the cache folder, default ``cache_dir() / "descriptions" / f"v{CACHE_VERSION}"``.
    """
    with _cache_lock(cache):  # processes started together fetch once; the others wait and read its cache
        found = cached_files(language, cache)
        path = found[-1][1] if found else refresh([language], cache)[language]
    return read_pairs_tsv(path)


@contextlib.contextmanager
def _cache_lock(cache: str | Path | None):
    """Hold an exclusive lock on the cache folder (``fcntl.flock``; where there is no fcntl, no lock).
    Two runs starting side by side on an empty cache would otherwise both run ``apt-get update`` on
    the one lists folder, and apt refuses the second ("Unable to lock directory")."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        yield
        return
    folder = _cache_folder(cache)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_descriptions(language: str, split: str | None = None, cache: str | Path | None = None):
    """The pairs of one split (a list of :class:`Pair`, source in ``de``), or all three as a dict.

    Args:
        language: "de" (German-English) or "fr" (French-English).
        split: "train", "validation", "test", or None for a dict of the three.
        cache: as for :func:`load_description_pairs`.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    splits = split_pairs(load_description_pairs(language, cache))
    return splits if split is None else splits[split]


# --- German-English, all corpora ------------------------------------------------------------------

DE_EN_ALL_MEMBERS = ("de-en", "de-en-descriptions")


def load_de_en_all(split: str | None = None, descriptions_cache: str | Path | None = None):
    """German-English for training on everything: the Ding dictionary's sentence pairs (corpus ``de-en``)
    and the description pairs (``de-en-descriptions``), split by split, each pair once.

    The held-out rule looks only at the German side, so a German sentence found in both corpora is in
    the same split in both, and no test or validation sentence of either corpus is trained on here.
    The ``"test"`` split is the union of the two test sets, but figures are reported per corpus: score a
    ``de-en-all`` model on each member's own test set, ``pair_splits("de-en")["test"]`` and
    ``pair_splits("de-en-descriptions")["test"]`` (in a program, the translation kind's ``evaluate``
    with ``dataclasses.replace(config.data, corpus="de-en")``; ``attnkit evaluate`` scores a run on the
    corpus it was trained on, here the union).

    Args:
        split: "train", "validation", "test", or None for a dict of the three.
        descriptions_cache: as ``cache`` for :func:`load_description_pairs`.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    members = (load_de_en(), load_descriptions("de", cache=descriptions_cache))
    splits = {name: list(dict.fromkeys(p for member in members for p in member[name])) for name in SPLITS}
    return splits if split is None else splits[split]
