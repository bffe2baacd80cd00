"""The experiment scripts' own logic, on made-up run records (the runs themselves are hours of CPU):
what they choose on validation data and what their results files say."""

import importlib.util
import itertools
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_transfer_chooses_learning_rates_on_validation_and_reports_the_chosen_runs(tmp_path):
    pytest.importorskip("matplotlib")
    t = load("transfer")
    runs, counter = {}, itertools.count()
    for task, model, size in itertools.product(t.TASKS, t.MODELS, t.SIZES):
        for i, lr in enumerate(t.LEARNING_RATES[model]):
            if (task, size) != ("lexname", 1000) and i != 1:
                continue  # the grid runs only the chosen (here: the middle) learning rate
            n = next(counter)
            # validation prefers the middle rate; test would have preferred the last one
            valid = 0.5 if i == 1 else 0.3
            test = 0.40 + n / 1000 if i == 1 else 0.9
            runs[t.run_key(task, model, size, lr)] = {
                "task": task, "model": model, "size": size, "lr": lr, "valid_accuracy": valid,
                "test_accuracy": test, "test_macro_f1": test / 2, "majority_accuracy": 0.12, "steps": 100 + n,
                "best_step": 50, "parameters": 1000, "train_examples": size or 100000, "load_before": [1.0, 1, 1],
                "settings": [f"train.lr={lr}", "train.minutes=3"], "command": "python experiments/transfer.py",
                "commit": "abc1234"}
    runs[t.run_key("pos", "bilm", 0, t.LEARNING_RATES["bilm"][1])] = {
        "task": "pos", "model": "bilm", "size": 0, "lr": t.LEARNING_RATES["bilm"][1], "error": "out of memory",
        "load_before": [1.0, 1, 1]}
    results = {"meta": {"torch": "2.x", "machine": "test", "minutes": 3.0}, "runs": runs}
    for model in t.MODELS:
        assert t.chosen_lr(results, model) == t.LEARNING_RATES[model][1]
    text = t.markdown(results)
    for r in runs.values():
        if "error" not in r and r["lr"] == t.LEARNING_RATES[r["model"]][1]:
            assert f"{100 * r['test_accuracy']:.1f}% (F1 {100 * r['test_macro_f1']:.1f}, {r['steps']} steps)" in text
    assert "90.0%" not in text  # a test figure of a rate validation did not choose is never reported
    assert "failed: out of memory" in text
    assert "| encoder from scratch | 0.0002: 30.0% | 0.0005: 50.0% | 0.001: 30.0% | 0.0005 |" in text
    t.plot(results, tmp_path / "transfer.png")
    assert (tmp_path / "transfer.png").stat().st_size > 10_000


def test_transfer_trains_the_scratch_encoder_in_the_masked_lms_shape(tmp_path):
    import json
    from argparse import Namespace

    t = load("transfer")
    args = Namespace(out=str(tmp_path), eval_batches=10, minutes=3.0, warmup_steps=30, eval_every=50)
    run = tmp_path / t.PRETRAIN["mlm"]
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"model": {"type": "TransformerEncoderForMaskedLM", "d_model": 192,
                                                        "n_heads": 3, "n_layers": 2, "d_ff": 512, "dropout": 0.0}}))
    scratch = t.settings("lexname", "scratch", 1000, 1e-3, args)
    for item in ("model.d_model=192", "model.n_heads=3", "model.n_layers=2", "model.d_ff=512"):
        assert item in scratch
    assert not any(s.startswith("model.dropout") for s in scratch)  # the classifier keeps its own dropout
    assert not any(s.startswith("model.n_layers") for s in t.settings("lexname", "mlm", 1000, 1e-3, args))
    (run / "run.json").unlink()  # no pre-training run yet: the preset's shape
    from attnkit.runs import RunConfig

    preset = RunConfig.load(t.PRETRAIN["mlm"]).model
    assert f"model.n_layers={preset['n_layers']}" in t.settings("pos", "scratch", 0, 1e-3, args)


def test_transfer_recipe_choice_uses_held_out_masked_accuracy_of_the_longest_runs(tmp_path):
    import json

    t = load("transfer")
    base = {"model": {"type": "TransformerEncoderForMaskedLM", "n_layers": 4, "dropout": 0.1},
            "data": {"corpus": "english"}, "train": {"lr": 1e-3}}

    def fake_run(name, layers, minutes, accuracies):
        path = tmp_path / name
        path.mkdir()
        run = json.loads(json.dumps(base))
        run["model"]["n_layers"] = layers
        run["train"]["minutes"] = minutes
        (path / "run.json").write_text(json.dumps(run))
        records = [{"step": 10 * (i + 1), "eval_loss": 6.0 - a, "valid_masked_accuracy": a,
                    "elapsed_s": 58 * minutes * (i + 1) / len(accuracies)} for i, a in enumerate(accuracies)]
        (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
        return str(path)

    # (the last evaluations land before the budget's end: the budget, not the time of the last one, counts)
    runs = [fake_run("short", 2, 10, [0.1, 0.5]),  # best accuracy, but a shorter run: not a candidate
            fake_run("deep", 4, 60, [0.1, 0.3, 0.2]),  # its peak was earlier; the last evaluation counts
            fake_run("shallow", 2, 60, [0.1, 0.25])]
    rows = t.recipe_summary(runs)
    assert [r["chosen"] for r in rows] == [False, False, True]
    assert rows[2]["data.mask_prob"] == 0.15 and rows[2]["train.warmup_steps"] == 100  # defaults filled in
    text = t.markdown({"meta": {"torch": "2.x", "machine": "test", "minutes": 3.0}, "runs": {}, "mlm_recipe": rows})
    assert f"| {runs[2]} | 2 | 0.1 | 0.001 | 100 | 0.15 | 60 | 20 | 25.0% | 5.750 | chosen |" in text
