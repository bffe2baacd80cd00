"""Pretrained weights from Hugging Face folders and GGUF files, and back.

    enc = load_pretrained("path/to/all-MiniLM-L6-v2", expect=TransformerEncoder)  # BERT family
    lm = load_pretrained("path/to/folder", gguf_file="model.gguf")                # Llama family
    save_pretrained(lm, "out/")   # a folder transformers loads (LlamaForCausalLM / BertModel)
    tokenizer = PretrainedTokenizer(load_tokenizer("path/to/folder"))             # encode/decode text

The models know nothing of file formats: this package imports them, never the other way round. The
packages it needs (``gguf`` for GGUF files, ``tokenizers``) are imported only when used.
"""

from __future__ import annotations

from .errors import UnsupportedCheckpoint
from .hf import SUPPORTED_MODEL_TYPES, load_pretrained, save_pretrained
from .sentence import embed_sentences, sentence_embeddings
from .t5 import load_t5, save_t5
from .tokenizer import PretrainedTokenizer, encode, load_tokenizer

__all__ = [
    "PretrainedTokenizer",
    "SUPPORTED_MODEL_TYPES",
    "UnsupportedCheckpoint",
    "embed_sentences",
    "encode",
    "load_pretrained",
    "load_t5",
    "load_tokenizer",
    "save_pretrained",
    "save_t5",
    "sentence_embeddings",
]
