"""Pretrained weights from Hugging Face folders and GGUF files, and back.

    enc = TransformerEncoder.from_pretrained("path/to/all-MiniLM-L6-v2")         # BERT family
    lm = TransformerLM.from_pretrained("path/to/folder", gguf_file="model.gguf")  # Llama family
    lm.save_pretrained("out/")   # a folder transformers loads (LlamaForCausalLM / BertModel)

``TransformerEncoder.from_pretrained``, ``TransformerLM.from_pretrained`` and their ``save_pretrained``
call :func:`load_pretrained` and :func:`save_pretrained` here. The packages they need (``gguf`` for GGUF
files, ``tokenizers``) are imported only when used.
"""

from __future__ import annotations

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
