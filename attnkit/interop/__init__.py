"""Pretrained weights from Hugging Face folders and GGUF files, and back.

    enc = TransformerEncoder.from_pretrained("path/to/all-MiniLM-L6-v2")         # BERT family
    lm = TransformerLM.from_pretrained("path/to/folder", gguf_file="model.gguf")  # Llama family
    lm.save_pretrained("out/")   # a folder transformers loads (LlamaForCausalLM / BertModel)

Importing :mod:`attnkit` attaches ``from_pretrained`` (a classmethod) and ``save_pretrained`` to
:class:`~attnkit.models.TransformerEncoder` and :class:`~attnkit.models.TransformerLM`; they call
:func:`load_pretrained` and :func:`save_pretrained` here. The packages they need (``gguf`` for GGUF
files, ``tokenizers``) are imported only when used.
"""

from __future__ import annotations

from pathlib import Path

from ..models import TransformerEncoder, TransformerLM
from .errors import UnsupportedCheckpoint
from .hf import SUPPORTED_MODEL_TYPES, load_pretrained, save_pretrained
from .sentence import embed_sentences, sentence_embeddings
from .tokenizer import encode, load_tokenizer

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "UnsupportedCheckpoint",
    "embed_sentences",
    "encode",
    "load_pretrained",
    "load_tokenizer",
    "save_pretrained",
    "sentence_embeddings",
]


def _encoder_from_pretrained(cls, path: str | Path, *, dtype=None) -> TransformerEncoder:
    """Load a BERT-family Hugging Face folder (config.json + safetensors) as a TransformerEncoder, in
    eval mode. See :func:`attnkit.interop.load_pretrained`."""
    kw = {} if dtype is None else {"dtype": dtype}
    return load_pretrained(path, expect=TransformerEncoder, **kw)


def _lm_from_pretrained(cls, path: str | Path, gguf_file: str | Path | None = None, *, dtype=None) -> TransformerLM:
    """Load a Llama-family Hugging Face folder, or a GGUF file (``gguf_file`` inside ``path``, or
    ``path`` itself), as a TransformerLM in eval mode. See :func:`attnkit.interop.load_pretrained`."""
    kw = {} if dtype is None else {"dtype": dtype}
    return load_pretrained(path, gguf_file, expect=TransformerLM, **kw)


def _save_pretrained(self, path: str | Path, *, tokenizer=None) -> Path:
    """Write this model as a Hugging Face folder that transformers loads. See
    :func:`attnkit.interop.save_pretrained`."""
    return save_pretrained(self, path, tokenizer=tokenizer)


TransformerEncoder.from_pretrained = classmethod(_encoder_from_pretrained)
TransformerLM.from_pretrained = classmethod(_lm_from_pretrained)
TransformerEncoder.save_pretrained = _save_pretrained
TransformerLM.save_pretrained = _save_pretrained
