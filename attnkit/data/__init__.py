"""Real corpora, tokenizers and batching.

- :mod:`attnkit.data.kjv`: the King James Bible (Debian ``sword-text-kjv``, read with ``pysword``),
  cached per book; :func:`kjv_splits` holds out whole books for validation.
- :mod:`attnkit.data.translation`: German-English sentence pairs from the Ding dictionary (Debian
  ``trans-de-en``) with the project's sha1 held-out rule.
- :mod:`attnkit.data.tokenizers`: :class:`CharTokenizer`, :class:`ByteTokenizer` and byte-level
  :class:`BPETokenizer` (all with ``save``/``load``; :func:`load_tokenizer` reads any of them).
- :mod:`attnkit.data.batching`: padding, length-bucketed batches, random LM windows.
"""

from .batching import pad_sequences, random_windows, token_batches
from .kjv import VALIDATION_BOOKS, load_kjv, kjv_splits
from .tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer, SubwordTokenizer, gpt2_tokenizer, load_tokenizer
from .translation import (
    Pair, load_de_en, load_pairs, parse_line, parse_lines, references_by_source, split_of, split_pairs,
)

__all__ = [
    "BPETokenizer",
    "SubwordTokenizer",
    "gpt2_tokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Pair",
    "VALIDATION_BOOKS",
    "kjv_splits",
    "load_de_en",
    "load_kjv",
    "load_pairs",
    "load_tokenizer",
    "pad_sequences",
    "parse_line",
    "parse_lines",
    "random_windows",
    "references_by_source",
    "split_of",
    "split_pairs",
    "token_batches",
]
