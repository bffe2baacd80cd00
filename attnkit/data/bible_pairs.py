"""Spanish-English verse pairs: the Reina-Valera 1909 against the World English Bible.

Both Bibles come as SWORD modules from Debian: ``sword-text-sparv`` (``spaRV1909eb``, Spanish) and
``sword-text-web`` (``engWEB2015eb``, English), read with ``pysword`` (PyPI ``pysword`` or Debian
``python3-pysword``). Verses are paired by reference (book, chapter, verse) over the 66 books both
hold. On 2026-11-30 (module versions 2.60 and 426.0) that gives 30,873 pairs.

Cleaning. The raw verses are OSIS XML fragments, read with ``clean=False`` and cleaned by
:func:`clean_verse`: footnotes and cross-references (``<note>``), the speaker labels of the Song of
Songs (``<speaker>``) and headings that are not part of the text (a ``<title>`` not marked canonical)
are removed with their text; the psalm titles, canonical, which the Reina-Valera has in verse 1 too,
are kept; every other tag is removed and its text kept; entities are decoded and whitespace becomes
single spaces. The WEB module appends its glossary to Revelation 22:21 after the book's end marker:
text after a book's end is dropped. Two habits of the Reina-Valera are undone: the subscriptions it
appends to the epistles ("Amén. Enviada de Roma á los Gálatas.", :func:`strip_subscription`) and the
capitals of each chapter's opening words ("EN el principio", :func:`recase_chapter_openings`).

Numbering. The Reina-Valera module declares the KJV versification but numbers some chapters as the
Hebrew Bible does (Numbers 13 starts with the KJV's Numbers 12:16, Job 39-41 are shifted by three
verses, ...): paired by reference, about 200 verses there would not be translations of each other.
Both the Reina-Valera and the KJV (Debian ``sword-text-kjv``, numbered as the WEB is) tag their
words with Strong's numbers, so a Spanish verse is kept only when its Strong's numbers match those
of the KJV verse of the same reference (:func:`numbering_agrees`: Jaccard overlap at least
:data:`MIN_OVERLAP`, and no lower than with the KJV verses just before and after). Left as they are:
Romans 14:23, where the WEB has the doxology the Reina-Valera has in 16:25-27, and a few verses where
the two follow different Greek texts (1 John 5:7, Acts 9:6).

Reading the three modules through pysword takes about three minutes, so the pairs are cached as a
TSV under ``cache_dir() / "bible_pairs"``, named by the modules' versions, their dates in its header.
The held-out rule is the project's (:func:`attnkit.data.translation.split_of`) on the Spanish side,
the source: pairs are :class:`attnkit.data.translation.Pair` records with the Spanish in ``de`` (the
field names come from the German-English corpus) and the English in ``en``.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .descriptions import read_pairs_tsv, write_pairs_tsv
from .kjv import SWORD_PATH, cache_dir
from .translation import SPLITS, Pair, split_pairs

SPANISH = "spaRV1909eb"
ENGLISH = "engWEB2015eb"
REFERENCE = "engKJV2006eb"  # numbered as the WEB is, tagged with Strong's numbers as the Reina-Valera is
PACKAGES = {SPANISH: "sword-text-sparv", ENGLISH: "sword-text-web", REFERENCE: "sword-text-kjv"}
MIN_OVERLAP = 0.2
CACHE_VERSION = 1  # bump when the cleaning or the pairing changes, so old caches are not reused

# Elements dropped with their text: notes (footnotes, cross-references), the Song of Songs' speaker
# labels and headings that are not part of the text (a canonical title, the psalm titles, is kept).
_DROPPED = re.compile(
    r"<note\b[^>]*>.*?</note>|<speaker\b[^>]*>.*?</speaker>|<title\b(?![^>]*canonical=\"true\")[^>]*>.*?</title>",
    re.DOTALL,
)
_NOTE = re.compile(r"<note\b[^>]*>.*?</note>", re.DOTALL)
_BOOK_END = re.compile(r'<div\b(?=[^>]*\btype="book")(?=[^>]*\beID=)[^>]*/>')
_TAG = re.compile(r"<[^<>]*>")
_GAP = "\x00"  # where markup was: a space between two letters ("enviada</w><w>por"), nothing elsewhere
_GAP_IN_WORD = re.compile(r"(?<=\w)\x00+(?=\w)")
_SPACES = re.compile(r"\s+")
_LEMMA = re.compile(r'\blemma="([^"]*)"')
_STRONGS = re.compile(r"^(?:strong:)?([GH]\d+)$")  # "strong:G2424 G5547": the prefix is not repeated
_SUBSCRIPTION = re.compile(r"(?<=Amén\.) [^.]*\b(?:escrita|enviada)\b[^.]*\.$", re.IGNORECASE)
_CAPITALS = re.compile(r"\b[^\W\d_]{2,}\b")  # words of letters; which of them are all capitals is tested
_WORD = re.compile(r"\b[^\W\d_]+\b")


@dataclass(frozen=True)
class Verse:
    """A verse reference in OSIS names, e.g. Verse("John", 3, 16)."""

    book: str
    chapter: int
    verse: int

    def __str__(self) -> str:
        return f"{self.book} {self.chapter}:{self.verse}"


# --- one verse ----------------------------------------------------------------------------------

def clean_verse(raw: str) -> str:
    """An OSIS verse as pysword gives it with ``clean=False`` -> its text on one line.

    >>> clean_verse('<w lemma="strong:H0430">God</w><note placement="foot">Hebrew: Elohim</note><w>created</w>.')
    'God created.'
    """
    end = _BOOK_END.search(raw)
    if end:
        raw = raw[: end.start()]
    text = _TAG.sub(_GAP, _DROPPED.sub(_GAP, raw))
    text = _GAP_IN_WORD.sub(" ", text).replace(_GAP, "")
    return _SPACES.sub(" ", html.unescape(text)).strip()


def strongs_numbers(raw: str) -> frozenset[str]:
    """The Strong's numbers an OSIS verse tags its words with (``lemma="strong:H0430"`` -> "H0430"),
    notes left out."""
    lemmas = (m.group(1) for m in _LEMMA.finditer(_NOTE.sub(" ", raw)))
    return frozenset(m.group(1) for lemma in lemmas for token in lemma.split() if (m := _STRONGS.match(token)))


def strip_subscription(text: str) -> str:
    """Drop the Reina-Valera's subscription from an epistle's last verse: "... Amén. Enviada de Roma á
    los Gálatas." -> "... Amén." (the subscriptions are not in the WEB)."""
    return _SUBSCRIPTION.sub("", text)


def recase_chapter_openings(verses: dict[Verse, str]) -> dict[Verse, str]:
    """Undo the capitals of each chapter's opening words ("LA SEGUNDA suerte" -> "La segunda suerte").

    In verse 1 of a chapter, a word of two or more capitals that the text also writes otherwise takes
    its most frequent other spelling, with a capital initial at the start of a sentence. Words never
    written otherwise are left alone: the acrostic "ALEPH" of Psalm 119, the divine name "JAH", and a
    score of opening words that occur only there ("EXISTÍA entonces Jephté").
    """
    spellings: dict[str, Counter] = {}
    for text in verses.values():
        for word in _WORD.findall(text):
            if not word.isupper():
                spellings.setdefault(word.lower(), Counter())[word] += 1

    def recase(text: str) -> str:
        def spelling(match: re.Match) -> str:
            word = match.group(0)
            if not word.isupper() or word.lower() not in spellings:
                return word
            new = spellings[word.lower()].most_common(1)[0][0]
            before = text[: match.start()].rstrip(" ¡¿(«“\"'")
            sentence_start = not before or before.endswith((".", "!", "?", ":"))
            return new[0].upper() + new[1:] if sentence_start else new

        return _CAPITALS.sub(spelling, text)

    return {ref: recase(text) if ref.verse == 1 else text for ref, text in verses.items()}


# --- the modules --------------------------------------------------------------------------------

def _package_hint(module: str) -> str:
    package = PACKAGES.get(module, "the package holding the module")
    return f"install the Debian package {package} (`apt-get install {package}`)"


def module_conf(module: str, sword_path: str | Path = SWORD_PATH) -> dict[str, str]:
    """The settings of a SWORD module's .conf file (``Version``, ``SwordVersionDate``, ...; the first
    value of a repeated key), read without pysword: the cache's name needs them."""
    mods = Path(sword_path) / "mods.d"
    for conf in sorted(mods.glob("*.conf")) if mods.is_dir() else []:
        lines = conf.read_text(encoding="utf-8", errors="replace").splitlines()
        if any(line.strip().lower() == f"[{module.lower()}]" for line in lines):
            settings: dict[str, str] = {}
            for line in lines:
                key, equals, value = line.partition("=")
                if equals and not line.startswith(("#", " ")):
                    settings.setdefault(key.strip(), value.strip())
            return settings
    raise FileNotFoundError(f"SWORD module {module} not found in {mods}: {_package_hint(module)}")


def read_module(module: str, sword_path: str | Path = SWORD_PATH, progress: bool = False) -> dict[Verse, str]:
    """Every verse of a SWORD Bible module as raw OSIS (``clean=False``), empty verses included, in
    canonical order."""
    try:
        from pysword.modules import SwordModules
    except ImportError as e:
        raise ImportError(
            "reading the Bibles needs pysword: `pip install pysword` (or Debian `python3-pysword`)"
        ) from e
    sword_path = Path(sword_path)
    if not (sword_path / "mods.d").is_dir():
        raise FileNotFoundError(f"no SWORD library at {sword_path} (no mods.d folder): {_package_hint(module)}")
    modules = SwordModules(str(sword_path))
    found = modules.parse_modules()
    if module not in found:
        raise FileNotFoundError(f"SWORD module {module} not found under {sword_path} "
                                f"(found: {sorted(found) or 'none'}): {_package_hint(module)}")
    bible = modules.get_bible_from_module(module)
    books = bible.get_structure().get_books()
    verses: dict[Verse, str] = {}
    for testament in ("ot", "nt"):
        for book in books.get(testament, []):
            if progress:
                print(f"reading {book.name} from {module}", flush=True)
            for chapter, length in enumerate(book.chapter_lengths, 1):
                texts = list(bible.get_iter(books=[book.osis_name], chapters=[chapter], clean=False))
                if len(texts) != length:  # pysword skips verses it cannot read: the numbering would shift
                    raise RuntimeError(f"{module}: {book.osis_name} {chapter} gave {len(texts)} verses, "
                                       f"its versification says {length}")
                for number, raw in enumerate(texts, 1):
                    verses[Verse(book.osis_name, chapter, number)] = raw
    return verses


# --- pairing --------------------------------------------------------------------------------------

def _overlap(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def numbering_agrees(source: dict[Verse, frozenset[str]], reference: dict[Verse, frozenset[str]]) -> set[Verse]:
    """The verses of ``source`` numbered as in ``reference``, both given as Strong's numbers per verse
    in canonical order: those whose numbers overlap (Jaccard) the reference verse of the same number by
    at least :data:`MIN_OVERLAP`, and by no less than they overlap the reference verses before and after."""
    order = list(reference)
    position = {ref: i for i, ref in enumerate(order)}
    agree = set()
    for ref, numbers in source.items():
        if ref not in position:
            continue
        i = position[ref]
        own = _overlap(numbers, reference[ref])
        neighbours = [_overlap(numbers, reference[order[j]]) for j in (i - 1, i + 1) if 0 <= j < len(order)]
        if own >= MIN_OVERLAP and all(own >= n for n in neighbours):
            agree.add(ref)
    return agree


def pair_verses(source: dict[Verse, str], target: dict[Verse, str], keep: Iterable[Verse] | None = None) -> list[Pair]:
    """Verses with the same reference in both, in ``source``'s order, when both have text (and the
    reference is in ``keep``, when given)."""
    keep = set(keep) if keep is not None else None
    return [Pair(text, target[ref]) for ref, text in source.items()
            if text and target.get(ref) and (keep is None or ref in keep)]


def build_bible_pairs(sword_path: str | Path = SWORD_PATH, progress: bool = False) -> list[Pair]:
    """The (Spanish, English) verse pairs read from the SWORD modules, uncached (about three minutes)."""
    spanish_raw = read_module(SPANISH, sword_path, progress)
    agree = numbering_agrees(
        {ref: strongs_numbers(raw) for ref, raw in spanish_raw.items()},
        {ref: strongs_numbers(raw) for ref, raw in read_module(REFERENCE, sword_path, progress).items()},
    )
    spanish = recase_chapter_openings({ref: strip_subscription(clean_verse(raw)) for ref, raw in spanish_raw.items()})
    english = {ref: clean_verse(raw) for ref, raw in read_module(ENGLISH, sword_path, progress).items()}
    return pair_verses(spanish, english, agree)


def load_bible_pairs(
    sword_path: str | Path = SWORD_PATH, cache: str | Path | None = None, progress: bool = False
) -> list[Pair]:
    """Every (Spanish, English) verse pair, from the cache or read through pysword and cached.

    Args:
        sword_path: the SWORD library root (Debian installs modules in /usr/share/sword).
        cache: the cache folder, default ``cache_dir() / "bible_pairs"``; the file is named by the
            modules' versions, so a new Debian package version is read again.
        progress: print a line per book read through pysword (about three minutes in all).
    """
    confs = {module: module_conf(module, sword_path) for module in (SPANISH, ENGLISH, REFERENCE)}
    versions = {module: conf.get("Version", "unknown") for module, conf in confs.items()}
    folder = Path(cache) if cache is not None else cache_dir() / "bible_pairs"
    path = folder / ("es-en_" + "_".join(f"{m}-{v}" for m, v in versions.items()) + f"_v{CACHE_VERSION}.tsv")
    if path.is_file():
        return read_pairs_tsv(path)
    pairs = build_bible_pairs(sword_path, progress)
    modules = ", ".join(f"{m} {versions[m]} of {conf.get('SwordVersionDate', 'unknown date')} (Debian {PACKAGES[m]})"
                        for m, conf in confs.items())
    write_pairs_tsv(path, pairs, f"es-en verse pairs, {len(pairs)}, from {modules}")
    return pairs


def load_es_en(split: str | None = None, **load_args):
    """Spanish-English verse pairs of one split (a list of :class:`Pair`, Spanish in ``de``), or all
    three as a dict; the held-out rule looks at the Spanish verse. ``load_args`` go to
    :func:`load_bible_pairs`."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    splits = split_pairs(load_bible_pairs(**load_args))
    return splits if split is None else splits[split]
