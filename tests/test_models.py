"""The model families: caches, parameter counts, configs, bad input, and that they learn."""

import pytest
import torch
import torch.nn.functional as F

from attnkit.models import (
    MaskedLMHead, RNNSeq2Seq, RNNSeq2SeqConfig, SequenceClassificationHead, Transformer, TransformerConfig,
    TransformerEncoder, TransformerEncoderConfig, TransformerLM, TransformerLMConfig, mask_tokens,
)

TINY = dict(d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0)


def tiny_lm(**kw):
    torch.manual_seed(0)
    return TransformerLM(TransformerLMConfig(vocab_size=50, max_len=64, **{**TINY, **kw})).eval()


def tiny_seq2seq(**kw):
    torch.manual_seed(0)
    return Transformer(TransformerConfig(src_vocab_size=40, tgt_vocab_size=50, max_len=64, **{**TINY, **kw})).eval()


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(positional="sinusoidal", norm_first=False),
        dict(positional="rotary", norm="rms", activation="swiglu", bias=False, n_kv_heads=2),
    ],
    ids=["gpt", "post_norm_sinusoidal", "llama_like"],
)
def test_lm_kv_cache_decoding_equals_full_forward(options):
    model = tiny_lm(**options)
    tokens = torch.randint(0, 50, (2, 12))
    full = model(tokens)
    logits, cache = model.step(tokens[:, :5])  # a prompt, then one token at a time
    pieces = [logits]
    for t in range(5, 12):
        logits, cache = model.step(tokens[:, t : t + 1], cache)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_seq2seq_decoder_kv_cache_equals_full_forward():
    model = tiny_seq2seq(pad_id=0)
    src = torch.randint(1, 40, (2, 9))
    src[1, 6:] = 0  # padded source
    tgt = torch.randint(1, 50, (2, 8))
    full = model(src, tgt)
    memory = model.encode(src)
    cache, pieces = None, []
    for t in range(8):
        logits, cache = model.decode(tgt[:, t : t + 1], memory, src_mask=src != 0, cache=cache)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_real_positions():
    model = tiny_seq2seq(pad_id=0)
    src = torch.randint(1, 40, (1, 6))
    tgt = torch.randint(1, 50, (1, 5))
    alone = model(src, tgt)
    padded = model(torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], 1), tgt)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    enc = TransformerEncoder(TransformerEncoderConfig(vocab_size=50, pad_id=0, **TINY)).eval()
    h = enc(src)
    h_pad = enc(torch.cat([src, torch.zeros(1, 2, dtype=torch.long)], 1))[:, :6]
    torch.testing.assert_close(h_pad, h, atol=1e-5, rtol=1e-5)
    rnn = RNNSeq2Seq(RNNSeq2SeqConfig(src_vocab_size=40, tgt_vocab_size=50, d_embed=16, d_hidden=24, pad_id=0)).eval()
    torch.testing.assert_close(
        rnn(torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], 1), tgt), rnn(src, tgt), atol=1e-5, rtol=1e-5
    )


def test_base_preset_has_the_papers_parameter_count():
    # One 37,000 x 512 embedding is shared by the encoder, the decoder and the pre-softmax projection
    # (paper, section 3.4) and counted once: 18.9M embedding + 18.9M encoder + 25.2M decoder = 63.1M,
    # the paper's "65M" (Table 3) up to rounding of the vocabulary and counting conventions.
    model = Transformer(TransformerConfig.base())
    n = sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once
    assert 62e6 < n < 66e6, n
    assert model.config.d_model == 512 and model.config.n_heads == 8 and model.config.d_ff == 2048


def test_greedy_generation_matches_argmax_of_full_forward():
    model = tiny_lm()
    prompt = torch.randint(0, 50, (2, 4))
    out = model.generate(prompt, 6)
    assert out.shape == (2, 10) and torch.equal(out[:, :4], prompt)
    logits = model(out[:, :-1])
    assert torch.equal(logits[:, 3:].argmax(-1), out[:, 4:])


def test_sampling_is_seeded_and_respects_top_k():
    model = tiny_lm()
    prompt = torch.randint(0, 50, (1, 3))
    a = model.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    from attnkit.generation import sample_next

    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    draws = {int(sample_next(logits, temperature=1.0, top_k=2)) for _ in range(50)}
    assert draws <= {1, 2}
    draws = {int(sample_next(logits, temperature=1.0, top_p=0.5)) for _ in range(20)}
    assert draws == {1}


def test_seq2seq_generate_stops_at_eos():
    model = tiny_seq2seq()
    out = model.generate(torch.randint(0, 40, (3, 5)), 10, bos_id=1, eos_id=2)
    assert out.shape[0] == 3 and out.shape[1] <= 11 and (out[:, 0] == 1).all()
    rnn = RNNSeq2Seq(RNNSeq2SeqConfig(src_vocab_size=40, tgt_vocab_size=50, d_embed=16, d_hidden=24, cell="lstm"))
    assert rnn.generate(torch.randint(0, 40, (2, 5)), 7, bos_id=1).shape == (2, 8)


def test_encoder_heads_and_mlm_masking():
    enc = TransformerEncoder(TransformerEncoderConfig(vocab_size=50, n_token_types=2, embed_norm=True, **TINY))
    tokens = torch.randint(5, 50, (2, 10))
    h = enc(tokens, token_types=torch.zeros_like(tokens))
    assert h.shape == (2, 10, 32)
    assert MaskedLMHead(32, 50, embedding=enc.embed.token)(h).shape == (2, 10, 50)
    assert SequenceClassificationHead(32, 3)(h, torch.ones(2, 10, dtype=torch.bool)).shape == (2, 3)
    g = torch.Generator().manual_seed(0)
    big = torch.randint(5, 50, (64, 64))
    inputs, labels = mask_tokens(big, mask_id=4, vocab_size=50, generator=g)
    chosen = labels != -100
    assert 0.12 < chosen.float().mean() < 0.18
    assert ((inputs == 4) == (chosen & (inputs == 4))).all()
    assert 0.75 < (inputs[chosen] == 4).float().mean() < 0.85
    assert torch.equal(inputs[~chosen], big[~chosen])


def test_lm_learns_to_continue_a_pattern():
    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(vocab_size=12, max_len=32, **TINY))
    data = torch.arange(24).remainder(12)[None].repeat(8, 1)  # 0 1 2 ... 11 0 1 ...
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(data[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 12), data[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < 0.05
    assert model.generate(torch.tensor([[3, 4, 5]]), 5).tolist() == [[3, 4, 5, 6, 7, 8, 9, 10]]


@pytest.mark.parametrize("kind", ["transformer", "rnn"])
def test_seq2seq_learns_to_reverse(kind):
    torch.manual_seed(0)
    V, L = 10, 5  # 0 = bos, 1 = eos, symbols 2..9
    if kind == "transformer":
        model = Transformer(TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, max_len=16, **TINY))
        lr, steps = 3e-3, 250
    else:
        model = RNNSeq2Seq(RNNSeq2SeqConfig(src_vocab_size=V, tgt_vocab_size=V, d_embed=32, d_hidden=64, dropout=0.0))
        lr, steps = 1e-2, 250
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        src = torch.randint(2, V, (32, L), generator=g)
        tgt = torch.cat([torch.zeros(32, 1, dtype=torch.long), src.flip(1), torch.ones(32, 1, dtype=torch.long)], 1)
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), tgt[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    src = torch.randint(2, V, (16, L), generator=g)
    out = model.generate(src, L + 1, bos_id=0, eos_id=1)
    accuracy = (out[:, 1 : L + 1] == src.flip(1)).float().mean().item()
    assert accuracy > 0.9, accuracy


# ---- configs and bad input -------------------------------------------------------------------

def test_configs_reject_inconsistent_values_with_a_fix():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        TransformerLMConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="positional"):
        TransformerLMConfig(positional="absolute")
    with pytest.raises(ValueError, match="share_embeddings"):
        TransformerConfig(src_vocab_size=10, tgt_vocab_size=20, share_embeddings=True)
    with pytest.raises(ValueError, match="dropout"):
        TransformerEncoderConfig(dropout=1.5)
    with pytest.raises(ValueError, match="n_layers"):
        TransformerLMConfig(n_layers=0)
    with pytest.raises(ValueError, match="cell"):
        RNNSeq2SeqConfig(cell="rnn")
    with pytest.raises(ValueError, match="did you mean 'd_model'"):
        TransformerLMConfig.from_dict({"dmodel": 64})
    with pytest.raises(TypeError):
        TransformerLMConfig(unknown=1)


def test_config_round_trip(tmp_path):
    c = TransformerConfig.base()
    c.save(tmp_path / "config.json")
    assert TransformerConfig.load(tmp_path / "config.json") == c
    with pytest.raises(ValueError, match="not a TransformerLMConfig"):
        TransformerLMConfig.load(tmp_path / "config.json")


def test_bad_tokens_raise_clear_errors():
    lm, s2s = tiny_lm(), tiny_seq2seq()
    with pytest.raises(TypeError, match="integer token ids"):
        lm(torch.rand(2, 5))
    with pytest.raises(ValueError, match="id 50, outside the vocabulary"):
        lm(torch.tensor([[1, 2, 50]]))
    with pytest.raises(ValueError, match="id -1"):
        lm(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        lm(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="max_len=64"):
        lm(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="batch sizes differ"):
        s2s(torch.zeros(2, 5, dtype=torch.long), torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="src holds id 45"):
        s2s(torch.full((1, 3), 45), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="src_mask must have"):
        s2s(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long), src_mask=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a boolean"):
        lm(torch.zeros(1, 3, dtype=torch.long), mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="empty"):
        lm.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="exceeds max_len"):
        lm.generate(torch.zeros(1, 60, dtype=torch.long), 10)


@pytest.mark.parametrize(
    "options",
    [
        dict(positional="rotary", norm="rms", activation="swiglu", bias=False, n_kv_heads=2),
        dict(positional="rotary", norm="rms", activation="swiglu", bias=True, n_kv_heads=1, d_head=12),
        dict(positional="learned", norm="layer", activation="gelu"),
        dict(positional="sinusoidal", norm="layer", activation="relu", norm_first=False),
    ],
    ids=["llama-gqa", "llama-mqa-bias", "gpt", "post-norm"],
)
def test_generation_step_equals_step(options):
    """TransformerLM._decode (the step generate() uses, written out for single-token decoding) gives
    step()'s last-position logits and the same cache."""
    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(
        vocab_size=50, d_model=48, n_heads=4, n_layers=3, d_ff=64, max_len=64, dropout=0.1, **options
    )).eval()
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    tokens = torch.randint(0, 50, (3, 9))
    with torch.no_grad():
        logits, cache = model.step(tokens[:, :5])
        fast_logits, fast_cache = model._decode(tokens[:, :5], None)
        assert torch.allclose(fast_logits, logits[:, -1:], atol=1e-6)
        for t in range(5, 9):
            logits, cache = model.step(tokens[:, t : t + 1], cache)
            fast_logits, fast_cache = model._decode(tokens[:, t : t + 1], fast_cache)
            assert torch.allclose(fast_logits, logits, atol=1e-5), t
            for (a, _), (b, _) in zip(cache, fast_cache):
                assert torch.allclose(a.k, b.k, atol=1e-6) and torch.allclose(a.v, b.v, atol=1e-6)
        assert torch.equal(model.generate(tokens[:, :4], 8)[:, 4:], greedy_with_step(model, tokens[:, :4], 8))


def greedy_with_step(model, prompt, n):
    logits, cache = model.step(prompt)
    out = []
    for _ in range(n):
        token = logits[:, -1].argmax(-1, keepdim=True)
        out.append(token)
        logits, cache = model.step(token, cache)
    return torch.cat(out, dim=1)
