"""T5 through the run pipeline: span-corruption batches, the text-to-text mixture and its mixing, both
kinds trained by the Trainer, starting from a pre-training run, per-task evaluation and answering texts
with a task prefix. Tiny models, a byte tokenizer and small synthetic tasks; the real mixture's splits
are checked when its corpora are installed."""

import random
from collections import Counter

import pytest
import torch

from attnkit.data import ByteTokenizer
from attnkit.data import text2text as t2t
from attnkit.errors import UsageError
from attnkit.evaluation import bleu_chrf
from attnkit.models import T5, T5Config
from attnkit.models.t5 import shift_right
from attnkit.runs import (
    KINDS,
    RunConfig,
    build_model,
    build_tokenizer,
    evaluate_run,
    load_run,
    train_run,
    translate_run,
)
from attnkit.runs import text2text as runs_t2t
from attnkit.train import RunFolder
from attnkit.train.text2text import SENTINELS, SpanCorruptionTask, TextToTextTask, n_spans

TINY = {"d_model": 32, "d_kv": 8, "n_heads": 4, "n_layers": 1, "d_ff": 64, "feed_forward": "gated-gelu",
        "tie_embeddings": False, "dropout": 0.0}
QUIET = {"progress": False, "log_every": 5, "warmup_steps": 2}
TOK = ByteTokenizer()  # <pad> 0, <bos> 1, <eos> 2, bytes 3..258; sentinels 259..358
TEXT = "In the beginning God created the heaven and the earth. And the earth was without form, and void. " * 30


# ---- span corruption ----------------------------------------------------------------------------------

def span_task(**kw) -> SpanCorruptionTask:
    stream = 3 + torch.arange(5000) % 256  # consecutive ids (mod 256): a window is recognisable
    return SpanCorruptionTask(stream, stream[:700], **{
        "context": 64, "batch_size": 8, "first_sentinel_id": 259 + SENTINELS - 1, "eos_id": 2, "pad_id": 0,
        "decoder_start_id": 0, "seed": 3, "eval_batches": 2, **kw})


def reconstruct(src: list[int], targets: list[int], first_sentinel: int) -> tuple[list[int], int]:
    """The original window from one corrupted row, and the count of its dropped tokens."""
    spans, current = {}, None
    for t in targets:
        if t > first_sentinel - SENTINELS:
            current = spans.setdefault(t, [])
        elif t != 2:
            current.append(t)
    out = []
    for t in src:
        if t > first_sentinel - SENTINELS:
            out += spans.pop(t)
        elif t != 2:
            out.append(t)
    assert not spans, "a target span has no sentinel in the inputs"
    return out, sum(1 for t in targets if 2 < t <= first_sentinel - SENTINELS)


def test_span_batches_reconstruct_the_windows_at_about_15_percent_noise():
    task = span_task()
    first = 259 + SENTINELS - 1
    dropped, spans = 0, 0
    for i in range(5):
        src, tgt_in, tgt_out = task.batch(i)
        assert torch.equal(tgt_in, shift_right(tgt_out, 0)) and (src[:, -1] == 2).all() and (tgt_out[:, -1] == 2).all()
        for s, t in zip(src.tolist(), tgt_out.tolist()):
            window, n = reconstruct(s, t, first)
            steps = (torch.tensor(window).diff() - 1) % 256
            assert len(window) == 64 and (steps == 0).all(), "not one contiguous window of the stream"
            dropped += n
            spans += sum(1 for x in s if x > first - SENTINELS)
    assert dropped / (5 * 8 * 64) == pytest.approx(0.15, abs=0.01)  # round(64 * 0.15) = 10 of 64
    assert spans == 5 * 8 * n_spans(64) and dropped / spans == pytest.approx(3.0, abs=0.4)


def test_span_batches_are_a_function_of_the_index_and_the_seed():
    a, b = span_task(), span_task()
    assert all(torch.equal(x, y) for x, y in zip(a.batch(7), b.batch(7)))
    assert not torch.equal(a.batch(7)[0], a.batch(8)[0])
    assert not torch.equal(a.batch(7)[0], span_task(seed=4).batch(7)[0])
    held = [torch.cat(x) for x in zip(*a.eval_batches())]
    assert all(torch.equal(x, torch.cat(y)) for x, y in zip(held, zip(*b.eval_batches())))
    assert held[0].shape[0] == 10  # 700 tokens: 10 windows of 64, fewer than 2 batches of 8


# ---- the mixture --------------------------------------------------------------------------------------

def test_mixing_rates_are_examples_proportional_with_a_cap():
    assert t2t.mixing_rates({"a": 100, "b": 10, "c": 1000}, 50) == {"a": 50 / 110, "b": 10 / 110, "c": 50 / 110}
    assert t2t.mixing_rates({"a": 100, "b": 300}) == {"a": 0.25, "b": 0.75}
    for bad, message in [(dict(cap=-1), "cap must be an int >= 0"), (dict(sizes={}), "sizes is empty"),
                         (dict(sizes={"a": 0}), "sizes must be ints >= 1")]:
        with pytest.raises(ValueError, match=message):
            t2t.mixing_rates(**{"sizes": {"a": 1}, **bad})


def test_batches_draw_the_tasks_at_their_rates_deterministically():
    train = {"a": [([3], [4])] * 100, "b": [([5], [6])] * 10, "c": [([7, 7], [8])] * 1000}
    rates = t2t.mixing_rates({t: len(v) for t, v in train.items()}, 50)

    def task(seed=0):
        return TextToTextTask(train, {}, rates=rates, pad_id=0, eos_id=2, decoder_start_id=0, batch_size=32,
                              max_len=8, seed=seed)

    counts = Counter(t for i in range(300) for t, _ in task().sample(i))
    for name, rate in rates.items():
        assert counts[name] / 9600 == pytest.approx(rate, abs=0.02), (name, counts)
    assert task().sample(11) == task().sample(11) != task().sample(12)
    assert task().sample(11) != task(seed=1).sample(11)
    src, tgt_in, tgt_out = task().collate([([3, 4, 5], [6]), ([7], [8, 9])])
    assert src.tolist() == [[3, 4, 5, 2], [7, 2, 0, 0]]  # eos ends each input; padding after
    assert tgt_in.tolist() == [[0, 6, 0], [0, 8, 9]] and tgt_out.tolist() == [[6, 2, -100], [8, 9, 2]]


@pytest.fixture(scope="module")
def real_mixture():
    try:
        return t2t.mixture_splits("t5-mixture")
    except (FileNotFoundError, OSError) as e:
        pytest.skip(f"the mixture's corpora are not installed: {e}")


def test_the_real_mixture_has_its_prefixes_and_no_held_out_example_in_training(real_mixture):
    assert list(real_mixture) == ["de-en", "fr-en", "pos", "define"]
    for name, splits in real_mixture.items():
        prefix = t2t.TASKS[name].prefix
        assert all(len(splits[s]) > 1000 for s in t2t.SPLITS), name
        assert all(e.task == name and e.source.startswith(prefix) and e.target for s in t2t.SPLITS
                   for e in splits[s]), name
        trained = set(splits["train"])
        assert not trained & set(splits["test"]) and not trained & set(splits["validation"]), name
    assert {e.target for e in real_mixture["pos"]["test"]} == {"noun", "verb", "adj", "adv"}
    assert real_mixture["de-en"]["train"][0].source.startswith("translate German to English: ")
    dog = [e for e in real_mixture["define"]["train"] + real_mixture["define"]["test"] if e.source == "define: dog"]
    assert any(e.target.startswith("a member of the genus Canis") for e in dog), dog
    # the translation splits are the corpus's own: by source sentence, so no test source is trained on
    for name in ("de-en", "fr-en"):
        assert not {e.source for e in real_mixture[name]["train"]} & {e.source for e in real_mixture[name]["test"]}


# ---- the run kinds on a small synthetic mixture --------------------------------------------------------

def synthetic_task(name: str, prefix: str, metric: str, answer) -> t2t.TextTask:
    rng = random.Random(name)
    words = list(dict.fromkeys("".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6))) for _ in range(700)))
    splits = {"train": words[:-80], "validation": words[-80:-40], "test": words[-40:]}
    return t2t.TextTask(name, prefix, metric, "words",
                        lambda: {s: [(w, answer(w)) for w in part] for s, part in splits.items()})


@pytest.fixture(scope="module")
def mixture():
    """Two synthetic tasks, registered as the mixtures "test-mix" (both) and "test-first" (one)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(t2t.TASKS, "shout", synthetic_task("shout", "shout: ", "translation", str.upper))
        mp.setitem(t2t.TASKS, "first", synthetic_task("first", "first letter: ", "accuracy", lambda w: w[0]))
        mp.setitem(t2t.MIXTURES, "test-mix", ("shout", "first"))
        mp.setitem(t2t.MIXTURES, "test-first", ("first",))
        t2t.task_splits.cache_clear()
        runs_t2t._mixture.cache_clear()
        yield
        t2t.task_splits.cache_clear()
        runs_t2t._mixture.cache_clear()


def t5_config(kind: str, *, model=None, data=None, train=None) -> RunConfig:
    text = {"corpus": "test-mix", "max_len": 16, "batch_size": 16}
    span = {"context": 32, "batch_size": 8}
    return RunConfig.from_dict({
        "model": {"type": "T5" if kind == "text2text" else "T5SpanCorruption", **TINY, **(model or {})},
        "data": {"tokenizer": "byte", "eval_batches": 2, **(text if kind == "text2text" else span), **(data or {})},
        "train": {"max_steps": 40, "lr": 3e-3, "eval_every": 20, "checkpoint_every": 20, **QUIET, **(train or {})},
    })


@pytest.fixture(scope="module")
def span_run(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("text") / "corpus.txt"
    corpus.write_text(TEXT)
    run = tmp_path_factory.mktemp("runs") / "span"
    train_run(t5_config("span", data={"corpus": str(corpus)}), run, log=lambda _: None)
    return run


@pytest.fixture(scope="module")
def text_run(mixture, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "text2text"
    train_run(t5_config("text2text", data={"valid_bleu_sentences": 4}), run, log=lambda _: None)
    return run


def falling(run) -> tuple[float, float]:
    losses = [r["loss"] for r in RunFolder(run).read_metrics() if "loss" in r]
    return sum(losses[:2]) / 2, sum(losses[-2:]) / 2


def test_both_kinds_train_a_tiny_t5_with_falling_loss(span_run, text_run):
    for run in (span_run, text_run):
        first, last = falling(run)
        assert last < 0.8 * first, (run, first, last)
    loaded = load_run(text_run)
    assert loaded.config.model_type == "T5" and isinstance(loaded.model, T5)
    assert loaded.model.config.vocab_size == TOK.vocab_size + SENTINELS and loaded.model.config.eos_id == TOK.eos_id
    evals = [r for r in RunFolder(text_run).read_metrics() if "eval_loss" in r]
    assert evals and all(0 <= r["valid_first_accuracy"] <= 1 and 0 <= r["valid_shout_chrf"] <= 100 for r in evals)
    # span runs: the held-out targets' loss and accuracy, and examples with their sentinels
    result = evaluate_run(span_run, max_tokens=600, show=1)
    assert 0 <= result.metrics["target_accuracy"] <= 1 and result.metrics["target_tokens"] > 0
    assert "<extra_id_0>" in result.examples[0][0] and "<extra_id_0>" in result.examples[0][2][0]


def test_kinds_check_their_data_loudly(mixture, tmp_path):
    for kind, data, message in [
        ("text2text", {"corpus": "kjv"}, "data.corpus must be a text-to-text mixture"),
        ("span", {"corpus": "test-mix"}, "pre-trains on a text stream"),
        ("span", {"corpus": "kjv", "tokenizer": "char"}, "data.tokenizer must be one of bpe"),
        ("span", {"corpus": "kjv", "context": 3000}, "set data.context <= "),
    ]:
        with pytest.raises(UsageError, match=message):
            build_tokenizer(t5_config(kind, data=data))
    with pytest.raises(UsageError, match="a T5 run starts from a T5 run folder"):
        build_tokenizer(t5_config("text2text", model={"init_from": "hf:/nowhere"}))


def test_span_tokenizer_also_learns_the_tokenizer_corpus(mixture, tmp_path):
    # T5's vocabulary covers the languages of its later tasks: here, the upper-case answers of "shout".
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    data = {"corpus": str(corpus), "tokenizer": "bpe", "vocab_size": 600}
    plain = build_tokenizer(t5_config("span", data=data))
    wide = build_tokenizer(t5_config("span", data={**data, "tokenizer_corpus": "test-mix"}))
    shouted = [e.target for e in t2t.task_splits("shout")["test"]]  # held out: not in either's training text
    assert sum(len(wide.encode(w)) for w in shouted) < 0.6 * sum(len(plain.encode(w)) for w in shouted)
    assert wide.encode("In the beginning") and TEXT.split()[0] in wide.decode(wide.encode(TEXT[:40]))
    for kind, data_, model, message in [
        ("span", {**data, "tokenizer_corpus": "kjv"}, None, "data.tokenizer_corpus must be a text-to-text mixture"),
        ("text2text", {"tokenizer_corpus": "test-mix"}, None, "only span-corruption pre-training"),
        ("text2text", {"tokenizer_corpus": "test-mix"}, {"init_from": str(tmp_path)}, "only span-corruption"),
    ]:
        with pytest.raises(UsageError, match=message):
            build_tokenizer(t5_config(kind, data=data_, model=model))


def test_init_from_copies_every_weight_and_the_tokenizer(mixture, span_run, tmp_path):
    config = t5_config("text2text", model={"init_from": str(span_run), "d_model": 64, "dropout": 0.1})
    tokenizer = build_tokenizer(config)
    from attnkit.runs import resolve_model_config

    model_config = resolve_model_config(config, tokenizer)
    assert model_config.d_model == 32 and model_config.dropout == 0.1  # the source's shape, its own dropout
    model = build_model(config, model_config)
    source = load_run(span_run).model.state_dict()
    ours = model.state_dict()
    assert ours.keys() == source.keys() and all(torch.equal(ours[k], source[k]) for k in source)
    fresh = build_model(config, model_config, pretrained=False).state_dict()  # a resumed run's start
    assert not torch.equal(fresh["embed.weight"], source["embed.weight"])
    # a run started from it keeps the source's tokenizer
    run = tmp_path / "tuned"
    train_run(t5_config("text2text", model={"init_from": str(span_run)}, train={"max_steps": 1}), run,
              log=lambda _: None)
    assert (run / "tokenizer.json").read_text() == (span_run / "tokenizer.json").read_text()
    with pytest.raises(UsageError, match="is not a run folder"):
        build_tokenizer(t5_config("text2text", model={"init_from": str(tmp_path / "none")}))


def test_evaluate_per_task_matches_a_plain_recomputation(mixture, text_run):
    run = load_run(text_run)
    result = evaluate_run(run, limit=12, beam_size=1, show=1)
    model, splits = run.model, t2t.mixture_splits("test-mix")
    for name in ("shout", "first"):
        test = splits[name]["test"]
        picked = [test[i * len(test) // 12] for i in range(12)]
        hyps = []
        for e in picked:  # one at a time: no padding, the plainest decoding
            src = torch.tensor([[*TOK.encode(e.source), TOK.eos_id]])
            out = model.generate(src, 16)[0, 1:].tolist()
            out = out[: out.index(TOK.eos_id)] if TOK.eos_id in out else out
            hyps.append(TOK.decode([i for i in out if i < TOK.vocab_size]).strip())
        assert result.metrics[f"{name}_examples"] == 12
        if name == "first":
            acc = sum(h == e.target for h, e in zip(hyps, picked)) / 12
            assert result.metrics["first_accuracy"] == pytest.approx(acc)
            majority = Counter(e.target for e in splits["first"]["train"]).most_common(1)[0][0]
            assert result.metrics["first_majority_accuracy"] == pytest.approx(
                sum(e.target == majority for e in picked) / 12)
        else:
            scores = bleu_chrf(hyps, [[e.target] for e in picked])
            assert result.metrics["shout_chrf"] == pytest.approx(scores["chrf"])
            assert result.metrics["shout_bleu"] == pytest.approx(scores["bleu"])
    report = result.report()
    assert "shout (shout:) test words: 12; BLEU" in report
    assert "first (first letter:) test words: 12; exact match" in report
    assert report.count("reference:") == 2  # show 1 of each task


def test_answers_come_for_texts_with_a_task_prefix(mixture, text_run):
    answers = translate_run(text_run, ["abc", "bad"], prefix="shout: ", beam_size=2)
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    assert translate_run(text_run, ["first letter: cab"], beam_size=1)[0]
    with pytest.raises(UsageError, match="names no task: this run does shout, first"):
        translate_run(text_run, ["cab"])
    # a single-task run puts its prefix before a text without one
    model = T5(T5Config(**{**TINY, "vocab_size": TOK.vocab_size + SENTINELS, "eos_id": 2}))
    data = t5_config("text2text", data={"corpus": "test-first"}).data
    kind = KINDS["text2text"]
    assert kind.translate(model, TOK, data, ["cab"], beam_size=1) == \
        kind.translate(model, TOK, data, ["first letter: cab"], beam_size=1)


def test_bleu_reports_the_length_ratio_against_the_closest_reference():
    # 3 hypothesis words; references of 6 and 4 words: the closest is 4, so BLEU's brevity penalty sees 3 / 4
    scores = bleu_chrf(["the cat sat"], [["the cat sat on the mat", "the cat sat down"]])
    assert scores["length_ratio"] == 0.75
    assert bleu_chrf(["a b c d e"], [["a b c d e"]])["length_ratio"] == 1.0
