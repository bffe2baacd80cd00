"""LSH attention: the chunked path against the reference, the limits it must reach, its errors."""

import math

import pytest
import torch

from attnkit.functional import lsh_attention, lsh_buckets, lsh_plan, shared_qk_attention
from attnkit.nn import LSHSelfAttention


def _inputs(B=2, H=2, L=50, D=16, Dv=None, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(B, H, L, D, generator=g, dtype=dtype)
    v = torch.randn(B, H, L, Dv or D, generator=g, dtype=dtype)
    return qk.requires_grad_(grad), v.requires_grad_(grad)


# ---------------------------------------------------------------------------------------------------
# Exact limits


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_one_bucket_equals_full_shared_qk_attention(causal, impl):
    qk, v = _inputs(L=50)
    full = shared_qk_attention(qk, v, causal=causal)
    for n_hashes in (1, 3):
        out = lsh_attention(qk, v, n_hashes=n_hashes, bucket_size=64, causal=causal, seed=1, impl=impl)
        torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


def test_one_bucket_with_dedup_and_mask_equals_full():
    qk, v = _inputs(L=40)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, 30:] = False
    full = shared_qk_attention(qk, v, key_mask=mask)
    out = lsh_attention(qk, v, n_hashes=4, bucket_size=40, key_mask=mask, dedup=True, seed=0)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


def test_shared_qk_self_only_when_nothing_else():
    qk, v = _inputs(L=8)
    out = shared_qk_attention(qk, v, causal=True)
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0])  # the first token has only itself
    # Elsewhere the token's own value has no weight: replacing it leaves the output unchanged.
    v2 = v.clone()
    v2[:, :, 5] += 10.0
    out2 = shared_qk_attention(qk, v2, causal=True)
    torch.testing.assert_close(out2[:, :, 5], out[:, :, 5])


def _clustered(n_clusters=16, per_cluster=16, D=32, spread=0.05, scale=6.0, seed=0):
    """Tokens near a few random directions, shuffled: attention is peaked within each cluster."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(n_clusters, D, generator=g), dim=-1)
    x = centers.repeat_interleave(per_cluster, 0) + spread * torch.randn(n_clusters * per_cluster, D, generator=g)
    x = x[torch.randperm(x.shape[0], generator=g)] * scale * math.sqrt(D) ** 0.5
    v = torch.randn(1, 1, x.shape[0], D, generator=g)
    return x[None, None], v


def test_error_falls_as_hash_rounds_grow():
    errors = dict.fromkeys((1, 2, 4, 8), 0.0)
    for seed in range(3):
        qk, v = _clustered(seed=seed)
        full = shared_qk_attention(qk, v)
        for n in errors:
            out = lsh_attention(qk, v, n_hashes=n, bucket_size=16, seed=100 + seed)
            errors[n] += (out - full).norm().item() / full.norm().item()
    values = [errors[n] for n in sorted(errors)]
    assert all(a > b for a, b in zip(values, values[1:])), errors
    assert values[-1] < 0.5 * values[0], errors


# ---------------------------------------------------------------------------------------------------
# The chunked path equals the reference, values and gradients


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize("dedup", [False, True])
# (300, 96): chunks too large for one table of whole rule rows (the chunked path adds two edge rows).
@pytest.mark.parametrize("L,bucket_size", [(100, 16), (37, 8), (50, 64), (300, 96)])
@pytest.mark.parametrize("impl", ["chunked", "dense"])
def test_fast_paths_equal_the_reference(causal, across, dedup, L, bucket_size, impl):
    qk, v = _inputs(L=L, D=16, Dv=8, dtype=torch.float64, grad=True, seed=L)
    mask = torch.rand(2, L, generator=torch.Generator().manual_seed(1)) > 0.2
    kw = dict(n_hashes=3, bucket_size=bucket_size, causal=causal, key_mask=mask, seed=3,
              attend_across_buckets=across, dedup=dedup)
    ref = lsh_attention(qk, v, impl="reference", **kw)
    out = lsh_attention(qk, v, impl=impl, **kw)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, (qk, v), grad)
    g_out = torch.autograd.grad(out, (qk, v), grad)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_fast_paths_equal_the_reference_with_many_buckets_factorized():
    qk, v = _inputs(B=1, H=1, L=1200, D=8, dtype=torch.float64, seed=4)
    plan = lsh_plan(1200, 4)
    assert len(plan.factors) == 2 and plan.n_buckets >= 300
    for causal in (False, True):
        kw = dict(n_hashes=2, bucket_size=4, causal=causal, seed=9)
        ref = lsh_attention(qk, v, impl="reference", **kw)
        for impl in ("chunked", "dense"):
            torch.testing.assert_close(lsh_attention(qk, v, impl=impl, **kw), ref)


def test_auto_is_dense_while_the_windows_cover_a_short_sequence_and_chunked_beyond(monkeypatch):
    import attnkit.functional.lsh_dense as dense

    qk, v = _inputs(L=40)
    kw = dict(bucket_size=8, seed=5, causal=True)  # 5 chunks: 2 rounds x 2 x 8 window slots reach half of 40 keys
    assert dense.dense_fits(2, 2, 40, 2, 8) and not dense.dense_fits(2, 2, 40, 1, 8)
    assert torch.equal(lsh_attention(qk, v, n_hashes=2, **kw), lsh_attention(qk, v, n_hashes=2, impl="dense", **kw))
    assert torch.equal(lsh_attention(qk, v, n_hashes=1, **kw), lsh_attention(qk, v, n_hashes=1, impl="chunked", **kw))
    monkeypatch.setattr(dense, "DENSE_ELEMENTS", 1000)  # the masks of all heads must stay small
    assert torch.equal(lsh_attention(qk, v, n_hashes=2, **kw), lsh_attention(qk, v, n_hashes=2, impl="chunked", **kw))
    assert not torch.equal(lsh_attention(qk, v, n_hashes=2, impl="dense", **kw),
                           lsh_attention(qk, v, n_hashes=2, impl="chunked", **kw))


def test_strided_inputs_and_gradients():
    # The module passes (B, L, H, D) projections seen as (B, H, L, D): no copies needed.
    x = torch.randn(2, 30, 3, 8, dtype=torch.float64, requires_grad=True)
    qk = x.transpose(1, 2)
    v = (x * 2).transpose(1, 2)
    out = lsh_attention(qk, v, bucket_size=8, seed=2)
    ref = lsh_attention(qk.contiguous(), v.contiguous(), bucket_size=8, seed=2, impl="reference")
    torch.testing.assert_close(out, ref)
    assert torch.autograd.gradcheck(
        lambda t: lsh_attention(t.transpose(1, 2), t.transpose(1, 2), bucket_size=8, seed=2, n_hashes=2),
        (x.detach()[:1, :20, :1].clone().requires_grad_(),),
    )


@pytest.mark.parametrize("causal", [False, True])
def test_chunked_backward_twice_through_a_kept_graph(causal):
    # The chunked path drops its output after the first backward's D = dO . O; a second backward through
    # the same graph recomputes it and must give the same gradients.
    qk, v = _inputs(L=70, dtype=torch.float64, grad=True)
    out = lsh_attention(qk, v, n_hashes=2, bucket_size=8, causal=causal, seed=5, impl="chunked")
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, (qk, v), grad, retain_graph=True)
    second = torch.autograd.grad(out, (qk, v), grad)
    ref = lsh_attention(qk, v, n_hashes=2, bucket_size=8, causal=causal, seed=5, impl="reference")
    for a, b, c in zip(first, second, torch.autograd.grad(ref, (qk, v), grad)):
        torch.testing.assert_close(a, c, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(b, c, atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------------------------------------------
# Causality, determinism, precision, padding, lengths


@pytest.mark.parametrize("across", [False, True])
def test_causal_no_gradient_to_later_inputs(across):
    L = 48
    qk, v = _inputs(L=L, grad=True)
    out = lsh_attention(qk, v, n_hashes=3, bucket_size=8, causal=True, seed=4, attend_across_buckets=across)
    for i in (0, 5, 17, 31, 46):
        gq, gv = torch.autograd.grad(out[:, :, i].sum(), (qk, v), retain_graph=True)
        assert torch.all(gq[:, :, i + 1 :] == 0) and torch.all(gv[:, :, i + 1 :] == 0)
        assert gv[:, :, : i + 1].abs().sum() > 0


def test_deterministic_for_a_seed():
    qk, v = _inputs(L=100)
    a = lsh_attention(qk, v, bucket_size=8, seed=7)
    b = lsh_attention(qk, v, bucket_size=8, seed=7)
    c = lsh_attention(qk, v, bucket_size=8, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(3)
    d = lsh_attention(qk, v, bucket_size=8)
    torch.manual_seed(3)
    e = lsh_attention(qk, v, bucket_size=8)
    assert torch.equal(d, e)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite(dtype):
    qk, v = _inputs(L=130, dtype=dtype, grad=True)
    for causal in (False, True):
        out = lsh_attention(qk, v, bucket_size=16, causal=causal, seed=1)
        assert out.dtype == dtype and torch.isfinite(out).all()
        gq, gv = torch.autograd.grad(out.float().square().sum(), (qk, v))
        assert gq.dtype == dtype and torch.isfinite(gq).all() and torch.isfinite(gv).all()
    ref = lsh_attention(qk.float(), v.float(), bucket_size=16, seed=1)
    close = lsh_attention(qk, v, bucket_size=16, seed=1).float()
    # Hashes of rounded inputs can differ on near-ties; most rows agree to half precision.
    agree = ((close - ref).abs().amax(-1) < 0.05).float().mean()
    assert agree > 0.9


def test_padding_mask_honoured():
    L, n_real = 90, 70
    qk, v = _inputs(B=1, L=L)
    mask = torch.zeros(1, L, dtype=torch.bool)
    mask[:, :n_real] = True
    kw = dict(n_hashes=3, bucket_size=8, seed=2, key_mask=mask, n_buckets=10, causal=False)
    out = lsh_attention(qk, v, **kw)
    assert torch.all(out[:, :, n_real:] == 0)  # padding rows are zero
    # The padding's content does not reach the real tokens ...
    qk2, v2 = qk.clone(), v.clone()
    qk2[:, :, n_real:] = torch.randn_like(qk2[:, :, n_real:]) * 5
    v2[:, :, n_real:] = 100.0
    torch.testing.assert_close(lsh_attention(qk2, v2, **kw)[:, :, :n_real], out[:, :, :n_real])
    # ... and the real tokens see what they would see without it.
    short = lsh_attention(qk[:, :, :n_real], v[:, :, :n_real], **{**kw, "key_mask": None})
    torch.testing.assert_close(out[:, :, :n_real], short)


def test_padding_mask_gradients_do_not_reach_padding():
    qk, v = _inputs(L=40, grad=True)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[:, 25:] = False
    out = lsh_attention(qk, v, bucket_size=8, key_mask=mask, seed=0, causal=True)
    gq, gv = torch.autograd.grad(out.sum(), (qk, v))
    assert torch.all(gq[:, :, 25:] == 0) and torch.all(gv[:, :, 25:] == 0)


@pytest.mark.parametrize("L", [1, 2, 7, 63, 64, 65, 131, 257])
def test_any_length(L):
    qk, v = _inputs(L=L, grad=True)
    out = lsh_attention(qk, v, bucket_size=16, seed=1, causal=True)
    assert out.shape == v.shape and torch.isfinite(out).all()
    out.sum().backward()
    torch.testing.assert_close(out, lsh_attention(qk, v, bucket_size=16, seed=1, causal=True, impl="reference"))
    if L == 1:
        torch.testing.assert_close(out, v)  # alone: attends to itself


# ---------------------------------------------------------------------------------------------------
# Hashing and planning


def test_buckets_are_angular():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 6, 16, generator=g)
    x = torch.cat([x, 3.0 * x, -x], dim=2)  # scaled copies hash alike, opposites differently
    b = lsh_buckets(x, n_hashes=4, factors=(8,), seed=1)  # (1, 1, 4, 18)
    assert b.shape == (1, 1, 4, 18) and int(b.max()) < 8
    assert torch.equal(b[..., :6], b[..., 6:12])
    assert torch.all(b[..., :6] != b[..., 12:])
    assert torch.equal(b[..., :6] % 4, b[..., 12:] % 4)  # the same direction, the other sign
    assert torch.equal(b, lsh_buckets(x, 4, (8,), seed=1))
    assert not torch.equal(b, lsh_buckets(x, 4, (8,), seed=2))
    assert not torch.equal(b[0, 0, 0], b[0, 0, 1])  # new rotations per round


def test_plan():
    assert lsh_plan(50, 64).n_buckets == 1 and lsh_plan(50, 64).chunk == 50
    p = lsh_plan(1000, 64)
    assert p.chunk == 64 and p.n_chunks == 16 and p.padded_length == 1024 and p.n_buckets == 16
    big = lsh_plan(65536, 64)
    assert big.factors == (32, 32) and big.n_buckets == 1024
    assert lsh_plan(100, 10, n_buckets=(4, 6)).n_buckets == 24


# ---------------------------------------------------------------------------------------------------
# Dropout on the attention weights


def test_dropout_is_seeded_and_its_backward_is_exact():
    qk, v = _inputs(B=1, H=1, L=24, D=4, dtype=torch.float64, grad=True)
    a = lsh_attention(qk, v, bucket_size=8, seed=3, dropout_p=0.3)
    b = lsh_attention(qk, v, bucket_size=8, seed=3, dropout_p=0.3)
    assert torch.equal(a, b)
    assert not torch.allclose(a, lsh_attention(qk, v, bucket_size=8, seed=3))
    fn = lambda v_: lsh_attention(qk.detach(), v_, bucket_size=8, seed=3, dropout_p=0.3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (v.detach().clone().requires_grad_(),))
    fn_qk = lambda q_: lsh_attention(q_, v.detach(), bucket_size=8, seed=3, dropout_p=0.3, n_buckets=1)  # noqa: E731
    assert torch.autograd.gradcheck(fn_qk, (qk.detach().clone().requires_grad_(),))


# ---------------------------------------------------------------------------------------------------
# Errors


BAD_INPUTS = {
    "qk_3d": (ValueError, "qk", lambda qk, v: lsh_attention(qk[0], v)),
    "qk_int": (TypeError, "qk", lambda qk, v: lsh_attention(qk.long(), v)),
    "dtypes": (TypeError, "dtype", lambda qk, v: lsh_attention(qk, v.double())),
    "lengths": (ValueError, "share", lambda qk, v: lsh_attention(qk, v[:, :, :5])),
    "qk_numpy": (TypeError, "qk", lambda qk, v: lsh_attention(qk.numpy(), v)),
    "n_hashes": (ValueError, "n_hashes", lambda qk, v: lsh_attention(qk, v, n_hashes=0)),
    "bucket_size": (ValueError, "bucket_size", lambda qk, v: lsh_attention(qk, v, bucket_size=0)),
    "n_buckets": (ValueError, "n_buckets", lambda qk, v: lsh_attention(qk, v, n_buckets=3)),
    "impl": (ValueError, "impl", lambda qk, v: lsh_attention(qk, v, impl="fast")),
    "dropout_p": (ValueError, "dropout_p", lambda qk, v: lsh_attention(qk, v, dropout_p=1.0)),
    "mask_dtype": (TypeError, "key_mask must be a boolean",
                   lambda qk, v: lsh_attention(qk, v, key_mask=torch.ones(2, 10))),
    "mask_length": (ValueError, r"key_mask must be a key padding mask of shape \(B, S\) = \(2, 10\)",
                    lambda qk, v: lsh_attention(qk, v, key_mask=torch.ones(2, 9, dtype=torch.bool))),
    "attention_mask": (ValueError, "an attention mask",
                       lambda qk, v: lsh_attention(qk, v, key_mask=torch.ones(2, 1, 1, 10, dtype=torch.bool))),
    "seed": (TypeError, "seed", lambda qk, v: lsh_attention(qk, v, seed=1.5)),
    "empty": (ValueError, "length 0", lambda qk, v: lsh_attention(qk[:, :, :0], v[:, :, :0])),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs(case):
    error, match, call = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        call(*_inputs(L=10))


# ---------------------------------------------------------------------------------------------------
# The module


def test_module_shapes_seeds_and_mask():
    torch.manual_seed(0)
    attn = LSHSelfAttention(32, 4, n_hashes=2, bucket_size=8, causal=True)
    x = torch.randn(2, 45, 32)
    y = attn(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert attn.qk_proj.weight.grad is not None and attn.v_proj.weight.grad is not None
    attn.eval()
    assert torch.equal(attn(x), attn(x))  # eval: fixed seed
    attn.train()
    torch.manual_seed(1)
    a = attn(x)
    torch.manual_seed(1)
    assert torch.equal(a, attn(x))  # training: seeds drawn from the global generator
    with pytest.raises(ValueError, match="x must have shape"):
        attn(torch.randn(2, 45, 16))
    with pytest.raises(ValueError, match="divisible"):
        LSHSelfAttention(30, 4)


def test_module_key_mask():
    # Padding rows attend to nothing (their output is the output projection's bias), and the real tokens'
    # outputs equal those of the unpadded sequence, whatever the padding holds.
    torch.manual_seed(0)
    attn = LSHSelfAttention(32, 4, n_hashes=2, bucket_size=8, causal=False).eval()
    x = torch.randn(2, 45, 32)
    mask = torch.ones(2, 45, dtype=torch.bool)
    mask[1, 40:] = False
    with torch.no_grad():
        y = attn(x, key_mask=mask)
        torch.testing.assert_close(y[1, 40:], attn.out_proj.bias.expand(5, 32))
        torch.testing.assert_close(y[1:, :40], attn(x[1:, :40]), atol=1e-5, rtol=1e-5)
        x2 = x.clone()
        x2[1, 40:] = 100.0 * torch.randn(5, 32)
        torch.testing.assert_close(attn(x2, key_mask=mask)[1, :40], y[1, :40])
        torch.testing.assert_close(attn(x2, key_mask=mask)[0], y[0])


def test_module_reference_and_chunked_agree():
    torch.manual_seed(0)
    a = LSHSelfAttention(16, 2, bucket_size=8, causal=True).double()
    b = LSHSelfAttention(16, 2, bucket_size=8, causal=True, impl="reference").double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 37, 16, dtype=torch.float64)
    torch.testing.assert_close(a(x, seed=4), b(x, seed=4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    qk, v = _inputs(L=300, grad=False)
    kw = dict(bucket_size=16, seed=1, causal=True)
    cpu = lsh_attention(qk, v, **kw)
    gpu = lsh_attention(qk.cuda(), v.cuda(), **kw)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_head_threads_match_serial(monkeypatch):
    import attnkit.functional.lsh as lsh

    qk, v = _inputs(B=2, H=3, L=70, grad=True)
    kw = dict(bucket_size=8, seed=1, causal=True)
    threads = torch.get_num_threads()
    results = []
    for on in (False, True):
        monkeypatch.setattr(lsh, "_HEAD_THREADS", on)
        torch.set_num_threads(2)
        try:
            out = lsh_attention(qk, v, **kw)
            results.append((out, *torch.autograd.grad(out.square().sum(), (qk, v))))
        finally:
            torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_hashing_layouts_give_the_same_buckets(monkeypatch):
    # Long inputs on a CPU are hashed head by head; short ones, and every input on a GPU, with the heads
    # together in blocks of tokens. The buckets must not depend on the layout.
    import attnkit.functional.lsh as lsh

    x = torch.randn(2, 3, 50, 8, generator=torch.Generator().manual_seed(0))
    factors = (4, 6)
    together = lsh_buckets(x, 2, factors, seed=4)  # few projections: every head at once, one block
    monkeypatch.setattr(lsh, "_HASH_ELEMENTS_CPU", 0)
    head_by_head = lsh_buckets(x, 2, factors, seed=4)
    got = torch.zeros_like(together)
    lsh._hash_all_heads(x, got, factors, lsh.random_rotations(8, 2, factors, 4), 2 * 3 * 2 * 6 * 7)  # ragged blocks
    assert torch.equal(together, head_by_head) and torch.equal(got, head_by_head)


@pytest.mark.parametrize("causal,dedup,masked", [(True, False, False), (False, True, True), (True, True, True)])
def test_auto_takes_dense_shared_qk_attention_for_one_chunk_with_the_same_result(causal, dedup, masked, monkeypatch):
    """A sequence no longer than bucket_size is one chunk and one bucket: every pair meets in every round,
    so "auto" computes it as dense shared-QK attention; values and gradients equal the chunked path."""
    g = torch.Generator().manual_seed(0)
    qk = torch.randn(2, 3, 40, 16, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 40, 8, generator=g, dtype=torch.float64, requires_grad=True)
    key_mask = torch.ones(2, 40, dtype=torch.bool)
    key_mask[1, 30:] = False
    kw = dict(n_hashes=3, bucket_size=64, causal=causal, dedup=dedup, seed=1, key_mask=key_mask if masked else None)
    import attnkit.functional.lsh as lsh_module

    calls = []
    dense = lsh_module._dense_shared_qk
    monkeypatch.setattr(lsh_module, "_dense_shared_qk", lambda *a, **k: calls.append(1) or dense(*a, **k))
    auto = lsh_attention(qk, v, impl="auto", **kw)
    assert calls  # the dense path was taken
    (ga,) = torch.autograd.grad(auto.square().sum(), qk)
    chunked = lsh_attention(qk, v, impl="chunked", **kw)
    (gc,) = torch.autograd.grad(chunked.square().sum(), qk)
    assert torch.allclose(auto, chunked, atol=1e-10) and torch.allclose(ga, gc, atol=1e-10)
