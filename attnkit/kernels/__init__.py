"""Fused kernels behind the signatures of ``attnkit.functional`` (Triton; imported lazily).

Kernels import nothing from ``attnkit.functional``: what both use (the token-major allocator) lives here.
"""

from .alloc import token_major
from .lsh import fused_lsh_attention, triton_available

__all__ = ["fused_lsh_attention", "token_major", "triton_available"]
