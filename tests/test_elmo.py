"""The ELMo-style BiLM: each LM sees only its own side, right padding is invisible, the loss is the
two next-token cross-entropies, ScalarMix, training, freezing, config checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnkit.models import BiLM, BiLMClassifier, BiLMConfig, BiLMOutput, ScalarMix
from attnkit.models.elmo import reverse_within_lengths

V = 20


def tiny_bilm(**kw) -> BiLM:
    torch.manual_seed(0)
    options = dict(vocab_size=V, d_embed=8, d_hidden=8, n_layers=2, dropout=0.0, tie_embeddings=True)
    return BiLM(BiLMConfig(**{**options, **kw})).eval()


def embedding_grad(model: BiLM, tokens: torch.Tensor, key_mask, logits: str, b: int, t: int) -> torch.Tensor:
    """How much row b's ``logits`` ("forward_logits" or "backward_logits") at position t (one vocabulary
    entry) depend on each input embedding of that row: |gradient| summed over the embedding width, (T,)."""
    captured = []

    def keep(_module, _inputs, out):
        out.retain_grad()
        captured.append(out)

    handle = model.embed.register_forward_hook(keep)
    try:
        out = model(tokens, key_mask)
    finally:
        handle.remove()
    getattr(out, logits)[b, t, 3].backward()
    return captured[0].grad[b].abs().sum(-1)


# --- (a) each language model sees only its own side ----------------------------------------------

@pytest.mark.parametrize("options", [dict(), dict(tie_embeddings=False, d_hidden=12, n_layers=3)],
                         ids=["tied", "untied_3_layers"])
def test_each_lm_cannot_see_the_token_it_predicts(options):
    model = tiny_bilm(**options)
    T, length = 7, 5
    tokens = torch.randint(0, V, (2, T))
    key_mask = torch.ones(2, T, dtype=torch.bool)
    key_mask[1, length:] = False  # row 1 is right-padded
    for t in range(T):
        grad = embedding_grad(model, tokens, key_mask, "forward_logits", 0, t)
        assert torch.all(grad[t + 1:] == 0), (t, grad)  # token t+1, the target, and later: unseen
        assert grad[t] > 0, (t, grad)
        grad = embedding_grad(model, tokens, key_mask, "backward_logits", 0, t)
        assert torch.all(grad[:t] == 0), (t, grad)  # token t-1, the target, and earlier: unseen
        assert grad[t] > 0, (t, grad)
    for t in range(length):  # the padded row: its own side of its real tokens, never the padding
        grad = embedding_grad(model, tokens, key_mask, "backward_logits", 1, t)
        assert torch.all(grad[:t] == 0) and torch.all(grad[length:] == 0), (t, grad)
        assert torch.all(grad[t:length] > 0), (t, grad)  # it reads from its own last real token
        grad = embedding_grad(model, tokens, key_mask, "forward_logits", 1, t)
        assert torch.all(grad[t + 1:] == 0) and grad[t] > 0, (t, grad)


# --- (b) right padding changes nothing at the real positions -------------------------------------

def test_right_padding_does_not_change_real_positions():
    model = tiny_bilm()
    lengths = [6, 3, 1]
    T = max(lengths) + 2
    tokens = torch.randint(0, V, (len(lengths), T))  # the padding holds arbitrary ids
    key_mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    batch = model(tokens, key_mask)
    assert isinstance(batch, BiLMOutput) and len(batch.layers) == 3
    assert batch.forward_logits.shape == batch.backward_logits.shape == (3, T, V)
    assert all(layer.shape == (3, T, 16) for layer in batch.layers)
    for b, n in enumerate(lengths):
        alone = model(tokens[b : b + 1, :n])
        torch.testing.assert_close(batch.forward_logits[b, :n], alone.forward_logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch.backward_logits[b, :n], alone.backward_logits[0], atol=1e-5, rtol=1e-5)
        for padded, single in zip(batch.layers, alone.layers):
            torch.testing.assert_close(padded[b, :n], single[0], atol=1e-5, rtol=1e-5)
    # pad_id gives the same mask
    pad = tokens.masked_fill(~key_mask, 0)
    with_pad_id = tiny_bilm(pad_id=0)(pad)
    torch.testing.assert_close(with_pad_id.backward_logits[key_mask], batch.backward_logits[key_mask])


def test_reverse_within_lengths_and_left_padding_is_refused():
    x = torch.arange(10).view(2, 5)
    out = reverse_within_lengths(x, torch.tensor([5, 3]))
    assert out.tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]
    assert torch.equal(reverse_within_lengths(out, torch.tensor([5, 3])), x)
    with pytest.raises(ValueError, match="right-padded"):
        tiny_bilm()(torch.ones(1, 4, dtype=torch.long), torch.tensor([[False, True, True, True]]))


# --- the pre-training loss -----------------------------------------------------------------------

def test_loss_is_mean_of_both_next_token_cross_entropies_over_real_tokens():
    model = tiny_bilm()
    tokens = torch.randint(0, V, (2, 6))
    key_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out = model(tokens, key_mask)
    forward_terms, backward_terms = [], []
    for b, n in enumerate([6, 4]):
        for t in range(n - 1):
            forward_terms.append(F.cross_entropy(out.forward_logits[b, t], tokens[b, t + 1]))
            backward_terms.append(F.cross_entropy(out.backward_logits[b, t + 1], tokens[b, t]))
    expected = (torch.stack(forward_terms).mean() + torch.stack(backward_terms).mean()) / 2
    torch.testing.assert_close(model.loss(tokens, key_mask), expected)


# --- (c) ScalarMix --------------------------------------------------------------------------------

def test_scalar_mix_is_a_softmax_weighted_sum_scaled_by_gamma():
    mix = ScalarMix(3)
    torch.testing.assert_close(mix.layer_weights(), torch.full((3,), 1 / 3))  # starts as the plain mean
    w = [0.5, -1.0, 2.0]
    with torch.no_grad():
        mix.weights.copy_(torch.tensor(w))
        mix.gamma.fill_(3.0)
    assert math.isclose(float(mix.layer_weights().detach().sum()), 1.0, rel_tol=1e-6)
    layers = [torch.randn(2, 4, 6) for _ in range(3)]
    total = sum(math.exp(v) for v in w)
    expected = 3.0 * sum(math.exp(v) / total * x for v, x in zip(w, layers))
    torch.testing.assert_close(mix(layers), expected)
    with pytest.raises(ValueError, match="built for 3 layers"):
        mix(layers[:2])


# --- (d) it learns --------------------------------------------------------------------------------

def test_loss_falls_on_a_repeated_toy_sequence():
    model = tiny_bilm(d_embed=16, d_hidden=16).train()
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8] * 3, [3, 4, 5, 6, 7, 8, 1, 2] * 3])
    key_mask = torch.ones_like(tokens, dtype=torch.bool)
    key_mask[1, 20:] = False
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    losses = []
    for _ in range(40):
        loss = model.loss(tokens, key_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 2.5  # about ln(20) at the start
    assert losses[-1] < 0.25 * losses[0], losses


# --- (e) freezing ---------------------------------------------------------------------------------

def _one_step(model: BiLMClassifier) -> tuple[dict, dict]:
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    tokens = torch.randint(0, V, (3, 5))
    key_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]])
    logits = model(tokens, key_mask)
    assert logits.shape == (3, 4)
    F.cross_entropy(logits, torch.tensor([0, 2, 3])).backward()
    optimizer.step()
    return before, dict(model.named_parameters())


def test_freezing_keeps_the_bilm_fixed_and_fine_tuning_updates_it():
    frozen = BiLMClassifier(tiny_bilm(), num_labels=4, freeze_bilm=True, dropout=0.0)
    before, after = _one_step(frozen)
    bilm_names = [name for name in before if name.startswith("bilm.")]
    assert bilm_names and all(torch.equal(before[n], after[n]) for n in bilm_names)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert not torch.equal(before["mix.weights"], after["mix.weights"])

    tuned = BiLMClassifier(tiny_bilm(), num_labels=4, dropout=0.0)
    before, after = _one_step(tuned)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    for name in ("bilm.embed.weight", "bilm.forward_lm.lstms.0.weight_ih_l0", "bilm.backward_lm.lstms.1.weight_hh_l0"):
        assert not torch.equal(before[name], after[name]), name

    tuned.freeze_bilm()  # and back
    assert not any(p.requires_grad for p in tuned.bilm.parameters())
    tuned.freeze_bilm(False)
    assert all(p.requires_grad for p in tuned.bilm.parameters())


# --- (f) configuration errors name the field ------------------------------------------------------

@pytest.mark.parametrize(
    "values, field",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(d_embed=0), "d_embed"),
        (dict(d_hidden=-4), "d_hidden"),
        (dict(n_layers=0), "n_layers"),
        (dict(n_layers=1.5), "n_layers"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(tie_embeddings="yes"), "tie_embeddings"),
        (dict(d_embed=8, d_hidden=16, tie_embeddings=True), "tie_embeddings"),
        (dict(pad_id=100), "pad_id"),
        (dict(pad_id=-1), "pad_id"),
    ],
)
def test_bad_config_values_name_the_field(values, field):
    with pytest.raises(ValueError, match=rf"BiLMConfig\.{field}"):
        BiLMConfig(**{"vocab_size": 100, **values})


def test_classifier_checks_its_arguments():
    with pytest.raises(ValueError, match="num_labels"):
        BiLMClassifier(tiny_bilm(), num_labels=0)
    with pytest.raises(ValueError, match="d_embed == d_hidden"):
        BiLMClassifier(tiny_bilm(d_hidden=12, tie_embeddings=False), num_labels=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_bilm()(torch.tensor([[1, V]]))


def test_pretraining_scores_are_each_directions_accuracy_on_its_neighbour():
    from attnkit.train.classification import BiLMTask

    # A few steps on a stream where each token has one successor and one predecessor (t -> t + 1 mod V),
    # so that both directions predict their neighbour well and a shifted comparison scores near zero; an
    # untrained model's near-constant guesses would score the same at any shift.
    model = tiny_bilm(d_embed=32, d_hidden=32).train()
    stream = torch.arange(3000) % V
    task = BiLMTask(stream[:2000], stream[2000:], context=16, batch_size=4, seed=0, eval_batches=2)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for i in range(60):
        loss = task.loss(model, task.batch(i))
        (loss.sum / loss.count).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    forward = backward = pairs = 0
    for tokens in task.eval_batches():
        out = model(tokens)
        for b in range(tokens.shape[0]):
            for t in range(tokens.shape[1] - 1):
                forward += int(out.forward_logits[b, t].argmax() == tokens[b, t + 1])
                backward += int(out.backward_logits[b, t + 1].argmax() == tokens[b, t])
                pairs += 1
    scores = task.scores(model)
    assert forward > 0.5 * pairs and backward > 0.5 * pairs
    assert scores["valid_forward_accuracy"] == forward / pairs and scores["valid_backward_accuracy"] == backward / pairs
    assert scores["valid_accuracy"] == pytest.approx((forward + backward) / (2 * pairs))
