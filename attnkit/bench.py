"""Small built-in benchmarks (``attnkit bench NAME``); the side-by-side ones live in benchmarks/."""

from __future__ import annotations

import statistics
import time

import torch


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generation(quick: bool = False) -> dict:
    """Greedy decoding tokens/s of a TransformerLM with the KV cache and without it (recomputing the
    whole prefix at every step), same tokens."""
    from .generation import generate
    from .models import TransformerLM, TransformerLMConfig

    torch.manual_seed(0)
    n_new, prompt_len = (32, 16) if quick else (256, 64)
    config = TransformerLMConfig(vocab_size=256, d_model=256, n_heads=4, n_layers=4, d_ff=1024,
                                 max_len=prompt_len + n_new, dropout=0.0)
    model = TransformerLM(config).eval()
    prompt = torch.randint(0, 256, (1, prompt_len))

    def no_cache_step(tokens, history):
        seq = tokens if history is None else torch.cat([history, tokens], 1)
        return model(seq)[:, -tokens.shape[1]:], seq

    results = {}
    with torch.inference_mode():
        cached = model.generate(prompt, n_new)
        uncached = generate(no_cache_step, prompt, n_new)
        t_cache = _median_time(lambda: model.generate(prompt, n_new), 3)
        t_full = _median_time(lambda: generate(no_cache_step, prompt, n_new), 3)
    results["same_tokens"] = bool(torch.equal(cached, uncached))
    results["tokens_per_s_with_cache"] = n_new / t_cache
    results["tokens_per_s_without_cache"] = n_new / t_full
    results["speedup"] = t_full / t_cache
    results["setting"] = f"TransformerLM d_model 256, 4 layers, prompt {prompt_len}, {n_new} new tokens, greedy"
    return results


def attention(quick: bool = False) -> dict:
    """Forward+backward of causal dot-product attention: the reference formula vs SDPA."""
    from .functional import dot_product_attention

    T = 512 if quick else 2048
    q, k, v = (torch.randn(1, 8, T, 64, requires_grad=True) for _ in range(3))

    def run(impl):
        out = dot_product_attention(q, k, v, causal=True, impl=impl)
        out.sum().backward()

    t_ref = _median_time(lambda: run("reference"), 3)
    t_sdpa = _median_time(lambda: run("sdpa"), 3)
    return {"T": T, "reference_s": t_ref, "sdpa_s": t_sdpa, "speedup": t_ref / t_sdpa}


BENCHMARKS = {"generation": generation, "attention": attention}
