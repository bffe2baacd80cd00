"""Decoding strategies: beam search against exhaustive search, penalties, stop tokens, cache parity."""

import itertools

import pytest
import torch

from attnkit.generation import apply_repetition_penalty, beam_search, generate
from attnkit.models import RNNSeq2Seq, RNNSeq2SeqConfig, Transformer, TransformerConfig, TransformerLM, TransformerLMConfig

torch.manual_seed(0)
V = 5
TABLE = torch.randn(V, V) * 2  # a Markov chain: logits of the next token given the last one


def markov_step(tokens, cache):
    return TABLE[tokens], cache  # (B, t, V)


def sequence_logp(seq, first):
    logp, prev = 0.0, first
    for t in seq:
        logp += TABLE[prev].log_softmax(-1)[t].item()
        prev = t
    return logp


def test_beam_search_finds_the_exhaustive_optimum():
    prompt = torch.tensor([[0], [3]])
    out = beam_search(markov_step, prompt, 3, beam_size=V * V, length_penalty=0.0)
    for b in range(2):
        first = prompt[b, 0].item()
        best = max(itertools.product(range(V), repeat=3), key=lambda s: sequence_logp(s, first))
        assert out[b, 1:].tolist() == list(best)


def test_beam_of_one_is_greedy():
    prompt = torch.tensor([[1], [2]])
    assert torch.equal(beam_search(markov_step, prompt, 6, beam_size=1), generate(markov_step, prompt, 6))


def test_stop_tokens_and_streaming():
    prompt = torch.tensor([[0], [1], [2]])
    seen = []
    out = generate(markov_step, prompt, 8, eos_id=[3, 4], on_token=seen.append)
    assert len(seen) == out.shape[1] - 1
    for row in out[:, 1:].tolist():
        if 3 in row or 4 in row:
            first = next(i for i, t in enumerate(row) if t in (3, 4))
            assert all(t == row[first] for t in row[first:])


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5]]


def lm():
    torch.manual_seed(0)
    config = TransformerLMConfig(vocab_size=30, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=40, dropout=0.0)
    return TransformerLM(config).eval()


def test_generation_with_and_without_cache_agree():
    model = lm()
    no_cache = lambda tokens, history: (  # noqa: E731  recompute everything from the whole sequence
        model(torch.cat([history, tokens], 1) if history is not None else tokens),
        torch.cat([history, tokens], 1) if history is not None else tokens,
    )
    prompt = torch.randint(0, 30, (2, 5))
    for kw in (dict(), dict(temperature=0.9, top_k=10), dict(repetition_penalty=1.3)):
        g1, g2 = (torch.Generator().manual_seed(3) for _ in range(2))
        cached = model.generate(prompt, 12, generator=g1, **kw)
        full = generate(lambda t, h: (no_cache(t, h)[0][:, -t.shape[1]:], no_cache(t, h)[1]), prompt, 12,
                        generator=g2, **kw)
        assert torch.equal(cached, full)
    beam_cached = model.generate(prompt, 8, beam_size=3)
    beam_full = beam_search(lambda t, h: (no_cache(t, h)[0][:, -t.shape[1]:], no_cache(t, h)[1]), prompt, 8, beam_size=3)
    assert torch.equal(beam_cached, beam_full)


@pytest.mark.parametrize("kind", ["transformer", "rnn_gru", "rnn_lstm"])
def test_seq2seq_beam_search_runs_and_beam_one_is_greedy(kind):
    torch.manual_seed(0)
    if kind == "transformer":
        model = Transformer(TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=32, n_heads=4,
                                              n_layers=2, d_ff=64, pad_id=0))
    else:
        model = RNNSeq2Seq(RNNSeq2SeqConfig(src_vocab_size=20, tgt_vocab_size=20, d_embed=16, d_hidden=24,
                                            cell=kind[4:], n_layers=2, pad_id=0))
    model.eval()
    src = torch.randint(1, 20, (3, 6))
    src[2, 4:] = 0
    greedy = model.generate(src, 7, bos_id=1, eos_id=2)
    assert torch.equal(model.generate(src, 7, bos_id=1, eos_id=2, beam_size=1), greedy)
    beams = model.generate(src, 7, bos_id=1, eos_id=2, beam_size=4)
    assert beams.shape[0] == 3 and (beams[:, 0] == 1).all()
