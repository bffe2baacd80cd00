"""GGUF files (llama.cpp's format): read the metadata and dequantize the tensors of a Llama-family model.

The tensors come out under Hugging Face's Llama names, so one mapping (:mod:`attnkit.interop.hf`)
turns both a Hugging Face folder and a GGUF file into a :class:`~attnkit.models.TransformerLM`.

Two things differ from a Hugging Face checkpoint:

* llama.cpp rotates channel pairs (2i, 2i + 1) of each head (interleaved rotary), while attnkit,
  like Hugging Face, rotates channel i with channel i + d_head / 2 (half split). llama.cpp's converter
  therefore permuted the rows of the query and key projections; :func:`unpermute_qk` undoes it.
* Quantized tensors (Q4_1, Q8_0, ...) are dequantized to float32 with PyPI ``gguf``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UnsupportedCheckpoint

SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF tensor names of one block -> Hugging Face Llama names
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _gguf_module():
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading GGUF files needs the PyPI package `gguf` (pip install gguf, or attnkit's "
            "`pretrained` extra)"
        ) from e
    return gguf


def open_gguf(path: str | Path):
    """A memory-mapped ``gguf.GGUFReader`` on ``path``, with a clear error if it is not a GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UnsupportedCheckpoint(f"{path} is not a GGUF file (it does not start with the magic 'GGUF')")
    return _gguf_module().GGUFReader(str(path))


_LONGEST_KEPT_ARRAY = 64  # metadata arrays longer than this (the vocabulary, merges, scores) are data, not settings


def metadata(reader, *, skip_arrays: bool = True) -> dict[str, Any]:
    """The file's key/value metadata as Python values (long arrays, such as the vocabulary, are left
    out when ``skip_arrays``)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if skip_arrays and len(field.data) > _LONGEST_KEPT_ARRAY:
            continue
        out[key] = field.contents()
    return out


def llama_config(
    meta: dict[str, Any], tensor_names: set[str], path: Path, vocab_size: int | None = None
) -> dict[str, Any]:
    """The Hugging Face ``LlamaConfig`` values that a llama GGUF file's metadata describes."""
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedCheckpoint(
            f"{path.name}: GGUF architecture {arch!r} is not supported; attnkit reads GGUF files of "
            f"architecture {', '.join(SUPPORTED_ARCHITECTURES)}"
        )

    def need(key):
        full = f"{arch}.{key}"
        if full not in meta:
            raise UnsupportedCheckpoint(f"{path.name}: the GGUF metadata lacks {full!r}")
        return meta[full]

    n_heads = int(need("attention.head_count"))
    d_model = int(need("embedding_length"))
    n_kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", n_heads))
    head_dim = int(meta.get(f"{arch}.attention.key_length", d_model // n_heads))
    rope_dim = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise UnsupportedCheckpoint(
            f"{path.name}: partial rotary (rope.dimension_count={rope_dim} < head size {head_dim}) is not supported"
        )
    if meta.get(f"{arch}.rope.scaling.type", "none") not in ("none", None):
        raise UnsupportedCheckpoint(
            f"{path.name}: rotary scaling {meta[f'{arch}.rope.scaling.type']!r} is not supported (only plain rotary)"
        )
    if meta.get(f"{arch}.expert_count", 0):
        raise UnsupportedCheckpoint(f"{path.name}: mixture-of-experts layers are not supported")
    vocab = meta.get(f"{arch}.vocab_size", vocab_size)
    if vocab is None:
        raise UnsupportedCheckpoint(f"{path.name}: the GGUF metadata gives no vocabulary size")
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(vocab),
        "hidden_size": d_model,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": int(meta.get(f"{arch}.context_length", 2048)),
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "attention_bias": any(n.startswith("blk.0.attn_q.bias") for n in tensor_names),
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of a query/key projection ``w`` (n_heads * d_head, ...).

    Within each head llama.cpp's row 2i + j (j = 0, 1) holds the Hugging Face row j * d_head / 2 + i,
    so that its interleaved rotary pairs the same channels as the half-split one. Viewing the rows
    as (n_heads, d_head / 2, 2) and swapping the last two axes puts them back.
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(gguf_name: str) -> str | None:
    stem, _, suffix = gguf_name.rpartition(".")
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        name = _BLOCK_NAMES.get(part)
        return None if name is None else f"model.layers.{layer}.{name}.{suffix}"
    name = _TOP_NAMES.get(stem)
    return None if name is None else f"{name}.{suffix}"


def read_gguf(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a Llama-family GGUF file -> (Hugging Face Llama config dict, state dict with HF names).

    Quantized tensors are dequantized to ``dtype``; query/key projections are un-permuted to the
    half-split rotary layout.
    """
    path = Path(path)
    gguf = _gguf_module()
    reader = open_gguf(path)
    meta = metadata(reader)
    names = {t.name for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise UnsupportedCheckpoint(f"{path.name}: the GGUF file has no token_embd.weight tensor")
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    config = llama_config(meta, names, path, vocab_size=int(embed.shape[-1]))
    unknown = [t.name for t in reader.tensors if _hf_name(t.name) is None]
    if any(name.startswith("rope_freqs") for name in unknown):
        raise UnsupportedCheckpoint(f"{path.name}: rope frequency factors (rope_freqs) are not supported")
    if unknown:
        raise UnsupportedCheckpoint(
            f"{path.name}: tensors attnkit does not know how to place: {', '.join(unknown[:8])}"
            + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        )
    state: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise UnsupportedCheckpoint(
                f"{path.name}: tensor {t.name} has quantization {t.tensor_type.name}, which PyPI gguf "
                "cannot dequantize"
            ) from e
        w = np.array(w, dtype=np.float32)  # a copy: unquantized tensors are views of the read-only file map
        if ".attn_q." in t.name:
            w = unpermute_qk(w, config["num_attention_heads"])
        elif ".attn_k." in t.name:
            w = unpermute_qk(w, config["num_key_value_heads"])
        state[_hf_name(t.name)] = torch.from_numpy(np.ascontiguousarray(w)).to(dtype)
    return config, state
