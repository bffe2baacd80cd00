"""Tokenizers that come with a checkpoint: a folder's ``tokenizer.json``, or a GGUF file's vocabulary.

Both become a Hugging Face ``tokenizers.Tokenizer``. :func:`encode` turns a batch of texts into the
(tokens, key_mask) pair attnkit's models take, padded on the right; :class:`PretrainedTokenizer` gives
such a tokenizer the interface of attnkit's own tokenizers (text in, ids out, and back).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .errors import UnsupportedCheckpoint

# llama.cpp's name for how a byte-level vocabulary splits text before the merges
# (``tokenizer.ggml.pre``) -> whether digits are split one by one first
_BYTE_LEVEL_PRE = {"default": False, "gpt2": False, "gpt-2": False, "smollm": True}
_CONTROL = 3  # llama.cpp token type of special tokens such as <|im_start|>
_USER_DEFINED = 4
# the end-of-text tokens of the common chat and base vocabularies (GPT-2, ChatML, Llama 2, Llama 3)
STOP_TOKENS = ("<|endoftext|>", "<|im_end|>", "</s>", "<|eot_id|>")


class PretrainedTokenizer:
    """A checkpoint's ``tokenizers.Tokenizer`` with the interface of attnkit's tokenizers.

    ``encode(text) -> list[int]`` adds no special tokens (a prompt continues as written), unless
    ``add_special_tokens`` (an encoder's input: BERT's [CLS] ... [SEP]);
    ``decode(ids) -> str`` skips special tokens. ``stop_ids`` are the ids of the vocabulary's end-of-text
    tokens (those of :data:`STOP_TOKENS` it has), for generation's ``eos_id``. ``unk_id`` is None: a
    byte-level vocabulary encodes any text.
    """

    unk_id = None

    def __init__(self, tokenizer, *, add_special_tokens: bool = False):
        self.tokenizer, self.add_special_tokens = tokenizer, add_special_tokens
        self.stop_ids: list[int] = [i for t in STOP_TOKENS if (i := tokenizer.token_to_id(t)) is not None]

    @property
    def vocab_size(self) -> int:
        """The number of ids, added tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """text -> ids (with the special tokens only if ``add_special_tokens``)."""
        return self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids

    def decode(self, ids) -> str:
        """ids (any iterable of ints, or a 1-D tensor) -> text, special tokens skipped."""
        ids = ids.tolist() if isinstance(ids, Tensor) else [int(i) for i in ids]
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _tokenizers():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("loading a tokenizer needs the PyPI package `tokenizers`") from e
    return tokenizers


def load_tokenizer(path: str | Path, gguf_file: str | Path | None = None):
    """The tokenizer of a checkpoint, as a ``tokenizers.Tokenizer``.

    Args:
        path: a model folder holding ``tokenizer.json``, or a ``.gguf`` file.
        gguf_file: a GGUF file inside ``path`` whose vocabulary to use (as in ``transformers``).

    The file's own padding and truncation settings are switched off; :func:`encode` pads.
    """
    tk = _tokenizers()
    path = Path(path)
    if gguf_file is not None or path.suffix == ".gguf":
        gguf_path = path if gguf_file is None else (Path(gguf_file) if Path(gguf_file).is_file() else path / gguf_file)
        return gguf_tokenizer(gguf_path)
    file = path / "tokenizer.json"
    if not file.is_file():
        raise UnsupportedCheckpoint(
            f"{path} has no tokenizer.json (attnkit reads tokenizers in the Hugging Face tokenizers format, "
            "or from a GGUF file's vocabulary)"
        )
    tokenizer = tk.Tokenizer.from_file(str(file))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def gguf_tokenizer(path: str | Path):
    """Build the byte-level BPE tokenizer that a GGUF file's vocabulary and merges describe.

    Only byte-level BPE vocabularies (``tokenizer.ggml.model`` "gpt2") with a known pre-tokenizer are
    built here; for others, transformers' GGUF conversion is used when transformers is installed.
    """
    from .gguf import open_gguf

    tk = _tokenizers()
    path = Path(path)
    reader = open_gguf(path)

    def field(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    kind, pre = field("tokenizer.ggml.model"), field("tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in _BYTE_LEVEL_PRE:
        return _transformers_gguf_tokenizer(path, f"tokenizer.ggml.model={kind!r}, tokenizer.ggml.pre={pre!r}")
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    merges = field("tokenizer.ggml.merges")
    if tokens is None or merges is None:
        raise UnsupportedCheckpoint(f"{path.name}: the GGUF file has no tokenizer.ggml.tokens/merges")
    vocab = {t: i for i, t in enumerate(tokens)}
    model = tk.models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False)
    tokenizer = tk.Tokenizer(model)
    byte_level = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _BYTE_LEVEL_PRE[pre]:
        tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence(
            [tk.pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = tk.decoders.ByteLevel()
    types = types or [1] * len(tokens)
    tokenizer.add_special_tokens(
        [tk.AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _CONTROL]
    )
    tokenizer.add_tokens(
        [tk.AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED]
    )
    bos = field("tokenizer.ggml.bos_token_id")
    if field("tokenizer.ggml.add_bos_token", False) and bos is not None:
        tokenizer.post_processor = tk.processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B",
            special_tokens=[(tokens[bos], bos)],
        )
    return tokenizer


def _transformers_gguf_tokenizer(path: Path, what: str):
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise UnsupportedCheckpoint(
            f"{path.name}: attnkit builds byte-level BPE GGUF tokenizers with pre-tokenizer "
            f"{', '.join(_BYTE_LEVEL_PRE)} only, and this file has {what}; install transformers to convert it"
        ) from e
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).backend_tokenizer


def encode(
    tokenizer, texts: list[str], *, max_length: int | None = None, pad_id: int | None = None
) -> tuple[Tensor, Tensor]:
    """Tokenize a batch and pad it on the right -> (tokens (B, T) long, key_mask (B, T) bool, True = real).

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (adds the special tokens its post-processor defines).
        texts: the texts.
        max_length: cut each text's tokens to this many (special tokens included).
        pad_id: the id written at padded positions; default the tokenizer's ``[PAD]``/``<pad>`` token, else 0.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got one str; wrap it in a list")
    if not texts:
        raise ValueError("texts is empty")
    saved = tokenizer.truncation
    if max_length is not None:
        tokenizer.enable_truncation(max_length)  # the tokenizer keeps its special tokens inside the limit
    try:
        ids = [e.ids for e in tokenizer.encode_batch(list(texts))]
    finally:
        if saved is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(**saved)
    if pad_id is None:
        pad_id = next((i for t in ("[PAD]", "<pad>") if (i := tokenizer.token_to_id(t)) is not None), 0)
    lengths = [len(x) for x in ids]
    T = max(lengths)
    tokens = torch.tensor([x + [pad_id] * (T - len(x)) for x in ids], dtype=torch.long)
    key_mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    return tokens, key_mask

