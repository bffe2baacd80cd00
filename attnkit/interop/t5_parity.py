"""Parity of attnkit's T5 with transformers' ``T5ForConditionalGeneration`` on randomly initialized
models of a few shapes (no pretrained T5 installs offline): what ``tests/test_t5.py`` asserts and
``benchmarks/t5_parity.py`` reports. Needs ``transformers``.

A shape is a dict of transformers ``T5Config`` arguments. :func:`random_pair` builds the transformers
model with weights that make every part matter, saves it with ``save_pretrained`` and loads the folder
with :func:`attnkit.interop.load_t5`; :func:`compare` measures the encoder output and logits (relative
error) and greedy decoding (equal or not).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

VOCAB = 64

# transformers T5Config arguments of the checked shapes: encoder and decoder depths differ, n_heads * d_kv
# differs from d_model, and the sequences of :func:`batch` (30 source, 20 target positions) reach past
# max_distance
SHAPES: dict[str, dict[str, Any]] = {
    "v1.0-relu-tied": dict(feed_forward_proj="relu", tie_word_embeddings=True, num_layers=2, num_decoder_layers=3,
                           d_model=32, d_kv=8, num_heads=3, d_ff=40, relative_attention_num_buckets=8,
                           relative_attention_max_distance=12),
    "v1.1-gated-untied": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_layers=3,
                              num_decoder_layers=1, d_model=24, d_kv=10, num_heads=4, d_ff=36),  # 32 buckets, 128
    "gated-tied": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=True, num_layers=1, num_decoder_layers=2,
                       d_model=16, d_kv=4, num_heads=2, d_ff=24, relative_attention_num_buckets=16,
                       relative_attention_max_distance=20),
}


def relative_error(ours: Tensor, theirs: Tensor) -> float:
    """max |ours - theirs| / max |theirs|."""
    return float((ours - theirs).abs().max() / theirs.abs().max())


def batch(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """A padded source batch (B=3, S=30) with its key mask, and decoder inputs (B, 20) from the start id."""
    from ..models.t5 import shift_right

    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, VOCAB, (3, 30), generator=g)
    mask = torch.ones(3, 30, dtype=torch.bool)
    mask[1, 22:] = False
    mask[2, 9:] = False
    src[~mask] = 0  # the pad id
    tgt = shift_right(torch.randint(2, VOCAB, (3, 20), generator=g), 0)
    return src, mask, tgt


def randomize(hf) -> None:
    """Weights that make a random model's outputs depend on everything: transformers' initialization gives
    norms of ones (which would hide a misplaced norm weight), a small position bias and, through the large
    token embedding in the residual stream, greedy outputs that repeat one token."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
            elif "relative_attention_bias" in name:
                p.normal_(std=3.0)
            elif name in ("shared.weight", "lm_head.weight"):
                p.normal_(std=0.1)
            else:
                p.normal_(std=p.shape[1] ** -0.5)  # (out, in): 1 / sqrt(fan-in)


def random_pair(shape: str, folder: str | Path, seed: int = 0):
    """(transformers model, attnkit T5 loaded from its save_pretrained folder) for ``SHAPES[shape]``."""
    import transformers

    from .t5 import load_t5

    torch.manual_seed(seed)
    kw = SHAPES[shape]
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(vocab_size=VOCAB, dropout_rate=0.0, decoder_start_token_id=0, **kw)
    ).eval()
    if not kw["tie_word_embeddings"]:
        # transformers 5 ties the head to the embedding even in v1.1; untie it so the head's weights matter
        hf.lm_head.weight = torch.nn.Parameter(torch.empty(VOCAB, kw["d_model"]))
    randomize(hf)
    hf.save_pretrained(folder)
    return hf, load_t5(folder)


def hf_greedy(hf, src: Tensor, mask: Tensor, max_new_tokens: int, eos_id: int) -> Tensor:
    """transformers' greedy decoding of ``src`` (its rows padded with 0 after their eos)."""
    from transformers import DynamicCache, EncoderDecoderCache

    config = copy.deepcopy(hf.generation_config)
    config.eos_token_id, config.pad_token_id = eos_id, 0
    # transformers 5.24 sizes its default cache by the encoder's depth, which fails for a deeper decoder;
    # a cache that grows layer by layer serves any depth
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    return hf.generate(input_ids=src, attention_mask=mask.long(), generation_config=config, do_sample=False,
                       num_beams=1, max_new_tokens=max_new_tokens, cache=cache)


def pad_after_eos(tokens: Tensor, eos_id: int) -> Tensor:
    """attnkit repeats eos in finished rows, transformers pads them: the latter form, for comparing."""
    is_eos = (tokens == eos_id).long()
    return tokens.masked_fill(is_eos.cumsum(1) - is_eos > 0, 0)


@torch.no_grad()
def compare(hf, model, seed: int = 0, max_new_tokens: int = 16) -> dict[str, Any]:
    """Encoder output and logits (relative error) on :func:`batch`, and greedy decoding of ``max_new_tokens``
    tokens (equal or not, and how many tokens differ)."""
    src, mask, tgt = batch(seed)
    theirs = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt)
    greedy_theirs = hf_greedy(hf, src, mask, max_new_tokens, eos_id=model.config.eos_id)
    greedy_ours = pad_after_eos(model.generate(src, max_new_tokens, src_key_mask=mask), model.config.eos_id)
    same_shape = greedy_ours.shape == greedy_theirs.shape
    return {
        "encoder_relative_error": relative_error(model.encode(src, mask), theirs.encoder_last_hidden_state),
        "logits_relative_error": relative_error(model(src, tgt, mask), theirs.logits),
        "greedy_equal": bool(same_shape and torch.equal(greedy_ours, greedy_theirs)),
        "greedy_tokens": int(greedy_theirs.numel()),
        "greedy_tokens_differing": int((greedy_ours != greedy_theirs).sum()) if same_shape else None,
    }
