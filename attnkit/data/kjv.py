"""The King James Bible (Debian ``sword-text-kjv``) as plain text, one book at a time.

The text is read with ``pysword`` from the SWORD module ``engKJV2006eb`` (the 2006 KJV edition by
eBible.org) and cached as one UTF-8 file per book under ``~/.cache/attnkit/kjv/`` (or
``$ATTNKIT_CACHE/kjv``): reading all 66 books through pysword takes about a minute, reading the
cache a few milliseconds. Each book is its verses, one per line, with SWORD markup, notes and the
paragraph sign removed, so the corpus is about 4.3 million characters.

Held-out evaluation uses whole books, never verses drawn from a book that is also trained on:
:data:`VALIDATION_BOOKS` are Joshua (narrative, 100k characters) and Romans (an epistle, 50k
characters), about 3.5% of the text.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..io import atomic_write_text

SWORD_PATH = Path("/usr/share/sword")
MODULE = "engKJV2006eb"
VALIDATION_BOOKS = ("Joshua", "Romans")

_SPACES = re.compile(r"[ \t\r\n\u00a0]+")
_USFM_MARKER = re.compile(r"\\[a-z]+\d*\*?")  # e.g. "\nd LORD": a stray USFM "divine name" marker
CACHE_VERSION = 1  # bump when the cleaning changes, so old caches are not reused


def cache_dir() -> Path:
    """Where attnkit caches extracted corpora: ``$ATTNKIT_CACHE`` or ``~/.cache/attnkit``."""
    return Path(os.environ.get("ATTNKIT_CACHE") or Path.home() / ".cache" / "attnkit")


def clean_verse(text: str) -> str:
    """A verse as pysword gives it (``clean=True``) -> one line: no pilcrow, single spaces."""
    text = text.replace("\u00b6", " ")  # the paragraph sign starts some verses
    text = _USFM_MARKER.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def _open_bible(sword_path: Path, module: str):
    try:
        from pysword.modules import SwordModules
    except ImportError as e:
        raise ImportError(
            "reading the KJV needs pysword: `pip install pysword` (or Debian `python3-pysword`)"
        ) from e
    hint = "install the Debian package sword-text-kjv (`apt-get install sword-text-kjv`)"
    if not (Path(sword_path) / "mods.d").is_dir():
        raise FileNotFoundError(f"no SWORD library at {sword_path} (no mods.d folder): {hint}")
    modules = SwordModules(str(sword_path))
    found = modules.parse_modules()
    if module not in found:
        raise FileNotFoundError(
            f"SWORD module {module} not found under {sword_path} (found: {sorted(found) or 'none'}): {hint}"
        )
    return modules.get_bible_from_module(module)


def _book_text(bible, osis: str) -> str:
    verses = (clean_verse(v) for v in bible.get_iter(books=[osis], clean=True))
    return "\n".join(v for v in verses if v) + "\n"


def read_book(osis: str, sword_path: str | Path = SWORD_PATH, module: str = MODULE) -> str:
    """One book straight from the SWORD module, uncached (``osis`` as "Gen", "Ruth", "Phlm")."""
    return _book_text(_open_bible(Path(sword_path), module), osis)


def book_names(sword_path: str | Path = SWORD_PATH, module: str = MODULE) -> list[tuple[str, str]]:
    """(OSIS name, English name) of every book in canonical order, e.g. ("Gen", "Genesis")."""
    structure = _open_bible(Path(sword_path), module).get_structure()
    books = structure.get_books()
    return [(b.osis_name, b.name) for testament in ("ot", "nt") for b in books.get(testament, [])]


def load_kjv(
    sword_path: str | Path = SWORD_PATH,
    module: str = MODULE,
    cache: str | Path | None = None,
    progress: bool = False,
) -> dict[str, str]:
    """The whole Bible: {English book name: text} in canonical order, verses one per line.

    Args:
        sword_path: the SWORD library root (Debian installs modules in /usr/share/sword).
        module: the SWORD module name.
        cache: the cache folder, default ``cache_dir() / "kjv" / f"{module}-v{CACHE_VERSION}"``.
        progress: print a line per book read through pysword (the first run takes about a minute).
    """
    folder = Path(cache) if cache is not None else cache_dir() / "kjv" / f"{module}-v{CACHE_VERSION}"
    index_file = folder / "books.tsv"
    if index_file.is_file():
        names = [line.split("\t") for line in index_file.read_text(encoding="utf-8").splitlines() if line]
        files = [folder / f"{i:02d}_{osis}.txt" for i, (osis, _) in enumerate(names)]
        if all(f.is_file() for f in files):
            return {name: f.read_text(encoding="utf-8") for (_, name), f in zip(names, files)}

    bible = _open_bible(Path(sword_path), module)
    structure = bible.get_structure().get_books()
    names = [(b.osis_name, b.name) for testament in ("ot", "nt") for b in structure.get(testament, [])]
    out = {}
    for i, (osis, name) in enumerate(names):
        path = folder / f"{i:02d}_{osis}.txt"
        if path.is_file():
            out[name] = path.read_text(encoding="utf-8")
            continue
        if progress:
            print(f"reading {name} from {module} ({i + 1}/{len(names)})", flush=True)
        text = _book_text(bible, osis)
        atomic_write_text(path, text)
        out[name] = text
    # written last: its presence says every book file is there
    atomic_write_text(index_file, "".join(f"{osis}\t{name}\n" for osis, name in names))
    return out


def kjv_splits(
    validation_books: tuple[str, ...] = VALIDATION_BOOKS, **load_args
) -> tuple[str, str]:
    """(training text, validation text): the books of ``validation_books`` held out whole, the
    rest concatenated in canonical order. ``load_args`` go to :func:`load_kjv`."""
    books = load_kjv(**load_args)
    unknown = [b for b in validation_books if b not in books]
    if unknown:
        raise ValueError(f"unknown book(s) {unknown}; books are named as in: {', '.join(books)}")
    train = "".join(text for name, text in books.items() if name not in validation_books)
    valid = "".join(books[name] for name in validation_books)
    return train, valid
