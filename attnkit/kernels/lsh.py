"""Host side of the fused LSH attention: sorting, launching the Triton kernels, autograd.

``fused_lsh_attention`` takes what ``attnkit.functional.lsh_attention`` has computed (the buckets, the
padding mask, the plan) and returns the same result as its chunked path; ``lsh_attention(...,
impl="fused")`` calls it, and ``impl="auto"`` does on CUDA when Triton is installed.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .alloc import row_dots, token_major

_DELTA_ELEMENTS = 1 << 24  # products per step when computing dO . O (bounds the temporary)


def triton_available() -> bool:
    """Whether Triton is installed."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unsupported(qk: Tensor, *, dedup: bool, dropout_p: float) -> str | None:
    """Why the fused path cannot run these inputs (None if it can)."""
    if not triton_available():
        return "Triton is not installed (pip install triton)"
    if qk.device.type != "cuda" and not interpreting():
        return f"it runs on CUDA (or on the CPU under TRITON_INTERPRET=1); qk is on {qk.device}"
    if dedup:
        return "dedup=True is not supported by the fused kernel"
    if dropout_p > 0.0:
        return "dropout_p > 0 is not supported by the fused kernel"
    if qk.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {qk.dtype} is not supported by the fused kernel (float32, float16, bfloat16)"
    return None


def fused_lsh_attention(
    qk: Tensor, v: Tensor, buckets: Tensor, valid: Tensor | None, *, chunk: int, n_chunks: int,
    n_buckets: int, causal: bool, across: bool, scale: float,
) -> Tensor:
    """LSH attention by the fused kernels.

    Args:
        qk, v: (B, H, L, D) and (B, H, L, D_v).
        buckets: (B, H, n_hashes, L) bucket ids in [0, n_buckets).
        valid: (B, H, L) key padding mask (True = real token) or None.
        chunk, n_chunks: tokens per chunk and chunks per round (chunk * n_chunks >= L).
    Returns:
        (B, H, L, D_v) in v's dtype, laid out token-major (B, L, H, D_v) so merging heads is a view.
    """
    B, H, L, _ = qk.shape
    N, R, Lp = B * H, buckets.shape[2], chunk * n_chunks
    with torch.no_grad():
        # Sort key per slot: the bucket, or n_buckets for padding (sorts last, matches nothing).
        key = torch.full((N, R, Lp), n_buckets, dtype=torch.int32, device=qk.device)
        key[:, :, :L] = buckets.reshape(N, R, L)
        if valid is not None:
            key[:, :, :L].masked_fill_(~valid.reshape(N, 1, L), n_buckets)
        code, order = torch.sort(key, dim=-1, stable=True)  # (N, R, Lp): sorted buckets, slot -> position
        del key
        order = order.to(torch.int32)
        if across:  # every real token is in one group: keep all pairs of adjacent chunks
            code = torch.where(code < n_buckets, 0, n_buckets).to(torch.int32)
    cfg = (chunk, n_chunks, n_buckets, causal, across, scale)
    return _FusedLSH.apply(qk, v, order, code, valid, cfg)


def _blocks(n: int) -> int:
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "ieee"
    return "upcast" if interpreting() and dtype == torch.bfloat16 else "tf32"  # tf32: ignored for halves


class _FusedLSH(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qk, v, order, code, valid, cfg):
        from .lsh_triton import lsh_forward_kernel

        chunk, n_chunks, n_buckets, causal, across, scale = cfg
        B, H, L, D = qk.shape
        Dv = v.shape[-1]
        R = order.shape[1]
        # The running output across rounds is kept in v's dtype; padding tokens are never written (zeros).
        out = token_major(B, H, L, Dv, dtype=v.dtype, device=qk.device).zero_()
        lse = torch.full((B * H, L), float("-inf"), dtype=torch.float32, device=qk.device)
        for r in range(R):
            lsh_forward_kernel[(n_chunks, B * H)](
                qk, v, out, lse, order, code,
                *qk.stride(), *v.stride(), *out.stride(),
                order.stride(0), order.stride(1), r,
                H, L, n_buckets, n_chunks, scale,
                C=chunk, D=D, DV=Dv, BLOCK=_blocks(chunk), BLOCK_D=_blocks(D), BLOCK_DV=_blocks(Dv),
                CAUSAL=causal, ACROSS=across, FIRST=r == 0, LAST=r == R - 1,
                PRECISION=_precision(qk.dtype), num_warps=4,
            )
        ctx.save_for_backward(qk, v, order, code, out, lse)
        ctx.valid, ctx.cfg = valid, cfg
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        from .lsh_triton import lsh_backward_kernel

        qk, v, order, code, out, lse = ctx.saved_tensors
        chunk, n_chunks, n_buckets, causal, across, scale = ctx.cfg
        B, H, L, D = qk.shape
        Dv = v.shape[-1]
        R = order.shape[1]
        grad_out = grad_out.to(v.dtype)
        # A token with no pair (lse = -inf) passed its own value through: its weights are 0 (lse -> +inf).
        lonely = lse == float("-inf")  # (N, L)
        lse = lse.masked_fill(lonely, float("inf"))
        delta = row_dots(grad_out, out, torch.float32, _DELTA_ELEMENTS).view(B * H, L)  # D_i = dO_i . O_i
        dqk = token_major(B, H, L, D, dtype=qk.dtype, device=qk.device).zero_()
        dv = token_major(B, H, L, Dv, dtype=v.dtype, device=qk.device).zero_()
        for r in range(R):
            lsh_backward_kernel[(n_chunks, B * H)](
                qk, v, grad_out, lse, delta, dqk, dv, order, code,
                *qk.stride(), *v.stride(), *grad_out.stride(), *dqk.stride(), *dv.stride(),
                order.stride(0), order.stride(1), r,
                H, L, n_buckets, n_chunks, scale,
                C=chunk, D=D, DVD=Dv, BLOCK=_blocks(chunk), BLOCK_D=_blocks(D), BLOCK_DV=_blocks(Dv),
                CAUSAL=causal, ACROSS=across, FIRST=r == 0, PRECISION=_precision(qk.dtype),
                num_warps=8,  # about a dozen (C, D) fp32 tiles live at once: spread them over more threads
            )
        # A real token with no pair: out = v, so dv += dO (padding tokens have lse = -inf too).
        if ctx.valid is not None:
            lonely &= ctx.valid.reshape(B * H, L)
        idx = lonely.view(B, H, L).nonzero(as_tuple=True)
        if idx[0].numel():
            dv.index_put_(idx, grad_out[idx].to(dv.dtype), accumulate=True)
        return dqk, dv, None, None, None, None
