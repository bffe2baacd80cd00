"""Fused kernels behind the signatures of ``attnkit.functional`` (Triton; imported lazily)."""

from .lsh import fused_lsh_attention, triton_available

__all__ = ["fused_lsh_attention", "triton_available"]
