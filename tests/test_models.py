"""The model families: caches, parameter counts, configs, bad input, that they learn, and the import
graph of the library."""

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit.models import (
    LMCache,
    MaskedLMHead,
    Reformer,
    ReformerConfig,
    RNNSeq2Seq,
    RNNSeq2SeqConfig,
    SequenceClassificationHead,
    Transformer,
    TransformerConfig,
    TransformerEncoder,
    TransformerEncoderConfig,
    TransformerLM,
    TransformerLMConfig,
)
from attnkit.nn import BlockCache

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
    assert isinstance(cache, LMCache) and cache.length == 12 and len(cache.layers) == 2
    assert all(isinstance(layer, BlockCache) and layer.cross_attn is None for layer in cache.layers)


def test_seq2seq_decoder_kv_cache_equals_full_forward():
    model = tiny_seq2seq(pad_id=0)
    src = torch.randint(1, 40, (2, 9))
    src[1, 6:] = 0  # padded source
    tgt = torch.randint(1, 50, (2, 8))
    full = model(src, tgt)
    memory = model.encode(src)
    cache, pieces = None, []
    for t in range(8):
        logits, cache = model.decode(tgt[:, t : t + 1], memory, src_key_mask=src != 0, cache=cache)
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


def _forced_output(module, eos_at, token=7, eos=2):
    """Make ``module`` (a model's output layer) put all the weight on ``token``, and on ``eos`` from decoding
    step ``eos_at[b]`` on for row b; each call of the module is one decoding step."""
    calls = [0]

    def hook(_module, _inputs, out):
        step = calls[0]
        calls[0] += 1
        forced = torch.full(out.shape[:-1], token)
        for b, at in enumerate(eos_at):
            if step >= at:
                forced[b] = eos
        return 10.0 * F.one_hot(forced, out.shape[-1]).to(out.dtype)

    return module.register_forward_hook(hook)


@pytest.mark.parametrize("kind", ["transformer", "rnn", "reformer"])
def test_seq2seq_generate_stops_at_eos(kind):
    torch.manual_seed(0)
    if kind == "transformer":
        model = tiny_seq2seq()
        head = model.out_proj
    elif kind == "rnn":
        model = RNNSeq2Seq(RNNSeq2SeqConfig(src_vocab_size=40, tgt_vocab_size=50, d_embed=16, d_hidden=24, cell="lstm"))
        head = model.out
    else:
        model = Reformer(ReformerConfig(vocab_size=50, src_vocab_size=40, d_model=16, n_heads=2, n_layers=1, d_ff=32,
                                        max_len=64, bucket_size=8, n_hashes=2))
        head = model.out_proj
    model.eval()
    src = torch.randint(0, 40, (2, 5))
    free = model.generate(src, 7, bos_id=1)  # no stop token: all max_new_tokens are generated
    assert free.shape == (2, 8) and (free[:, 0] == 1).all()
    handle = _forced_output(head, eos_at=[2, 4])  # row 0 says eos at step 2, row 1 at step 4
    try:
        out = model.generate(src, 10, bos_id=1, eos_id=2)
    finally:
        handle.remove()
    # row 0 repeats eos after its end; generation stops once every row has ended: 5 steps, not 10
    assert out.tolist() == [[1, 7, 7, 2, 2, 2], [1, 7, 7, 7, 7, 2]]


def test_encoder_heads_and_mlm_masking():
    from attnkit.train import mask_tokens  # BERT's objective lives with the training tasks

    enc = TransformerEncoder(TransformerEncoderConfig(vocab_size=50, n_token_types=2, embed_norm=True, **TINY))
    tokens = torch.randint(5, 50, (2, 10))
    h = enc(tokens, token_types=torch.zeros_like(tokens))
    assert h.shape == (2, 10, 32)
    assert MaskedLMHead(32, 50, embedding=enc.embed.token)(h).shape == (2, 10, 50)
    assert SequenceClassificationHead(32, 3)(h, torch.ones(2, 10, dtype=torch.bool)).shape == (2, 3)
    head = SequenceClassificationHead(32, 3, dropout=0.0)
    key_mask = torch.ones(2, 10, dtype=torch.bool)
    key_mask[1, 6:] = False  # mean pooling over the real tokens only
    torch.testing.assert_close(head(h, key_mask=key_mask)[1:], head(h[1:, :6]))
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

CONFIG_ERRORS = {
    "heads": (ValueError, "divisible by n_heads", lambda: TransformerLMConfig(d_model=30, n_heads=4)),
    "positional": (ValueError, "positional", lambda: TransformerLMConfig(positional="absolute")),
    "share_embeddings": (ValueError, "share_embeddings",
                         lambda: TransformerConfig(src_vocab_size=10, tgt_vocab_size=20, share_embeddings=True)),
    "dropout": (ValueError, "dropout", lambda: TransformerEncoderConfig(dropout=1.5)),
    "n_layers": (ValueError, "n_layers", lambda: TransformerLMConfig(n_layers=0)),
    "cell": (ValueError, "cell", lambda: RNNSeq2SeqConfig(cell="rnn")),
    "did_you_mean": (ValueError, "did you mean 'd_model'", lambda: TransformerLMConfig.from_dict({"dmodel": 64})),
    "renamed_field": (ValueError, "did you mean 'rotary_base'",
                      lambda: TransformerLMConfig.from_dict({"rope_base": 1.0})),
    "unknown": (TypeError, "unknown", lambda: TransformerLMConfig(unknown=1)),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_configs_reject_inconsistent_values_with_a_fix(case):
    error, match, call = CONFIG_ERRORS[case]
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "cls", [TransformerLMConfig, TransformerEncoderConfig, TransformerConfig, RNNSeq2SeqConfig, ReformerConfig]
)
def test_configs_have_docstrings_and_shared_field_names(cls):
    assert cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(")  # not dataclass's generated one
    names = {f.name for f in dataclasses.fields(cls)}
    assert not names & {"rope_base", "tie_output"}  # rotary_base and tie_embeddings in every family


def test_config_round_trip(tmp_path):
    c = TransformerConfig.base()
    c.save(tmp_path / "config.json")
    assert TransformerConfig.load(tmp_path / "config.json") == c
    with pytest.raises(ValueError, match="not a TransformerLMConfig"):
        TransformerLMConfig.load(tmp_path / "config.json")


def _long(*shape, value=0):
    return torch.full(shape, value, dtype=torch.long)


BAD_INPUTS = {
    "float_tokens": (TypeError, "integer token ids", lambda lm, s2s: lm(torch.rand(2, 5))),
    "id_too_big": (ValueError, "id 50, outside the vocabulary", lambda lm, s2s: lm(torch.tensor([[1, 2, 50]]))),
    "negative_id": (ValueError, "id -1", lambda lm, s2s: lm(torch.tensor([[1, -1]]))),
    "1d_tokens": (ValueError, r"shape \(B, T\)", lambda lm, s2s: lm(torch.tensor([1, 2, 3]))),
    "too_long": (ValueError, "max_len=64", lambda lm, s2s: lm(_long(1, 65))),
    "batches_differ": (ValueError, "batch sizes differ", lambda lm, s2s: s2s(_long(2, 5), _long(3, 5))),
    "src_id": (ValueError, "src holds id 45", lambda lm, s2s: s2s(_long(1, 3, value=45), _long(1, 3))),
    "src_key_mask_shape": (
        ValueError, r"src_key_mask must be a key padding mask of shape \(B, S\) = \(1, 3\)",
        lambda lm, s2s: s2s(_long(1, 3), _long(1, 3), src_key_mask=torch.ones(1, 4, dtype=torch.bool)),
    ),
    "tgt_key_mask_shape": (
        ValueError, "tgt_key_mask must be a key padding mask",
        lambda lm, s2s: s2s(_long(1, 3), _long(1, 3), tgt_key_mask=torch.ones(1, 4, dtype=torch.bool)),
    ),
    "key_mask_dtype": (TypeError, "key_mask must be a boolean",
                       lambda lm, s2s: lm(_long(1, 3), key_mask=torch.ones(1, 3))),
    "empty_prompt": (ValueError, "empty", lambda lm, s2s: lm.generate(_long(1, 0), 3)),
    "prompt_too_long": (ValueError, "exceeds max_len", lambda lm, s2s: lm.generate(_long(1, 60), 10)),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_tokens_raise_clear_errors(case):
    error, match, call = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        call(tiny_lm(), tiny_seq2seq())


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
            for a, b in zip(cache.layers, fast_cache.layers):
                a, b = a.self_attn, b.self_attn
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


# ---- the import graph ------------------------------------------------------------------------

def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the package at ``root`` that it imports, anywhere in its body (imports
    inside functions too).

    Importing ``a.b.c`` from outside package ``a.b`` runs ``a.b``'s ``__init__`` first, so it counts as
    importing ``a.b`` as well; ``from a.b import c`` imports module ``a.b.c`` when that is a module.
    """
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in found:
                if target not in files:
                    continue
                parts = target.split(".")
                for i in range(2, len(parts) + 1):  # the packages entered on the way (the root's is not)
                    step = ".".join(parts[:i])
                    if step in files and not (name == step or name.startswith(step + ".")):
                        targets.add(step)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_import_cycle_finder_finds_cycles():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph(Path(attnkit.__file__).parent)
    assert "attnkit.models.common" in graph["attnkit.models.lm"]
    assert "attnkit.kernels.alloc" in graph["attnkit.functional.lsh"]
    assert import_cycles(graph) == []
    # the layers: kernels below functional, models below interop (never imported by them, even lazily)
    for name, targets in graph.items():
        if name.startswith("attnkit.kernels"):
            assert not any(t.startswith("attnkit.functional") for t in targets), (name, targets)
        if name.startswith("attnkit.models"):
            assert not any(t.startswith("attnkit.interop") for t in targets), (name, targets)


def test_target_word_dropout_drops_whole_embeddings_in_training_only():
    model = tiny_seq2seq(word_dropout=0.5, positional="none")
    emb = model.tgt_embed
    tokens = torch.randint(0, 50, (64, 50))
    plain = emb.token(tokens) * emb.scale
    assert torch.equal(emb(tokens), plain)  # eval mode: nothing dropped
    emb.train()
    torch.manual_seed(1)
    out = emb(tokens)
    zero = (out == 0).all(-1)  # (B, T): whole vectors, never single features
    assert 0.45 < zero.float().mean() < 0.55
    assert torch.allclose(out[~zero], 2 * plain[~zero])  # the kept words scaled by 1 / (1 - p)
    assert ((out == 0).any(-1) == zero).all()
    with pytest.raises(ValueError, match="word_dropout"):
        TransformerConfig(word_dropout=1.0)


def test_decoder_layer_drop_skips_whole_layers_in_training_only():
    model = tiny_seq2seq(decoder_layer_drop=0.5)
    src, tgt = torch.randint(0, 40, (2, 7)), torch.randint(0, 50, (2, 5))
    memory = model.encode(src)
    ref, cache = model.decode(tgt, memory)
    assert cache is not None and torch.equal(model.decode(tgt, memory)[0], ref)  # eval: every layer runs
    # With no decoder layer, the decoder is the embedding, the final norm and the projection.
    bare = model.out_proj(model.decoder_norm(model.tgt_embed(tgt)))
    model.train()
    seen = set()
    torch.manual_seed(0)
    for _ in range(40):
        out, cache = model.decode(tgt, memory)
        seen.add("none" if torch.allclose(out, bare) else "full" if torch.allclose(out, ref) else "some")
        assert cache is None or torch.allclose(out, ref)  # a cache only when no layer was skipped
    assert seen == {"none", "full", "some"}
    with pytest.raises(ValueError, match="decoder_layer_drop"):
        TransformerConfig(decoder_layer_drop=-0.1)
