"""Pure functions over (B, H, T, D) tensors."""

from .attention import (
    causal_mask,
    check_key_mask,
    dot_product_attention,
    key_to_attn_mask,
    padding_mask,
    repeat_kv,
)
from .lsh import LSHWeights, lsh_attention, lsh_attention_weights, lsh_buckets, lsh_plan, shared_qk_attention
from .lsh_decode import LSHCache, lsh_attention_step
from .rotary import apply_rotary, rotary_angles

__all__ = [
    "apply_rotary",
    "causal_mask",
    "check_key_mask",
    "dot_product_attention",
    "key_to_attn_mask",
    "LSHCache",
    "LSHWeights",
    "lsh_attention",
    "lsh_attention_step",
    "lsh_attention_weights",
    "lsh_buckets",
    "lsh_plan",
    "padding_mask",
    "repeat_kv",
    "rotary_angles",
    "shared_qk_attention",
]
