"""Cached LSH decoding: each step equals the full pass's last position; models decode the same tokens."""

import pytest
import torch

from attnkit.functional import LSHCache, lsh_attention, lsh_attention_step
from attnkit.generation import reorder_cache
from attnkit.models.reformer import Reformer, ReformerConfig, ReformerLM
from attnkit.nn import LSHSelfAttention


@pytest.mark.parametrize(
    "bucket_size,n_buckets,dedup",
    [(8, None, False), (8, None, True), (8, 4, False), (2, None, False)],  # (2, None): > 128 buckets, factorized
)
def test_each_step_equals_the_last_position_of_the_full_pass(bucket_size, n_buckets, dedup):
    """From one token to 300: the window (one bucket while the sequence fits a chunk, then a bucket count
    that grows with the length and makes the cache rehash) is reproduced from counts alone."""
    g = torch.Generator().manual_seed(0)
    B, H, L = 2, 3, 300
    qk = torch.randn(B, H, L, 16, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, L, 8, generator=g, dtype=torch.float64)
    kw = dict(n_hashes=3, bucket_size=bucket_size, seed=5, n_buckets=n_buckets, dedup=dedup)
    cache, checked = None, 0
    for t in range(L):
        out, cache = lsh_attention_step(qk[:, :, t : t + 1], v[:, :, t : t + 1], cache, **kw)
        if t % 13 == 0 or t in (1, bucket_size, bucket_size + 1, L - 1):
            full = lsh_attention(qk[:, :, : t + 1], v[:, :, : t + 1], causal=True, impl="chunked", **kw)
            torch.testing.assert_close(out, full[:, :, -1:], rtol=1e-12, atol=1e-12)
            checked += 1
    assert cache.length == L and cache.buckets.shape == (B, H, 3, L) and checked > 20


def test_step_checks_its_input():
    with pytest.raises(ValueError, match="one new token"):
        lsh_attention_step(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), None)


def test_layer_decode_after_a_prompt_equals_attend_over_each_prefix():
    torch.manual_seed(0)
    layer = LSHSelfAttention(32, 2, n_hashes=2, bucket_size=8, causal=True).eval()
    x = torch.randn(2, 60, 32)
    with torch.no_grad():
        qk, v = layer.qk_proj(x), layer.v_proj(x)
        y, cache = layer.decode(qk[:, :20], v[:, :20])  # the prompt: one ordinary pass
        torch.testing.assert_close(y, layer(x[:, :20]))
        for t in range(20, 60):
            y, cache = layer.decode(qk[:, t : t + 1], v[:, t : t + 1], cache)
            torch.testing.assert_close(y, layer(x[:, : t + 1])[:, -1:], rtol=1e-5, atol=1e-6)
    assert isinstance(cache, LSHCache) and cache.length == 60


def test_layer_decode_refuses_settings_it_cannot_reproduce():
    for layer in (LSHSelfAttention(16, 2), LSHSelfAttention(16, 2, causal=True, attend_across_buckets=True)):
        assert not layer.can_decode
        with pytest.raises(ValueError, match="causal LSH attention without attend_across_buckets"):
            layer.decode(torch.randn(1, 4, 16), torch.randn(1, 4, 16))


def _lm(**kw) -> ReformerLM:
    torch.manual_seed(0)
    base = dict(vocab_size=50, d_model=32, n_heads=2, n_layers=1, d_ff=64, bucket_size=8, n_hashes=2, max_len=256,
                positional="learned")
    return ReformerLM(ReformerConfig(**{**base, **kw})).eval()


@pytest.mark.parametrize("kw", [{}, {"dedup": True, "positional": "axial", "ff_chunks": 2, "reversible": True}])
def test_one_lsh_layer_generates_the_same_tokens_with_and_without_the_cache(kw):
    model = _lm(**kw)
    prompt = torch.randint(0, 50, (3, 20), generator=torch.Generator().manual_seed(1))
    cached = model.generate(prompt, 60)  # the bucket count grows from 4 to 10 on the way
    assert torch.equal(cached, model.generate(prompt, 60, use_cache=False))
    beams = model.generate(prompt, 30, beam_size=3)  # beam search reorders the LSH caches
    assert torch.equal(beams, model.generate(prompt, 30, beam_size=3, use_cache=False))


def test_step_logits_equal_the_forward_over_each_prefix_through_several_layers():
    """With one chunk (bucket_size >= the length) LSH is exact shared-QK attention, so a position's state
    does not depend on later tokens and every layer's cached step must equal the full forward."""
    model = _lm(n_layers=3, attn_layers=("lsh", "full"), bucket_size=128, n_buckets=1, reversible=True)
    tokens = torch.randint(0, 50, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(tokens)
        logits, cache = model.step(tokens[:, :10])
        torch.testing.assert_close(logits, full[:, :10], rtol=1e-4, atol=1e-5)
        for t in range(10, 40):
            logits, cache = model.step(tokens[:, t : t + 1], reorder_cache(cache, torch.arange(2)))
            torch.testing.assert_close(logits, full[:, t : t + 1], rtol=1e-4, atol=1e-5)
    assert cache.length == 40
    assert [type(c).__name__ for c in cache.layers] == ["LSHCache", "NoneType", "KVCache", "NoneType", "LSHCache",
                                                        "NoneType"]


def test_models_that_cannot_use_the_cache_say_so_and_generate_by_re_running():
    model = _lm(attend_across_buckets=True)
    assert not model.can_decode
    with pytest.raises(ValueError, match="generate\\(use_cache=False\\)"):
        model.step(torch.tensor([[1, 2]]))
    assert model.generate(torch.tensor([[1, 2, 3]]), 5).shape == (1, 8)


def test_the_encoder_decoder_translates_the_same_with_and_without_the_cache():
    torch.manual_seed(0)
    config = ReformerConfig(vocab_size=50, d_model=32, n_heads=2, n_layers=1, d_ff=64, bucket_size=8, n_hashes=2,
                            max_len=128, positional="learned")
    model = Reformer(config).eval()
    src = torch.randint(0, 50, (3, 30), generator=torch.Generator().manual_seed(3))
    for beam_size in (1, 3):
        cached = model.generate(src, 40, bos_id=1, beam_size=beam_size)
        assert torch.equal(cached, model.generate(src, 40, bos_id=1, beam_size=beam_size, use_cache=False))
