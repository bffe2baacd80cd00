"""The attention core against the formula, PyTorch's SDPA and torch.nn.MultiheadAttention."""

import math

import pytest
import torch

from attnkit.functional import (
    causal_mask,
    check_key_mask,
    dot_product_attention,
    key_to_attn_mask,
    padding_mask,
)
from attnkit.nn import AttentionOutput, KVCache, MultiHeadAttention


def formula(q, k, v, allowed=None):
    """softmax(Q K^T / sqrt(d) + M) V written out in float64, M = -inf where not allowed."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = scores + torch.zeros_like(scores).masked_fill(~allowed, float("-inf"))
    w = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(w, nan=0.0) @ v


@pytest.fixture
def rand():
    """randn from a generator of the test's own: values do not depend on which tests ran before."""
    g = torch.Generator().manual_seed(0)
    return lambda *shape, dtype=torch.float32: torch.randn(*shape, dtype=dtype, generator=g)


CASES = {
    "no_mask": dict(T=7, S=7, mask=None, causal=False),
    "causal": dict(T=7, S=7, mask=None, causal=True),
    "padding": dict(T=7, S=7, mask=padding_mask(torch.tensor([7, 4]), 7), causal=False),
    "cross": dict(T=5, S=9, mask=None, causal=False),
    "cross_padding": dict(T=5, S=9, mask=padding_mask(torch.tensor([9, 3]), 9), causal=False),
    "causal_T_lt_S": dict(T=3, S=8, mask=None, causal=True),
    "causal_padding": dict(T=6, S=6, mask=padding_mask(torch.tensor([6, 2]), 6), causal=True),
}


@pytest.mark.parametrize("name", CASES)
def test_reference_and_sdpa_equal_formula(name, rand):
    c = CASES[name]
    q, k, v = rand(2, 3, c["T"], 16), rand(2, 3, c["S"], 16), rand(2, 3, c["S"], 16)
    allowed = c["mask"]
    if c["causal"]:
        cm = causal_mask(c["T"], c["S"])
        allowed = cm if allowed is None else allowed & cm
    expected = formula(q, k, v, allowed).float()
    ref = dot_product_attention(q, k, v, attn_mask=c["mask"], causal=c["causal"], impl="reference")
    fast = dot_product_attention(q, k, v, attn_mask=c["mask"], causal=c["causal"], impl="sdpa")
    torch.testing.assert_close(ref, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_causal_with_cache_aligns_queries_to_last_keys(rand):
    # the last T queries of a full causal attention equal T queries over all S keys with causal=True
    q, k, v = rand(1, 2, 8, 8), rand(1, 2, 8, 8), rand(1, 2, 8, 8)
    full = dot_product_attention(q, k, v, causal=True, impl="reference")
    for impl in ("reference", "sdpa"):
        tail = dot_product_attention(q[:, :, -3:], k, v, causal=True, impl=impl)
        torch.testing.assert_close(tail, full[:, :, -3:], atol=1e-6, rtol=1e-6)


def test_causal_mask_values():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_fully_masked_rows_are_zero_not_nan(impl, rand):
    q, k, v = (rand(2, 2, 4, 8, dtype=torch.float64).requires_grad_() for _ in range(3))
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[0, :, 1] = False  # query 1 of batch 0 may attend to nothing
    out = dot_product_attention(q, k, v, attn_mask=mask, impl=impl)
    assert torch.isfinite(out).all()
    assert (out[0, :, 1] == 0).all() and (out[0, :, 0] != 0).any()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert (q.grad[0, :, 1] == 0).all()


def test_return_weights_sum_to_one_and_respect_mask(rand):
    q, k, v = rand(1, 2, 5, 8), rand(1, 2, 5, 8), rand(1, 2, 5, 8)
    out, w = dot_product_attention(q, k, v, causal=True, return_weights=True)
    assert w.shape == (1, 2, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 5))
    assert (w.triu(1) == 0).all()
    torch.testing.assert_close(out, w @ v)


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_grouped_query_attention_equals_repeated_heads(impl, rand):
    q, k, v = rand(2, 6, 5, 8), rand(2, 2, 5, 8), rand(2, 2, 5, 8)
    out = dot_product_attention(q, k, v, causal=True, impl=impl)
    expected = formula(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), causal_mask(5)).float()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def gradient_pattern(causal, impl):
    """|d out[t] / d x[s]| summed over channels, for self-attention on x."""
    torch.manual_seed(1)
    mha = MultiHeadAttention(16, 2, causal=causal)
    x = torch.randn(1, 6, 16, dtype=torch.float64, requires_grad=True)
    mha = mha.double()
    grads = []
    for t in range(6):
        y, _ = mha(x, impl=impl)
        (g,) = torch.autograd.grad(y[0, t].sum(), x)
        grads.append(g[0].abs().sum(-1))
    return torch.stack(grads)  # (T_out, T_in)


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_causal_gradient_to_later_inputs_is_exactly_zero(impl):
    g = gradient_pattern(True, impl)
    assert (g.triu(1) == 0).all()
    lower = torch.ones_like(g, dtype=torch.bool).tril()
    assert (g[lower] > 0).all()


def test_bidirectional_gradient_reaches_every_input():
    g = gradient_pattern(False, "sdpa")
    assert (g > 0).all()


def test_multihead_attention_equals_torch_multiheadattention():
    torch.manual_seed(0)
    d, h = 32, 4
    ours = MultiHeadAttention(d, h)
    theirs = torch.nn.MultiheadAttention(d, h, batch_first=True)
    with torch.no_grad():
        wq, wk, wv = theirs.in_proj_weight.chunk(3)
        bq, bk, bv = theirs.in_proj_bias.chunk(3)
        for proj, w, b in ((ours.q_proj, wq, bq), (ours.k_proj, wk, bk), (ours.v_proj, wv, bv)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.weight.copy_(theirs.out_proj.weight)
        ours.out_proj.bias.copy_(theirs.out_proj.bias)
    x, ctx = torch.randn(2, 5, d), torch.randn(2, 7, d)
    # self-attention with a key padding mask (torch: True = ignore; ours: True = may attend)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    ref, _ = theirs(x, x, x, key_padding_mask=pad)
    y, _ = ours(x, attn_mask=key_to_attn_mask(~pad))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    # causal self-attention (torch: float/bool mask where True = ignore)
    ref, _ = theirs(x, x, x, attn_mask=~causal_mask(5))
    ours.causal = True
    y, _ = ours(x)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    ours.causal = False
    # encoder/decoder attention
    ref, _ = theirs(x, ctx, ctx)
    y, _ = ours(x, context=ctx)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_kv_cache_one_token_at_a_time_equals_full_forward():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, n_kv_heads=2, causal=True, rotary_base=10000.0).eval()
    x = torch.randn(2, 7, 16)
    full, _ = mha(x)
    cache, steps = None, []
    for t in range(7):
        out = mha(x[:, t : t + 1], cache=cache)
        assert isinstance(out, AttentionOutput)
        y, cache = out
        steps.append(y)
    assert isinstance(cache, KVCache) and cache.length == 7
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_self_attention_is_permutation_equivariant_without_positions():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(1, 6, 16)
    perm = torch.randperm(6)
    y, _ = mha(x)
    y_perm, _ = mha(x[:, perm])
    torch.testing.assert_close(y_perm, y[:, perm], atol=1e-6, rtol=1e-6)


def test_positional_encodings_break_permutation_equivariance():
    from attnkit.nn import LearnedPositionalEmbedding, SinusoidalPositionalEncoding

    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(1, 6, 16)
    perm = torch.tensor([1, 0, 2, 3, 5, 4])
    for pe in (SinusoidalPositionalEncoding(16), LearnedPositionalEmbedding(6, 16)):
        pos = pe(torch.arange(6))
        y, _ = mha(x + pos)
        y_perm, _ = mha(x[:, perm] + pos)
        assert not torch.allclose(y_perm, y[:, perm], atol=1e-4)
    rotary = MultiHeadAttention(16, 4, rotary_base=10000.0).eval()
    y, _ = rotary(x)
    y_perm, _ = rotary(x[:, perm])
    assert not torch.allclose(y_perm, y[:, perm], atol=1e-4)


def test_sinusoidal_encoding_is_the_papers_formula():
    from attnkit.nn import SinusoidalPositionalEncoding

    d = 8
    pe = SinusoidalPositionalEncoding(d)(torch.arange(50))
    for pos in (0, 1, 17, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert abs(pe[pos, 2 * i].item() - math.sin(angle)) < 1e-5
            assert abs(pe[pos, 2 * i + 1].item() - math.cos(angle)) < 1e-5


def test_rotary_scores_depend_only_on_relative_position():
    from attnkit.nn import RotaryEmbedding

    rope = RotaryEmbedding(8)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)
    def score(i, j):
        return (rope(q, torch.tensor([i])) * rope(k, torch.tensor([j]))).sum().item()
    assert abs(score(3, 1) - score(10, 8)) < 1e-4
    assert abs(score(3, 1) - score(3, 2)) > 1e-4


# ---- key masks and bad input ----------------------------------------------------------------

def test_key_mask_helpers():
    m = torch.tensor([[True, True, False], [True, False, False]])
    assert check_key_mask(m, 2, 3) is m and check_key_mask(None, 2, 3) is None
    assert key_to_attn_mask(m).shape == (2, 1, 1, 3) and key_to_attn_mask(None) is None
    assert torch.equal(padding_mask(torch.tensor([2, 1]), 3), key_to_attn_mask(m))
    with pytest.raises(TypeError, match="src_key_mask must be a boolean"):
        check_key_mask(m.float(), 2, 3, name="src_key_mask")
    with pytest.raises(ValueError, match=r"key_mask must be a key padding mask of shape \(B, S\) = \(2, 4\)"):
        check_key_mask(m, 2, 4)
    with pytest.raises(ValueError, match="an attention mask"):
        check_key_mask(key_to_attn_mask(m), 2, 3)


def _q(*shape):
    return torch.zeros(*shape)


BAD_INPUTS = {
    "q_3d": (ValueError, "q must have shape", lambda q: dot_product_attention(q[0], q, q)),
    "head_size": (ValueError, "head size", lambda q: dot_product_attention(q, _q(1, 2, 4, 6), _q(1, 2, 4, 6))),
    "batch": (ValueError, "batch size", lambda q: dot_product_attention(q, _q(2, 2, 4, 8), _q(2, 2, 4, 8))),
    "mask_shape": (ValueError, "attn_mask of shape",
                   lambda q: dot_product_attention(q, q, q, attn_mask=torch.ones(1, 1, 4, 5, dtype=torch.bool))),
    "mask_dtype": (TypeError, "attn_mask must be boolean",
                   lambda q: dot_product_attention(q, q, q, attn_mask=torch.ones(4, 4))),
    "int_inputs": (TypeError, "floating-point", lambda q: dot_product_attention(q.long(), q.long(), q.long())),
    "impl": (ValueError, "impl", lambda q: dot_product_attention(q, q, q, impl="flash9")),
    "heads_divide": (ValueError, "divisible", lambda q: MultiHeadAttention(10, 3)),
    "kv_heads": (ValueError, "n_kv_heads", lambda q: MultiHeadAttention(16, 4, n_kv_heads=3)),
    "x_width": (ValueError, "d_model=16", lambda q: MultiHeadAttention(16, 4)(_q(1, 3, 12))),
    "context_batch": (ValueError, "context must have shape",
                      lambda q: MultiHeadAttention(16, 4)(_q(2, 3, 16), context=_q(1, 3, 16))),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(case):
    error, match, call = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        call(_q(1, 2, 4, 8))
