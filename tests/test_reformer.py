"""ReformerLM and the encoder-decoder Reformer."""

import pytest
import torch
import torch.nn.functional as F

from attnkit.models import Reformer, ReformerConfig, ReformerLM, TransformerLM
from attnkit.nn import TokenLoss


def _config(**overrides):
    values = dict(vocab_size=37, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=128, bucket_size=8, n_hashes=2)
    return ReformerConfig(**{**values, **overrides})


def test_config_validation_and_round_trip(tmp_path):
    c = _config(attn_layers=["lsh", "full"], axial_shape=[8, 16])
    assert c.attn_layers == ("lsh", "full") and c.axial_shape == (8, 16)
    assert [c.attention_kind(i) for i in range(3)] == ["lsh", "full", "lsh"]
    c.save(tmp_path / "c.json")
    assert ReformerConfig.load(tmp_path / "c.json") == c
    with pytest.raises(ValueError, match="attn_layers"):
        _config(attn_layers=("lsh", "local"))
    with pytest.raises(ValueError, match="axial_shape"):
        _config(axial_shape=(4, 4))
    with pytest.raises(ValueError, match="n_buckets"):
        _config(n_buckets=5)
    with pytest.raises(ValueError, match="ff_chunks"):
        _config(ff_chunks=0)
    with pytest.raises(ValueError, match="divisible"):
        _config(d_model=15)
    with pytest.raises(ValueError, match="positional"):
        _config(positional="rotary")
    with pytest.raises(ValueError, match="did you mean"):
        ReformerConfig.from_dict({"n_hash": 2})


@pytest.mark.parametrize("attn_layers", [("lsh",), ("lsh", "full"), ("full",)])
@pytest.mark.parametrize("positional", ["axial", "learned", "sinusoidal", "none"])
def test_lm_forward_and_loss(attn_layers, positional):
    torch.manual_seed(0)
    model = ReformerLM(_config(attn_layers=attn_layers, positional=positional, ff_chunks=2, loss_chunks=3))
    tokens = torch.randint(0, 37, (2, 53))
    logits = model(tokens)
    assert logits.shape == (2, 53, 37) and torch.isfinite(logits).all()
    loss = model.loss(tokens)
    assert 2.0 < loss.item() < 6.0  # about ln 37 = 3.6 at initialisation (a near-uniform guess)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(tokens)[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        torch.testing.assert_close(model.loss(tokens), expected)


def test_lm_reversible_equals_plain_float64():
    torch.manual_seed(0)
    a = ReformerLM(_config(attn_layers=("lsh", "full"), ff_chunks=2, dropout=0.1, attn_dropout=0.1)).double()
    b = ReformerLM(
        _config(attn_layers=("lsh", "full"), ff_chunks=2, dropout=0.1, attn_dropout=0.1, reversible=False)
    ).double()
    b.load_state_dict(a.state_dict())
    tokens = torch.randint(0, 37, (2, 40))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, 33:] = False
    for m in (a, b):
        torch.manual_seed(3)
        m.loss(tokens, mask).backward()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_lm_padding_content_does_not_matter():
    torch.manual_seed(0)
    model = ReformerLM(_config(attn_layers=("lsh", "full"))).eval()
    tokens = torch.randint(0, 37, (1, 60))
    mask = torch.ones(1, 60, dtype=torch.bool)
    mask[:, 45:] = False
    other = tokens.clone()
    other[:, 45:] = (other[:, 45:] + 5) % 37
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, mask)[:, :45], model(other, mask)[:, :45])


def test_full_attention_lm_is_causal():
    torch.manual_seed(0)
    model = ReformerLM(_config(attn_layers=("full",))).eval()
    tokens = torch.randint(0, 37, (1, 30))
    other = tokens.clone()
    other[:, 20:] = (other[:, 20:] + 1) % 37
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[:, :20], model(other)[:, :20])


def test_lsh_lm_has_no_gradient_from_the_future():
    torch.manual_seed(0)
    model = ReformerLM(_config())
    x = model.embed(torch.randint(0, 37, (1, 40))).detach().requires_grad_()
    y = model.layers(x)
    (g,) = torch.autograd.grad(y[:, 17].sum(), x)
    assert torch.all(g[:, 18:] == 0) and g[:, :18].abs().sum() > 0


def test_lm_errors_and_generate():
    model = ReformerLM(_config())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 40]]))
    with pytest.raises(TypeError, match="integer"):
        model(torch.ones(1, 3))
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ValueError, match="key_mask must be a key padding mask"):
        model(torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool))
    tokens = torch.zeros(1, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="targets must have"):
        model(tokens, targets=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="targets must be an integer"):
        model(tokens, targets=torch.zeros(1, 5))
    with pytest.raises(ValueError, match="targets holds id 37"):
        model(tokens, targets=torch.full((1, 5), 37))
    with pytest.raises(ValueError, match="label_smoothing"):
        model(tokens, label_smoothing=0.1)


def test_lm_greedy_generation_is_the_argmax_of_full_forwards():
    torch.manual_seed(0)
    model = ReformerLM(_config(attn_layers=("lsh", "full"))).eval()
    prompt = torch.tensor([[1, 2, 3], [30, 20, 10]])
    out = model.generate(prompt, 6)
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    assert len(set(seq[:, 3:].flatten().tolist())) > 1  # not a degenerate repetition


def test_lm_forward_with_targets_gives_the_summed_token_loss():
    # forward(tokens, targets=...) -> TokenLoss(sum, count): the loss a trainer needs, computed in
    # loss_chunks slices; it equals cross-entropy over the full logits, values and gradients.
    assert ReformerLM.owns_loss is True and not hasattr(TransformerLM, "owns_loss")
    torch.manual_seed(0)
    model = ReformerLM(_config(attn_layers=("lsh", "full"), loss_chunks=4)).double().eval()
    tokens, targets = torch.randint(0, 37, (2, 30)), torch.randint(0, 37, (2, 30))
    targets[0, :5] = -100
    targets[1, -3:] = -100
    params = [p for p in model.parameters() if p.requires_grad]

    def full(ls):
        return F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten(), reduction="sum", label_smoothing=ls)

    for ls in (0.0, 0.1):
        out = model(tokens, targets=targets, label_smoothing=ls)
        assert isinstance(out, TokenLoss) and out.sum.dim() == 0 and out.sum.requires_grad
        assert out.count.dtype == torch.long and out.count.dim() == 0 and out.count.item() == 52
        torch.testing.assert_close(out.sum, full(ls))
        for a, b in zip(torch.autograd.grad(out.sum, params), torch.autograd.grad(full(ls), params)):
            torch.testing.assert_close(a, b)
    chunked = model(tokens, targets=targets, label_smoothing=0.1)
    model.config.loss_chunks = 1
    whole = model(tokens, targets=targets, label_smoothing=0.1)
    torch.testing.assert_close(chunked.sum, whole.sum, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(chunked.sum, params), torch.autograd.grad(whole.sum, params)):
        torch.testing.assert_close(a, b)
    # loss() is the mean over the shifted targets
    shifted = torch.cat([tokens[:, 1:], torch.full((2, 1), -100)], dim=1)
    total, count = model(tokens, targets=shifted)
    torch.testing.assert_close(model.loss(tokens), total / count)


def test_axial_positions_get_dropout_once():
    # Embeddings with axial positions: dropout(token + position), one dropout mask (the bug was a second one).
    torch.manual_seed(0)
    model = ReformerLM(_config(positional="axial", dropout=0.3)).train()
    tokens = torch.randint(0, 37, (2, 100))
    torch.manual_seed(5)
    x = model.embed(tokens)
    with torch.no_grad():
        e = model.embed.token(tokens) + model.embed.position(torch.arange(100))
    torch.manual_seed(5)
    torch.testing.assert_close(x, F.dropout(e, p=0.3, training=True))
    zeros = (x == 0).float().mean().item()
    assert 0.25 < zeros < 0.35, zeros  # 1 - (1 - 0.3)^2 = 0.51 with two dropouts


def test_encoder_decoder():
    torch.manual_seed(0)
    model = Reformer(_config(src_vocab_size=23, n_decoder_layers=3, pad_id=0, ff_chunks=2))
    src = torch.randint(1, 23, (2, 45))
    src[1, 40:] = 0
    tgt = torch.randint(1, 37, (2, 19))
    logits = model(src, tgt)
    assert logits.shape == (2, 19, 37) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    assert model.src_embed.token.weight.grad is not None  # through the decoder's encoder/decoder attention
    assert all(p.grad is not None for n, p in model.named_parameters() if "encoder" in n)
    # Padding in the source is invisible to the target: whatever the padded positions hold.
    model.eval()
    src_key_mask = torch.ones(2, 45, dtype=torch.bool)
    src_key_mask[1, 40:] = False
    src2 = src.clone()
    src2[1, 40:] = src[1, 40:] % 22 + 1  # other non-zero ids
    assert (src2 != src).any() and (src2[:, 40:] != 0).all()
    with torch.no_grad():
        a = model(src, tgt, src_key_mask=src_key_mask)
        torch.testing.assert_close(model(src2, tgt, src_key_mask=src_key_mask), a)
        assert not torch.allclose(model(src2, tgt)[1], a[1])  # unmasked (pad_id 0 is absent), they count
    with pytest.raises(ValueError, match="src"):
        model(torch.full((1, 4), 30), tgt[:1])
    with pytest.raises(ValueError, match="batch"):
        model(src, tgt[:1])


def test_encoder_decoder_greedy_generation_is_the_argmax_of_full_forwards():
    torch.manual_seed(0)
    model = Reformer(_config(src_vocab_size=23, attn_layers=("lsh", "full"))).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the initialisation, whose greedy output is one token repeated
            p.add_(0.5 * torch.randn_like(p))
    src = torch.randint(1, 23, (2, 20))
    src_key_mask = torch.ones(2, 20, dtype=torch.bool)
    src_key_mask[1, 4:] = False  # mostly padding: without the mask, row 1 would read other tokens
    out = model.generate(src, 6, bos_id=1, src_key_mask=src_key_mask)
    seq = torch.ones(2, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(6):
            logits = model(src, seq, src_key_mask=src_key_mask)
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    assert len(set(seq[:, 1:].flatten().tolist())) > 2  # not a degenerate repetition


def test_encoder_decoder_reversible_equals_plain():
    torch.manual_seed(0)
    a = Reformer(_config(src_vocab_size=23)).double()
    b = Reformer(_config(src_vocab_size=23, reversible=False)).double()
    b.load_state_dict(a.state_dict())
    src, tgt = torch.randint(0, 23, (2, 30)), torch.randint(0, 37, (2, 12))
    for m in (a, b):
        torch.manual_seed(1)
        m(src, tgt).logsumexp(-1).sum().backward()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize("reversible", [True, False])
def test_chunking_changes_memory_not_results(reversible):
    # ff_chunks slices the feed-forward branches and the LSH branches' norm and projections, and
    # loss_chunks the last norm, output projection and loss: values and gradients stay the same.
    def run(chunks):
        torch.manual_seed(0)
        model = ReformerLM(_config(reversible=reversible, ff_chunks=chunks, loss_chunks=chunks)).double()
        tokens = torch.randint(0, 37, (2, 50))
        torch.manual_seed(1)  # the same hash seeds in both runs
        loss = model.loss(tokens)
        loss.backward()
        return loss, [p.grad for p in model.parameters()]

    loss1, grads1 = run(1)
    loss4, grads4 = run(4)
    torch.testing.assert_close(loss4, loss1, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads4, grads1):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_lsh_settings_change_evaluation_without_retraining_and_are_restored():
    """One chunk as long as the sequence is exact shared-QK attention; the layer's own settings come back."""
    from attnkit.functional import shared_qk_attention
    from attnkit.nn import LSHSelfAttention, lsh_settings

    torch.manual_seed(0)
    layer = LSHSelfAttention(32, 2, n_hashes=2, bucket_size=8, causal=True).eval()
    x = torch.randn(1, 40, 32)
    qk = layer.qk_proj(x).view(1, 40, 2, 16).transpose(1, 2)
    v = layer.v_proj(x).view(1, 40, 2, 16).transpose(1, 2)
    full = layer.out_proj(shared_qk_attention(qk, v, causal=True).transpose(1, 2).reshape(1, 40, 32))
    lsh = layer(x)
    with lsh_settings(torch.nn.Sequential(layer), bucket_size=40, n_hashes=1) as n:
        assert n == 1 and torch.allclose(layer(x), full, atol=1e-5)
    assert (layer.n_hashes, layer.bucket_size, layer.n_buckets) == (2, 8, None)
    assert torch.equal(layer(x), lsh) and not torch.allclose(lsh, full, atol=1e-3)
