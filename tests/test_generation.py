"""Decoding strategies: beam search against reference searches, penalties, stop tokens, cache parity,
argument checks."""

import itertools
import math
import re

import pytest
import torch

from attnkit.generation import apply_repetition_penalty, beam_search, check_sampling, generate, reorder_cache
from attnkit.models import (
    RNNSeq2Seq,
    RNNSeq2SeqConfig,
    Transformer,
    TransformerConfig,
    TransformerLM,
    TransformerLMConfig,
)

V = 5
TABLE = torch.randn(V, V, generator=torch.Generator().manual_seed(0)) * 2  # Markov chain: next-token logits


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


# Hand-made search trees over W tokens, token EOS being the stop token where one is used. A tree maps the
# tokens generated so far (a tuple) to the next token's probabilities; prefixes it does not list get the
# uniform distribution.
W, EOS = 8, 7
UNIFORM = [1 / W] * W


def dist(probs):
    """Probabilities over the W tokens: those given, the rest of the mass shared by the other tokens."""
    rest = (1 - sum(probs.values())) / (W - len(probs))
    return [probs.get(t, rest) for t in range(W)]


def tree_step(trees):
    """A decoding step over ``trees``: a row's prompt (one token) picks its tree. The cache is the whole
    sequence so far, which beam search reorders along with its beams."""

    def step(tokens, seq):
        seq = tokens if seq is None else torch.cat([seq, tokens], 1)
        rows = [trees[row[0]].get(tuple(row[1:]), UNIFORM) for row in seq.tolist()]
        return torch.tensor(rows, dtype=torch.float64).log()[:, None].float(), seq

    return step


def tree_logp(tree, seq):
    return sum(math.log(tree.get(tuple(seq[:i]), UNIFORM)[t]) for i, t in enumerate(seq))


def relabel(tree, perm):
    """The same tree with token t renamed perm[t]."""
    return {tuple(perm[t] for t in prefix): [p[perm.index(t)] for t in range(W)] for prefix, p in tree.items()}


def reference_beam(tree, k, n):
    """Plain beam search without stop tokens: keep the k most probable prefixes after every step."""
    beams = [()]
    for _ in range(n):
        beams = sorted((b + (t,) for b in beams for t in range(W)), key=lambda s: -tree_logp(tree, s))[:k]
    return beams[0]


# Greedy takes 0 (p 0.5), then a flat distribution: 0 0 0 (p 0.08). Two beams keep 0 and 1 after the
# first step, and 1 0 (0.27) and 0 0 (0.2) after the second: 1 0 0 (0.162). The optimum 2 0 0 (0.186)
# starts with the third most likely token, which only a beam of three keeps.
PRUNING = {
    (): dist({0: 0.5, 1: 0.3, 2: 0.19}),
    (0,): dist({0: 0.4, 1: 0.3, 2: 0.29}),
    (0, 0): dist({0: 0.4, 1: 0.3, 2: 0.29}),
    (1,): dist({0: 0.9}),
    (1, 0): dist({0: 0.6, 1: 0.2, 2: 0.19}),
    (2,): dist({0: 0.99}),
    (2, 0): dist({0: 0.99}),
}


def test_a_narrow_beam_prunes_like_the_reference_beam_search():
    perm = [3, 5, 1, 0, 2, 4, 6, 7]  # the second row searches the same tree under other token ids
    trees = {0: PRUNING, 1: relabel(PRUNING, perm)}
    step, prompt = tree_step(trees), torch.tensor([[0], [1]])
    exhaustive = max(itertools.product(range(W), repeat=3), key=lambda s: tree_logp(PRUNING, s))
    expected = {k: reference_beam(PRUNING, k, 3) for k in (1, 2, 3)}
    # the premise: each width finds something else, and three beams find the optimum
    assert (expected[1], expected[2], expected[3], exhaustive) == ((0, 0, 0), (1, 0, 0), (2, 0, 0), (2, 0, 0))

    def rows(seq):
        return [[0, *seq], [1, *(perm[t] for t in seq)]]

    assert generate(step, prompt, 3).tolist() == rows(expected[1])
    for k in (1, 2, 3):
        assert beam_search(step, prompt, 3, beam_size=k).tolist() == rows(expected[k]), k


# The stop token ends the likeliest hypothesis at once (p 0.5); the live ones go on with p 0.3 * 0.33
# at best and no other stop is likely, so the search ends with that one finished hypothesis and live
# beams. Were a finished hypothesis extended, EOS 0 (p 0.495) would take its place.
EARLY_STOP = {
    (): dist({EOS: 0.5, 0: 0.3, 1: 0.19}),
    (EOS,): dist({0: 0.99}),
    (0,): dist({0: 0.33, 1: 0.33, 2: 0.33}),
    (1,): dist({0: 0.33, 1: 0.33, 2: 0.33}),
}
NO_STOP = {(): dist({0: 0.9}), (0,): dist({1: 0.9})}


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_keeps_finished_hypotheses_and_does_not_extend_them(length_penalty):
    step = tree_step({0: EARLY_STOP, 1: NO_STOP})
    out = beam_search(step, torch.tensor([[0], [1]]), 2, beam_size=2, eos_id=EOS, length_penalty=length_penalty)
    # row 0 ended at its first token and is padded with the stop token to row 1's length
    assert out.tolist() == [[0, EOS, EOS], [1, 0, 1]]
    alone = beam_search(tree_step({0: EARLY_STOP}), torch.tensor([[0]]), 2, beam_size=2, eos_id=EOS,
                        length_penalty=length_penalty)
    assert alone.tolist() == [[0, EOS]]


# The stop token is the likeliest first token (p 0.4, log -0.92), but 1 0 0 (p 0.284, log -1.26, per
# token -0.42) starts with the third: it survives only if the finished hypothesis leaves both beams to
# live ones, and wins over it only when live hypotheses are length-normalised like finished ones.
DISPLACED = {
    (): dist({EOS: 0.4, 0: 0.3, 1: 0.29}),
    (0,): dist({0: 0.3, 1: 0.3, 2: 0.3}),
    (1,): dist({0: 0.99}),
    (1, 0): dist({0: 0.99}),
}


@pytest.mark.parametrize("length_penalty, best", [(0.0, [0, EOS]), (1.0, [0, 1, 0, 0])])
def test_finished_hypotheses_leave_the_beam_to_live_ones(length_penalty, best):
    out = beam_search(tree_step({0: DISPLACED}), torch.tensor([[0]]), 3, beam_size=2, eos_id=EOS,
                      length_penalty=length_penalty)
    assert out.tolist() == [best]


# Three finished hypotheses with log-probabilities -1 (EOS), -1.5 (0 EOS) and -2.7 (0 0 EOS); the rest
# of each distribution is spread thin. Ranked by log p / length^length_penalty:
#   length_penalty 0:  -1     -1.5    -2.7    -> EOS
#   length_penalty 1:  -1     -0.75   -0.9    -> 0 EOS
#   length_penalty 2:  -1     -0.375  -0.3    -> 0 0 EOS
LENGTHS = {
    (): dist({EOS: math.exp(-1.0), 0: 0.5}),
    (0,): dist({EOS: math.exp(-1.5) / 0.5, 0: 0.5}),
    (0, 0): dist({EOS: math.exp(-2.7) / 0.25}),
}


@pytest.mark.parametrize("length_penalty, best", [(0.0, (EOS,)), (1.0, (0, EOS)), (2.0, (0, 0, EOS))])
def test_length_penalty_picks_among_finished_hypotheses(length_penalty, best):
    for seq, logp in (((EOS,), -1.0), ((0, EOS), -1.5), ((0, 0, EOS), -2.7)):
        assert tree_logp(LENGTHS, seq) == pytest.approx(logp)
    # the reference: every hypothesis that ends at its first stop token or after three tokens
    complete = [s[: s.index(EOS) + 1] if EOS in s else s for s in itertools.product(range(W), repeat=3)]
    assert max(complete, key=lambda s: tree_logp(LENGTHS, s) / len(s) ** length_penalty) == best
    out = beam_search(tree_step({0: LENGTHS}), torch.tensor([[0]]), 3, beam_size=2, eos_id=EOS,
                      length_penalty=length_penalty)
    assert out.tolist() == [[0, *best]]


def forced_stop_step(forced):
    """Sampling logits over V tokens in which the stop tokens 3 and 4 are impossible except where
    ``forced`` (prompt token -> (index of the new token, stop token)) makes one certain."""

    def step(tokens, seq):
        seq = tokens if seq is None else torch.cat([seq, tokens], 1)
        step.lengths.append(seq.shape[1])
        logits = torch.randn(seq.shape[0], V, generator=torch.Generator().manual_seed(seq.shape[1]))
        logits[:, [3, 4]] = float("-inf")
        for r, row in enumerate(seq.tolist()):
            at, stop = forced.get(row[0], (None, None))
            if at == len(row) - 1:
                logits[r] = float("-inf")
                logits[r, stop] = 0.0
        return logits[:, None], seq

    step.lengths = []
    return step


def test_generate_stops_each_row_at_its_stop_token_and_streams_every_column():
    step = forced_stop_step({0: (2, 3), 1: (4, 4)})  # row 2 never stops
    seen = []
    out = generate(step, torch.tensor([[0], [1], [2]]), 8, eos_id=[3, 4], on_token=seen.append,
                   temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 9)
    assert torch.equal(torch.stack(seen, 1), out[:, 1:])
    new = out[:, 1:].tolist()
    assert not {3, 4} & set(new[0][:2]) and new[0][2:] == [3] * 6
    assert not {3, 4} & set(new[1][:4]) and new[1][4:] == [4] * 4
    assert not {3, 4} & set(new[2])


def test_generate_ends_when_every_row_has_stopped():
    step = forced_stop_step({0: (2, 3), 1: (4, 4)})
    out = generate(step, torch.tensor([[0], [1]]), 8, eos_id=[3, 4], temperature=1.0,
                   generator=torch.Generator().manual_seed(0))
    new = out[:, 1:].tolist()
    assert out.shape == (2, 6) and new[0][2:] == [3, 3, 3] and new[1][4] == 4
    assert max(step.lengths) == 5  # never asked for a token after the last stop


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5]]


def never_called(tokens, cache):
    raise AssertionError("the step ran before the arguments were checked")


BAD_SAMPLING = [
    ("temperature", -0.5), ("temperature", float("nan")), ("temperature", float("inf")),
    ("top_k", 0), ("top_k", -2), ("top_k", 2.5), ("top_k", True),
    ("top_p", 0.0), ("top_p", -0.1), ("top_p", 1.5), ("top_p", float("nan")),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("repetition_penalty", float("nan")),
    ("repetition_penalty", float("inf")),
    ("max_new_tokens", -1), ("max_new_tokens", 2.5),
]
BAD_BEAM = [
    ("beam_size", 0), ("beam_size", -1), ("beam_size", 2.5),
    ("max_new_tokens", -1), ("max_new_tokens", 1.5),
    ("length_penalty", float("nan")), ("length_penalty", float("inf")), ("length_penalty", float("-inf")),
]
EXPECTED = {
    "temperature": "a finite number >= 0", "top_k": "an int >= 1 or None", "top_p": "a number in (0, 1] or None",
    "repetition_penalty": "a finite number > 0", "beam_size": "an int >= 1", "max_new_tokens": "an int >= 0",
    "length_penalty": "a finite number",
}


def message(name, value):
    return "^" + re.escape(f"{name} must be {EXPECTED[name]}, got {value!r}") + "$"


def call_with(fn, name, value):
    kw = {"max_new_tokens": 3, name: value}
    return fn(never_called, torch.tensor([[1]]), kw.pop("max_new_tokens"), **kw)


@pytest.mark.parametrize("name, value", BAD_SAMPLING, ids=[f"{n}={v}" for n, v in BAD_SAMPLING])
def test_generate_rejects_bad_arguments_by_name(name, value):
    with pytest.raises(ValueError, match=message(name, value)):
        call_with(generate, name, value)
    with pytest.raises(ValueError, match=message(name, value)):
        check_sampling(**{name: value})


@pytest.mark.parametrize("name, value", BAD_BEAM, ids=[f"{n}={v}" for n, v in BAD_BEAM])
def test_beam_search_rejects_bad_arguments_by_name(name, value):
    with pytest.raises(ValueError, match=message(name, value)):
        call_with(beam_search, name, value)
    with pytest.raises(ValueError, match=message(name, value)):
        check_sampling(**{name: value})


def test_boundary_arguments_are_accepted():
    check_sampling(temperature=0, top_k=1, top_p=1.0, repetition_penalty=1e-3, beam_size=1, max_new_tokens=0,
                   length_penalty=-2.0)
    prompt = torch.tensor([[1]])
    assert torch.equal(generate(never_called, prompt, 0, temperature=0.5, top_p=1.0), prompt)
    out = beam_search(markov_step, prompt, 2, beam_size=1, length_penalty=-1.0)
    assert torch.equal(out, generate(markov_step, prompt, 2))


def test_reorder_cache_selects_batch_rows_throughout_a_models_cache():
    model = lm()
    tokens = torch.randint(0, 30, (3, 6), generator=torch.Generator().manual_seed(2))
    index = torch.tensor([2, 0, 0])
    _, cache = model.step(tokens[:, :5], None)
    logits, _ = model.step(tokens[index, 5:], reorder_cache(cache, index))
    expected, _ = model.step(tokens[index], None)
    torch.testing.assert_close(logits[:, -1], expected[:, -1])
    nested = [(torch.arange(3), None), (torch.arange(6).view(3, 2),)]
    assert reorder_cache(nested, index)[1][0].tolist() == [[4, 5], [0, 1], [0, 1]]
    with pytest.raises(TypeError, match="dict"):
        reorder_cache({"k": torch.arange(3)}, index)


def lm():
    torch.manual_seed(0)
    config = TransformerLMConfig(vocab_size=30, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=40, dropout=0.0)
    return TransformerLM(config).eval()


def test_generation_with_and_without_cache_agree():
    model = lm()

    def rerun(tokens, history):  # recompute everything from the whole sequence; logits of the new tokens
        seq = tokens if history is None else torch.cat([history, tokens], 1)
        return model(seq)[:, -tokens.shape[1]:], seq

    prompt = torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(1))
    for kw in (dict(), dict(temperature=0.9, top_k=10), dict(repetition_penalty=1.3)):
        g1, g2 = (torch.Generator().manual_seed(3) for _ in range(2))
        cached = model.generate(prompt, 12, generator=g1, **kw)
        full = generate(rerun, prompt, 12, generator=g2, **kw)
        assert torch.equal(cached, full)
    beam_cached = model.generate(prompt, 8, beam_size=3)
    beam_full = beam_search(rerun, prompt, 8, beam_size=3)
    assert torch.equal(beam_cached, beam_full)


@pytest.mark.parametrize("kind", ["transformer", "rnn_gru", "rnn_lstm"])
def test_seq2seq_beam_search_equals_uncached_beam_search_and_beam_one_is_greedy(kind):
    torch.manual_seed(0)
    if kind == "transformer":
        model = Transformer(TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=32, n_heads=4,
                                              n_layers=2, d_ff=64, pad_id=0))
    else:
        model = RNNSeq2Seq(RNNSeq2SeqConfig(src_vocab_size=20, tgt_vocab_size=20, d_embed=16, d_hidden=24,
                                            cell=kind[4:], n_layers=2, pad_id=0))
    model.eval()
    src = torch.randint(1, 20, (3, 6), generator=torch.Generator().manual_seed(1))
    src[2, 4:] = 0
    greedy = model.generate(src, 7, bos_id=1, eos_id=2)
    assert torch.equal(model.generate(src, 7, bos_id=1, eos_id=2, beam_size=1), greedy)

    # The model's beam search (cached decoder state, reordered between steps) against beam search over
    # a step that re-runs the whole model on the sequence so far. The fourth positional argument is the
    # target key mask: all real, since a generated 0 is a token here, not padding.
    src4 = src.repeat_interleave(4, 0)

    def uncached(tokens, seq):
        seq = tokens if seq is None else torch.cat([seq, tokens], 1)
        return model(src4, seq, None, torch.ones_like(seq, dtype=torch.bool))[:, -tokens.shape[1]:], seq

    start = torch.ones(3, 1, dtype=torch.long)
    beams = model.generate(src, 7, bos_id=1, eos_id=2, beam_size=4)
    assert torch.equal(beams, beam_search(uncached, start, 7, beam_size=4, eos_id=2))
