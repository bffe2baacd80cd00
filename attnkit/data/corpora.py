"""The corpora a run config can name (``[data] corpus = ...``).

- text corpora (language models, masked LMs): :data:`TEXT_CORPORA` maps a name to a function giving
  (training text, held-out text); any other value is read as the path of a UTF-8 text file, whose last
  5% is held out.
- parallel corpora (translation): :data:`PAIR_CORPORA` maps a name to a function giving the splits
  ``{"train", "validation", "test"}`` of source/target :class:`~attnkit.data.translation.Pair` lists.

- synthetic tasks (:data:`SYNTHETIC_CORPORA`): sequences drawn from a seed, no text; the language-model
  runs build their task from the name (``"duplication"``: the Reformer paper's ``0 w 0 w``, of length
  ``data.context`` over ``data.vocab_size`` symbols, tokenizer ``"ids"``).
- classification tasks (:data:`CLASSIFICATION_CORPORA`): labelled texts, a function giving the splits
  ``{"train", "validation", "test"}`` of :class:`~attnkit.data.wordnet.TextClassification`
  (``"wordnet-pos"``: part of speech from a WordNet gloss, 4 classes; ``"wordnet-lexname"``: its
  lexicographer file, 45 classes).
- text-to-text mixtures (:data:`TEXT2TEXT_CORPORA`, T5): tasks named by a prefix on the input; the
  registry is :data:`attnkit.data.text2text.MIXTURES` itself, {mixture: its task names}, and
  :func:`~attnkit.data.text2text.mixture_splits` loads one (``"t5-mixture"``: German and French to
  English, WordNet part of speech and definitions; ``"t5-de-en"``, ``"t5-fr-en"``, ``"t5-pos"``,
  ``"t5-define"``: one task each).

A new corpus is a loader plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .bible_pairs import load_es_en
from .descriptions import load_de_en_all, load_descriptions
from .english import english_splits
from .kjv import kjv_splits
from .text2text import MIXTURES
from .translation import load_de_en
from .wordnet import wordnet_lexname_task, wordnet_pos_task

TEXT_CORPORA: dict[str, Callable[[], tuple[str, str]]] = {
    "kjv": kjv_splits,
    "english": english_splits,  # GCIDE (without its WordNet entries), the KJV, English package descriptions
}
PAIR_CORPORA: dict[str, Callable[[], dict]] = {
    "de-en": lambda: load_de_en(),
    "de-en-descriptions": lambda: load_descriptions("de"),  # Debian's package-description translations
    "fr-en-descriptions": lambda: load_descriptions("fr"),
    "es-en-bible": lambda: load_es_en(),  # Reina-Valera 1909 against the World English Bible, Spanish source
    "de-en-all": lambda: load_de_en_all(),  # de-en + de-en-descriptions for training; test sets per member
}
SYNTHETIC_CORPORA = ("duplication",)
CLASSIFICATION_CORPORA: dict[str, Callable[[], dict]] = {
    "wordnet-pos": lambda: wordnet_pos_task(),  # Debian wordnet-base; sha1 split of the synsets
    "wordnet-lexname": lambda: wordnet_lexname_task(),
}
TEXT2TEXT_CORPORA: dict[str, tuple[str, ...]] = MIXTURES  # {mixture: task names}, one registry
HELD_OUT_FRACTION = 0.05


def text_splits(corpus: str) -> tuple[str, str]:
    """(training text, held-out text) of a named text corpus or of a UTF-8 text file."""
    if corpus in TEXT_CORPORA:
        return TEXT_CORPORA[corpus]()
    path = Path(corpus)
    if not path.is_file():
        raise FileNotFoundError(f"corpus {corpus!r} is neither a text corpus ({', '.join(TEXT_CORPORA)}) "
                                "nor an existing text file")
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * (1 - HELD_OUT_FRACTION))
    return text[:cut], text[cut:]


def pair_splits(corpus: str) -> dict:
    """{"train", "validation", "test"} pairs of a named parallel corpus."""
    if corpus not in PAIR_CORPORA:
        raise KeyError(f"corpus {corpus!r} is not a parallel corpus ({', '.join(PAIR_CORPORA)})")
    return PAIR_CORPORA[corpus]()
