"""T5: the model (attnkit.models.t5), its Hugging Face folders (attnkit.interop.t5) and the span-corruption
objective (attnkit.train.span_corruption).

Parity is checked against transformers' T5ForConditionalGeneration on small randomly initialized models
(v1.0: relu and a tied, rescaled output layer; v1.1: gated GELU and an untied one), saved with
save_pretrained and loaded with load_t5; no pretrained download is needed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnkit.interop import UnsupportedCheckpoint, load_t5, save_t5
from attnkit.interop.t5_parity import (
    SHAPES,
    VOCAB,
    batch,
    compare,
    hf_greedy,
    pad_after_eos,
    random_pair,
    relative_error,
)
from attnkit.models import T5, T5Config
from attnkit.models.t5 import biased_attention, relative_position_bucket, shift_right
from attnkit.train.span_corruption import span_corruption


@pytest.fixture(scope="module")
def transformers():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()  # an untied T5 warns that its head is not tied, as intended
    return transformers


@pytest.fixture(scope="module", params=list(SHAPES))
def pair(request, transformers, tmp_path_factory):
    """(transformers model, attnkit model loaded from its save_pretrained folder, the folder), per shape."""
    folder = tmp_path_factory.mktemp(request.param)
    hf, model = random_pair(request.param, folder, seed=list(SHAPES).index(request.param))
    return hf, model, folder


# ----------------------------------------------------------------------------------- parity with HF


def test_config_is_read_from_the_folder(pair):
    hf, model, _ = pair
    h, c = hf.config, model.config
    assert (c.vocab_size, c.d_model, c.d_kv, c.d_ff, c.n_heads) == (VOCAB, h.d_model, h.d_kv, h.d_ff, h.num_heads)
    assert (c.n_layers, c.n_decoder_layers) == (h.num_layers, h.num_decoder_layers)
    assert (c.relative_attention_num_buckets, c.relative_attention_max_distance) == (
        h.relative_attention_num_buckets, h.relative_attention_max_distance)
    assert c.feed_forward == h.feed_forward_proj
    assert c.tie_embeddings == h.scale_decoder_outputs
    assert (model.lm_head.weight is model.embed.weight) == c.tie_embeddings
    assert (c.pad_id, c.eos_id, c.decoder_start_id) == (0, 1, 0)
    assert not model.training
    labels = torch.randint(2, VOCAB, (2, 5))
    assert torch.equal(shift_right(labels, c.decoder_start_id), hf._shift_right(labels))


def test_encoder_output_and_logits_equal_transformers(pair):
    hf, model, _ = pair
    src, mask, tgt = batch()
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt)
        memory = model.encode(src, mask)
        logits = model(src, tgt, mask)
    assert relative_error(memory, theirs.encoder_last_hidden_state) < 1e-4
    assert relative_error(logits, theirs.logits) < 1e-4
    report = compare(hf, model)  # what benchmarks/t5_parity.py reports, on the same batch
    assert report["logits_relative_error"] == relative_error(logits, theirs.logits)
    assert report["greedy_equal"] and report["greedy_tokens_differing"] == 0 and report["greedy_tokens"] >= 15


def test_greedy_generation_equals_transformers(pair):
    hf, model, _ = pair
    src, mask, _ = batch(1)
    with torch.no_grad():
        theirs = hf_greedy(hf, src, mask, 16, eos_id=1)
        ours = model.generate(src, 16, src_key_mask=mask)
    assert (ours[:, 0] == 0).all()
    assert (theirs[:, 2:] != theirs[:, 1:-1]).sum() >= 6  # not one token repeated: the steps matter
    assert torch.equal(pad_after_eos(ours, 1), theirs)

    # with a stop token the model does produce (after a few steps), so that the stopping is exercised
    eos = next(t for t in theirs[:, 3:].flatten().tolist() if t > 1)
    model = copy.deepcopy(model)  # the fixture's model is shared by the other tests
    model.config = dataclasses.replace(model.config, eos_id=eos)
    with torch.no_grad():
        theirs = hf_greedy(hf, src, mask, 16, eos_id=eos)
        ours = model.generate(src, 16, src_key_mask=mask)
    assert (ours == eos).any()
    assert torch.equal(pad_after_eos(ours, eos), theirs)


def test_save_t5_round_trip_through_transformers(pair, transformers, tmp_path):
    hf, model, _ = pair
    save_t5(model, tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert ("lm_head.weight" in saved) != model.config.tie_embeddings
    again = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    reloaded = load_t5(tmp_path)
    src, mask, tgt = batch(2)
    with torch.no_grad():
        ours = model(src, tgt, mask)
        assert relative_error(again(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits,
                              ours) < 1e-4
        assert torch.equal(reloaded(src, tgt, mask), ours)
    assert reloaded.config == model.config


# --------------------------------------------------------------------------------- relative buckets


def test_buckets_against_a_hand_computed_table():
    causal = {  # distance back from the query (key - query = -d) -> bucket, 32 buckets, max_distance 128
        0: 0, 1: 1, 7: 7, 15: 15, 16: 16, 20: 17, 32: 21, 64: 26, 100: 30, 127: 31, 128: 31, 1000: 31,
    }
    rel = torch.tensor([-d for d in causal])
    assert relative_position_bucket(rel, bidirectional=False).tolist() == list(causal.values())
    assert relative_position_bucket(torch.tensor([1, 5, 500]), bidirectional=False).tolist() == [0, 0, 0]
    both = {0: 0, -3: 3, 3: 19, -7: 7, 7: 23, -8: 8, 8: 24, -20: 10, 20: 26, -200: 15, 200: 31}
    rel = torch.tensor(list(both))
    assert relative_position_bucket(rel, bidirectional=True).tolist() == list(both.values())
    # 8 buckets, max_distance 12, bidirectional: 4 per side, distances 0 and 1 exact, 2..11 in 2 log buckets
    small = {0: 0, -1: 1, 1: 5, -2: 2, -3: 2, 3: 6, -5: 3, 5: 7, -40: 3, 40: 7}
    rel = torch.tensor(list(small))
    got = relative_position_bucket(rel, bidirectional=True, num_buckets=8, max_distance=12)
    assert got.tolist() == list(small.values())


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 12), (16, 20), (33, 100), (4, 3), (64, 256)])
def test_buckets_equal_transformers_static_method(transformers, num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-700, 701)
    for bidirectional in (True, False):
        ours = relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets,
                                        max_distance=max_distance)
        theirs = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets,
                                                       max_distance=max_distance)
        assert torch.equal(ours, theirs), f"bidirectional={bidirectional}"
        assert 0 <= int(ours.min()) and int(ours.max()) < num_buckets


# ------------------------------------------------------------------------------ the model on its own


def tiny(**overrides) -> T5:
    torch.manual_seed(0)
    values = dict(vocab_size=VOCAB, d_model=16, d_kv=6, d_ff=24, n_layers=2, n_decoder_layers=2, n_heads=2,
                  relative_attention_num_buckets=8, relative_attention_max_distance=6, dropout=0.0)
    return T5(T5Config(**{**values, **overrides})).eval()


@pytest.mark.parametrize("feed_forward,tie", [("relu", True), ("gated-gelu", False)])
def test_cached_decoding_equals_decoding_at_once(feed_forward, tie):
    model = tiny(feed_forward=feed_forward, tie_embeddings=tie)
    src, mask, tgt = batch(3)
    with torch.no_grad():
        memory = model.encode(src, mask)
        full = model.decode(tgt, memory, mask).logits  # (B, 20, V)
        cache = None
        for t in range(tgt.shape[1]):  # one position at a time: 20 positions reach past max_distance=6
            step, cache = model.decode(tgt[:, t : t + 1], memory, mask, cache=cache)
            assert (step[:, 0] - full[:, t]).abs().max() < 1e-5, f"position {t}"
        # several new positions after a cache
        _, cache = model.decode(tgt[:, :7], memory, mask)
        rest = model.decode(tgt[:, 7:], memory, mask, cache=cache).logits
    assert (rest - full[:, 7:]).abs().max() < 1e-5
    assert cache.length == 7


def test_attention_paths_agree_and_empty_rows_give_zeros():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    bias = torch.randn(1, 3, 5, 5, generator=g)
    mask = torch.rand(2, 1, 5, 5, generator=g) > 0.3
    mask[0, 0, 2] = False  # a query with no key
    for b, m in ((bias, mask), (None, mask), (bias, None), (None, None)):
        ref = biased_attention(q, k, v, b, m, impl="reference")
        fast = biased_attention(q, k, v, b, m, impl="sdpa")
        assert torch.allclose(ref, fast, atol=1e-5)
        assert not ref.isnan().any()
    assert (biased_attention(q, k, v, bias, mask, impl="reference")[0, :, 2] == 0).all()
    # no 1/sqrt(d) scale: one key per query returns its value, and the scores are q.k plus the bias
    one = torch.zeros(1, 1, 1, 2, dtype=torch.bool)
    one[..., 0] = True
    assert torch.allclose(biased_attention(q[:1, :1, :1], k[:1, :1, :2], v[:1, :1, :2], attn_mask=one), v[0, 0, 0])
    scores = q[:1, :1, :1] @ k[:1, :1, :2].transpose(-2, -1)  # (1, 1, 1, 2)
    weights = scores.softmax(-1)
    assert torch.allclose(biased_attention(q[:1, :1, :1], k[:1, :1, :2], v[:1, :1, :2]), weights @ v[:1, :1, :2],
                          atol=1e-6)


def test_training_step_and_beam_search():
    model = tiny(dropout=0.1).train()
    src, mask, tgt = batch(4)
    logits = model(src, tgt, mask)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.roll(-1, 1).flatten())
    loss.backward()
    assert math.isfinite(loss.item()) and model.decoder.relative_bias.embedding.weight.grad.abs().sum() > 0
    model.eval()
    out = model.generate(src, 6, src_key_mask=mask, beam_size=3)
    assert out.shape[0] == 3 and (out[:, 0] == 0).all() and out.shape[1] <= 7
    assert torch.equal(model.generate(src, 6, src_key_mask=mask, beam_size=1),
                       model.generate(src, 6, src_key_mask=mask))


# --------------------------------------------------------------------------------- span corruption

FIRST_SENTINEL = 1999


def corrupt(tokens, seed, **kw):
    return span_corruption(tokens, first_sentinel_id=FIRST_SENTINEL, generator=torch.Generator().manual_seed(seed),
                           **kw)


def split_at_sentinels(ids: list[int]) -> dict[int, list[int]]:
    """{sentinel: the tokens after it up to the next sentinel} of a target sequence."""
    spans, current = {}, None
    for t in ids:
        if t > FIRST_SENTINEL - 500:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    return spans


def test_span_corruption_noise_density_and_span_length_on_average():
    # 1,500 sequences of 20..400 tokens (315,000 in all). T5 rounds each sequence to whole noise tokens and
    # whole spans, so one sequence is off by up to 0.5/T in density and by up to 1.5/spans in mean span
    # length; these roundings are as often up as down, so over all sequences they nearly cancel (measured:
    # 0.14998 and 2.9999). The tolerances, 0.001 and 0.05, are far wider than that and still
    # narrower than the error of rounding the wrong way everywhere (~0.0024 in density) or a wrong setting
    lengths = torch.randint(20, 401, (1500,), generator=torch.Generator().manual_seed(0)).tolist()
    n_tokens = n_noise = n_spans = 0
    span_lengths = []
    for i, T in enumerate(lengths):
        out = corrupt(torch.arange(T), i)
        spans = split_at_sentinels(out.targets.tolist())
        n_tokens += T
        n_noise += sum(len(s) for s in spans.values())
        n_spans += len(spans)
        span_lengths += [len(s) for s in spans.values()]
    assert abs(n_noise / n_tokens - 0.15) < 0.001
    assert abs(n_noise / n_spans - 3.0) < 0.05
    assert min(span_lengths) == 1 and max(span_lengths) >= 8  # random lengths, not all 3


def test_span_corruption_reconstructs_the_original():
    for seed in range(100):
        T = 10 + 7 * seed
        original = torch.randperm(T, generator=torch.Generator().manual_seed(seed)) + 2  # each id once
        out = corrupt(original, seed, eos_id=1)
        inputs, targets = out.inputs.tolist(), out.targets.tolist()
        assert inputs[-1] == 1 and targets[-1] == 1
        spans = split_at_sentinels(targets[:-1])
        rebuilt = [t for s in inputs[:-1] for t in (spans[s] if s > FIRST_SENTINEL - 500 else [s])]
        assert rebuilt == original.tolist()
        kept = [t for t in inputs[:-1] if t <= FIRST_SENTINEL - 500]
        dropped = [t for s in spans.values() for t in s]
        assert sorted(kept + dropped) == sorted(original.tolist()) and not set(kept) & set(dropped)
        assert kept == original[~out.noise_mask].tolist() and dropped == original[out.noise_mask].tolist()
        # sentinels count down from the first one, in the inputs and the targets alike
        sentinels = [t for t in inputs if t > FIRST_SENTINEL - 500]
        assert sentinels == list(range(FIRST_SENTINEL, FIRST_SENTINEL - len(sentinels), -1))
        assert list(spans) == sentinels and all(spans.values())
        # T5's layout: kept tokens first, a noise span last
        assert not out.noise_mask[0] and out.noise_mask[-1]


def test_span_corruption_final_sentinel_and_determinism():
    tokens = torch.arange(2, 102)
    out = corrupt(tokens, 0, final_sentinel=True, eos_id=1)
    n_spans = int((out.inputs > FIRST_SENTINEL - 500).sum())
    assert out.targets[-2:].tolist() == [FIRST_SENTINEL - n_spans, 1]
    a, b = corrupt(tokens, 7), corrupt(tokens, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    masks = {tuple(corrupt(tokens, seed).noise_mask.tolist()) for seed in range(10)}
    assert len(masks) == 10  # the seed decides


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("field,value", [
    ("n_heads", 0), ("d_kv", -1), ("n_decoder_layers", 0), ("vocab_size", 2.5), ("feed_forward", "gated-silu"),
    ("dropout", 1.0), ("layer_norm_eps", 0.0), ("tie_embeddings", "yes"), ("pad_id", VOCAB), ("eos_id", -1),
    ("decoder_start_id", True), ("relative_attention_num_buckets", 2), ("relative_attention_max_distance", 4),
])
def test_bad_config_values_name_the_field(field, value):
    values = dict(vocab_size=VOCAB, relative_attention_num_buckets=8, relative_attention_max_distance=12)
    with pytest.raises(ValueError, match=field):
        T5Config(**{**values, field: value})


def test_bad_inputs_name_the_argument():
    model = tiny()
    src, mask, tgt = batch()
    with pytest.raises(ValueError, match="src"):
        model(src + VOCAB, tgt)
    with pytest.raises(ValueError, match="src_key_mask"):
        model(src, tgt, mask[:, :5])
    with pytest.raises(ValueError, match="memory"):
        model.decode(tgt, torch.zeros(3, 30, 7))
    with pytest.raises(ValueError, match="beam_size"):
        model.generate(src, 3, beam_size=0)


@pytest.mark.parametrize("key,value,expected", [
    ("feed_forward_proj", "gated-silu", "feed_forward_proj"),
    ("num_heads", 0, "num_heads"),
    ("model_type", "bart", "model_type"),
    ("relative_attention_max_distance", 2, "relative_attention_max_distance"),
    ("eos_token_id", [1, 2], "eos_token_id"),
    ("d_kv", None, "d_kv"),
])
def test_unsupported_configs_are_refused_naming_file_and_field(tmp_path, key, value, expected):
    save_t5(tiny(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedCheckpoint, match=expected) as err:
        load_t5(tmp_path)
    assert "config.json" in str(err.value)


def test_weights_problems_are_refused(tmp_path):
    save_t5(tiny(tie_embeddings=True), tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    save_file({**state, "encoder.embed_tokens.weight": state["shared.weight"].clone()}, str(weights))
    load_t5(tmp_path)  # a copy of the embedding is fine
    save_file({**state, "lm_head.weight": state["shared.weight"] + 1}, str(weights))
    with pytest.raises(UnsupportedCheckpoint, match="lm_head.weight"):
        load_t5(tmp_path)  # scaled output with its own weights
    save_file({**state, "encoder.block.9.layer.0.SelfAttention.q.weight": torch.zeros(4, 4)}, str(weights))
    with pytest.raises(UnsupportedCheckpoint, match="no place"):
        load_t5(tmp_path)
    save_file({k: v for k, v in state.items() if k != "decoder.final_layer_norm.weight"}, str(weights))
    with pytest.raises(UnsupportedCheckpoint, match="decoder.final_layer_norm.weight"):
        load_t5(tmp_path)
    weights.rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsupportedCheckpoint, match="pytorch_model.bin"):
        load_t5(tmp_path)


@pytest.mark.parametrize("kwargs,error,expected", [
    (dict(noise_density=0.0), ValueError, "noise_density"),
    (dict(noise_density=1.0), ValueError, "noise_density"),
    (dict(mean_noise_span_length=0.5), ValueError, "mean_noise_span_length"),
    (dict(tokens=torch.zeros(2, 10, dtype=torch.long)), ValueError, "tokens"),
    (dict(tokens=torch.zeros(10)), TypeError, "tokens"),
    (dict(tokens=torch.tensor([5])), ValueError, "tokens"),
    (dict(first_sentinel_id=3), ValueError, "first_sentinel_id"),
    (dict(tokens=torch.tensor([2, 3, 1999, 4])), ValueError, "sentinel"),
])
def test_span_corruption_errors_name_the_argument(kwargs, error, expected):
    args = {"tokens": torch.arange(2, 102), "first_sentinel_id": FIRST_SENTINEL, **kwargs}
    with pytest.raises(error, match=expected):
        span_corruption(args.pop("tokens"), **args)
