"""Real corpora, tokenizers and batching.

- :mod:`attnkit.data.kjv`: the King James Bible (Debian ``sword-text-kjv``, read with ``pysword``),
  cached per book; :func:`kjv_splits` holds out whole books for validation.
- :mod:`attnkit.data.translation`: German-English sentence pairs from the Ding dictionary (Debian
  ``trans-de-en``) with the project's sha1 held-out rule.
- :mod:`attnkit.data.tokenizers`: :class:`CharTokenizer`, :class:`ByteTokenizer` and
  :class:`SubwordTokenizer` (BPE, WordPiece, Unigram, GPT-2), all with ``save``/``load``;
  :data:`TOKENIZERS` names them for run configs.
- :mod:`attnkit.data.corpora`: the corpora run configs name (:data:`TEXT_CORPORA`, :data:`PAIR_CORPORA`,
  :data:`CLASSIFICATION_CORPORA`).
- :mod:`attnkit.data.descriptions`: German-English and French-English pairs from Debian's package-description
  translations; :mod:`attnkit.data.bible_pairs`: Spanish-English verse pairs (Reina-Valera, World English
  Bible). Both are registered in :data:`PAIR_CORPORA`.
- :mod:`attnkit.data.wordnet`: WordNet's synsets (Debian ``wordnet-base``) and two gloss
  classification tasks (part of speech, lexicographer file) split by a sha1 rule.
- :mod:`attnkit.data.text2text`: text-to-text tasks with prefixes (T5) and their mixtures, registered in
  :data:`TEXT2TEXT_CORPORA`.
- :mod:`attnkit.data.batching`: padding, length-bucketed batches, random LM windows.
"""

from .batching import pad_sequences, random_windows, token_batches
from .corpora import (
    CLASSIFICATION_CORPORA,
    PAIR_CORPORA,
    SYNTHETIC_CORPORA,
    TEXT2TEXT_CORPORA,
    TEXT_CORPORA,
    pair_splits,
    text_splits,
)
from .kjv import VALIDATION_BOOKS, kjv_splits, load_kjv
from .tokenizers import (
    TOKENIZERS,
    ByteTokenizer,
    CharTokenizer,
    IdTokenizer,
    SubwordTokenizer,
    TokenizerSpec,
    gpt2_tokenizer,
    load_tokenizer,
)
from .translation import (
    Pair,
    load_de_en,
    load_pairs,
    parse_line,
    parse_lines,
    references_by_source,
    split_of,
    split_pairs,
)
from .wordnet import (
    Synset,
    TextClassification,
    load_wordnet,
    parse_synset_line,
    split_synsets,
    synset_split,
    wordnet_lexname_task,
    wordnet_pos_task,
)

__all__ = [
    "Synset",
    "TextClassification",
    "load_wordnet",
    "parse_synset_line",
    "split_synsets",
    "synset_split",
    "wordnet_lexname_task",
    "wordnet_pos_task",
    "ByteTokenizer",
    "CLASSIFICATION_CORPORA",
    "CharTokenizer",
    "IdTokenizer",
    "PAIR_CORPORA",
    "SYNTHETIC_CORPORA",
    "Pair",
    "SubwordTokenizer",
    "TEXT2TEXT_CORPORA",
    "TEXT_CORPORA",
    "TOKENIZERS",
    "TokenizerSpec",
    "VALIDATION_BOOKS",
    "kjv_splits",
    "load_de_en",
    "load_kjv",
    "load_pairs",
    "gpt2_tokenizer",
    "load_tokenizer",
    "pair_splits",
    "pad_sequences",
    "parse_line",
    "parse_lines",
    "random_windows",
    "references_by_source",
    "split_of",
    "split_pairs",
    "text_splits",
    "token_batches",
]

