"""The fused (Triton) LSH attention against the chunked and reference paths.

Without a GPU the kernels run in Triton's interpreter on the CPU (TRITON_INTERPRET=1, set here before
the kernels are first imported); with one they run on CUDA.
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # read when Triton is imported
triton = pytest.importorskip("triton", reason="the fused kernels need Triton (installed by scripts/setup.sh)")

from attnkit.functional import lsh_attention, shared_qk_attention  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"


def inputs(B, H, L, D, Dv=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(B, H, L, D, generator=g).to(DEVICE, dtype)
    v = torch.randn(B, H, L, Dv or D, generator=g).to(DEVICE, dtype)
    return qk, v


def run(qk, v, grad, **kw):
    qk, v = qk.detach().requires_grad_(), v.detach().requires_grad_()
    out = lsh_attention(qk, v, **kw)
    return (out, *torch.autograd.grad(out, (qk, v), grad.to(out.dtype)))


@pytest.mark.parametrize(
    "L, causal, across, masked",
    [(96, False, False, False), (100, True, False, False), (70, True, True, False), (90, False, False, True),
     (100, True, False, True)],
)
def test_fused_equals_chunked_values_and_gradients(L, causal, across, masked):
    qk, v = inputs(2, 2, L, 16, Dv=32)
    mask = None
    if masked:
        mask = torch.ones(2, L, dtype=torch.bool, device=DEVICE)
        mask[1, L - 23 :] = False
        mask[0, 5] = False
    kw = dict(n_hashes=3, bucket_size=16, causal=causal, key_mask=mask, seed=7, attend_across_buckets=across)
    grad = torch.randn(2, 2, L, 32, device=DEVICE)
    fused = run(qk, v, grad, impl="fused", **kw)
    chunked = run(qk, v, grad, impl="chunked", **kw)
    for name, a, b in zip(("out", "dqk", "dv"), fused, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    if masked:  # padding tokens: zero output, and nothing flows through them
        assert fused[0][1, :, L - 23 :].abs().max() == 0
        assert fused[1][1, :, L - 23 :].abs().max() == 0


def test_fused_with_one_bucket_is_exact_shared_qk_attention():
    # A sequence no longer than bucket_size is one bucket and one chunk (here 24: not a power of two).
    qk, v = inputs(1, 2, 24, 16)
    for causal in (False, True):
        out = lsh_attention(qk, v, n_hashes=2, bucket_size=32, causal=causal, impl="fused", seed=1)
        torch.testing.assert_close(out, shared_qk_attention(qk, v, causal=causal), rtol=1e-5, atol=1e-5)


def test_fused_causal_gradients_do_not_reach_earlier_tokens_from_later_ones():
    qk, v = inputs(1, 1, 64, 16)
    qk.requires_grad_()
    out = lsh_attention(qk, v, n_hashes=2, bucket_size=16, causal=True, impl="fused", seed=3)
    (g,) = torch.autograd.grad(out[0, 0, 20].sum(), qk)
    assert g[0, 0, 21:].abs().max() == 0
    assert g[0, 0, :21].abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_half_precision_is_finite_and_close(dtype):
    qk, v = inputs(1, 2, 80, 16)
    grad = torch.randn(1, 2, 80, 16, device=DEVICE)
    kw = dict(n_hashes=2, bucket_size=16, causal=True, seed=5)
    qk, v = qk.to(dtype), v.to(dtype)
    half = run(qk, v, grad, impl="fused", **kw)
    full = run(qk.float(), v.float(), grad, impl="chunked", **kw)  # the same rounded inputs: the same buckets
    for a, b in zip(half, full):
        assert a.dtype == dtype and torch.isfinite(a).all()
        torch.testing.assert_close(a.float(), b, rtol=0.05, atol=0.06)


def test_fused_rejects_what_it_does_not_implement():
    qk, v = inputs(1, 1, 32, 16)
    with pytest.raises(ValueError, match="dedup"):
        lsh_attention(qk, v, bucket_size=16, impl="fused", dedup=True)
    with pytest.raises(ValueError, match="dropout"):
        lsh_attention(qk, v, bucket_size=16, impl="fused", dropout_p=0.1)


def test_auto_on_cpu_stays_chunked():
    qk, v = inputs(1, 1, 160, 16)
    qk, v = qk.cpu(), v.cpu()
    # 2 rounds x 2 x 16 window slots are under half of 160 keys: not short enough for the dense path either
    a = lsh_attention(qk, v, n_hashes=2, bucket_size=16, seed=2, impl="auto")
    b = lsh_attention(qk, v, n_hashes=2, bucket_size=16, seed=2, impl="chunked")
    assert torch.equal(a, b)


def test_fused_head_width_that_is_not_a_power_of_two():
    qk, v = inputs(1, 2, 40, 24, Dv=20)
    grad = torch.randn(1, 2, 40, 20, device=DEVICE)
    kw = dict(n_hashes=2, bucket_size=16, causal=True, seed=9)
    for a, b in zip(run(qk, v, grad, impl="fused", **kw), run(qk, v, grad, impl="chunked", **kw)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not CUDA, reason="benchmark-sized shapes: minutes in Triton's interpreter, seconds on a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_equals_chunked_at_benchmark_shapes_on_cuda(dtype):
    # The shapes benchmarks/gpu_long_context.py times (8 heads x 64, 4 hashes, bucket 64, causal), at 16,384
    # tokens with padding at the end of the second sequence: many chunks per round, every kernel tile used.
    B, H, L, D = 2, 8, 16384, 64
    qk, v = inputs(B, H, L, D, seed=11)
    mask = torch.ones(B, L, dtype=torch.bool, device=DEVICE)
    mask[1, L - 1000 :] = False
    grad = torch.randn(B, H, L, D, device=DEVICE)
    kw = dict(n_hashes=4, bucket_size=64, causal=True, key_mask=mask, seed=3)
    # The reference gets the inputs rounded to dtype: hashing the unrounded ones moves ~0.6% of the tokens
    # to other buckets in bf16 (seen on an H200), which compares two different attention patterns.
    qk, v = qk.to(dtype), v.to(dtype)
    fused = run(qk, v, grad, impl="fused", **kw)
    chunked = run(qk.float(), v.float(), grad, impl="chunked", **kw)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=0.05, atol=0.06)
    for name, a, b in zip(("out", "dqk", "dv"), fused, chunked):
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        torch.testing.assert_close(a.float(), b, **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.skipif(not CUDA, reason="a model-sized check of impl='auto' choosing the fused path on CUDA")
def test_reformer_lm_on_cuda_auto_equals_chunked(monkeypatch):
    import attnkit.kernels.lsh as kernels
    from attnkit.models import ReformerConfig, ReformerLM

    fused_calls = []
    fused = kernels.fused_lsh_attention
    monkeypatch.setattr(kernels, "fused_lsh_attention", lambda *a, **kw: fused_calls.append(1) or fused(*a, **kw))

    torch.manual_seed(0)
    cfg = ReformerConfig(vocab_size=256, d_model=128, n_heads=4, n_layers=2, d_ff=256, max_len=4096,
                         axial_shape=(64, 64), n_hashes=2, bucket_size=32, reversible=True, dropout=0.0)
    model = ReformerLM(cfg).to(DEVICE).eval()  # eval: the layers hash with their fixed eval_seed
    tokens = torch.randint(0, 256, (2, 4096), device=DEVICE)
    losses, grads, calls = [], [], []
    for impl in ("auto", "chunked"):
        for m in model.modules():
            if hasattr(m, "impl"):
                m.impl = impl
        model.zero_grad()
        loss = model.loss(tokens)
        loss.backward()
        losses.append(loss.detach())
        calls.append(len(fused_calls))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    # "auto" ran the fused kernels in every layer (a reversible backward may run them again), "chunked" never
    assert calls[0] >= cfg.n_layers and calls[1] == calls[0]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-4)
