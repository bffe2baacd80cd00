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


def test_transfer_chooses_learning_rates_per_size_on_validation_and_reports_the_chosen_runs(tmp_path):
    pytest.importorskip("matplotlib")
    t = load("transfer")
    prefer = {1000: 1, 10000: 2, 0: 0}  # the candidate validation prefers at each size
    runs, counter = {}, itertools.count()
    for task, model, size in itertools.product(t.TASKS, t.MODELS, t.SIZES):
        for i, lr in enumerate(t.LEARNING_RATES[model]):
            if task != "lexname" and i != prefer[size]:
                continue  # the other task runs only the rate chosen on the lexicographer file
            n = next(counter)
            # validation prefers one rate per size; test would have preferred another
            valid = 0.5 if i == prefer[size] else 0.3
            test = 0.40 + n / 1000 if i == prefer[size] else 0.9
            runs[t.run_key(task, model, size, lr)] = {
                "task": task, "model": model, "size": size, "lr": lr, "valid_accuracy": valid,
                "test_accuracy": test, "test_macro_f1": test / 2, "majority_accuracy": 0.12, "steps": 100 + n,
                "best_step": 50, "parameters": 1000, "train_examples": size or 100000, "load_before": [1.0, 1, 1],
                "settings": [f"train.lr={lr}", "train.minutes=3"], "command": "python experiments/transfer.py",
                "commit": "abc1234"}
    bilm_all = t.LEARNING_RATES["bilm"][prefer[0]]
    runs[t.run_key("pos", "bilm", 0, bilm_all)] = {
        "task": "pos", "model": "bilm", "size": 0, "lr": bilm_all, "error": "out of memory",
        "load_before": [1.0, 1, 1]}
    # a failed candidate is never chosen, whatever it would have scored
    failed = t.run_key("lexname", "scratch", 0, t.LEARNING_RATES["scratch"][-1])
    runs[failed] = {**runs[failed], "valid_accuracy": 0.99, "error": "killed"}
    results = {"meta": {"torch": "2.x", "machine": "test", "minutes": 3.0}, "runs": runs}
    for model, size in itertools.product(t.MODELS, t.SIZES):
        assert t.chosen_lr(results, model, size) == t.LEARNING_RATES[model][prefer[size]]
    assert t.chosen_lr(results, "scratch", 777) is None
    text = t.markdown(results)
    for r in runs.values():
        if "error" not in r and r["lr"] == t.LEARNING_RATES[r["model"]][prefer[r["size"]]]:
            assert f"{100 * r['test_accuracy']:.1f}% (F1 {100 * r['test_macro_f1']:.1f}, {r['steps']} steps)" in text
    assert "90.0%" not in text  # a test figure of a rate validation did not choose is never reported
    assert any(line.startswith(f"| {t.LABELS['bilm']} |") and line.endswith("| failed: out of memory |")
               for line in text.splitlines())  # the failed run shows in the test-accuracy table, not only below
    width = max(len(v) for v in t.LEARNING_RATES.values())

    def row(model, size, failed=None):  # the learning-rate table's row: each candidate's validation figure
        lrs, pick = t.LEARNING_RATES[model], prefer[size]
        cells = [f"{lr:g}: " + ("failed" if lr == failed else "50.0%" if i == pick else "30.0%")
                 for i, lr in enumerate(lrs)]
        return (f"| {t.LABELS[model]} | {t.size_name(size)} | " + " | ".join(cells + [""] * (width - len(lrs)))
                + f" | {lrs[pick]:g} |")

    for expected in (row("scratch", 1000), row("scratch", 0, failed=t.LEARNING_RATES["scratch"][-1]),
                     row("mlm", 10000)):
        assert expected in text
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


def test_transfer_validates_about_once_an_epoch_at_small_sizes(tmp_path):
    from argparse import Namespace

    t = load("transfer")
    args = Namespace(out=str(tmp_path), eval_batches=10, minutes=3.0, warmup_steps=30, eval_every=0)
    every = {size: [s for s in t.settings("lexname", "mlm", size, 1e-3, args) if s.startswith("train.eval_every=")]
             for size in (1000, 10000, 0)}
    assert every == {1000: ["train.eval_every=15"], 10000: ["train.eval_every=50"], 0: ["train.eval_every=50"]}
    args.eval_every = 25  # asked for: the same at every size
    assert "train.eval_every=25" in t.settings("pos", "scratch", 1000, 1e-3, args)


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


def _t5_run(name, scores, steps=100):
    return {"run": name, "preset": "t5_span_english" if name == "span" else "t5_multitask", "scores": scores,
            "steps": steps, "train_minutes": 20.0, "parameters": 13_590_272, "threads": 1, "peak_rss_gib": 1.5,
            "settings": ["train.minutes=20.0"], "examples": [], "curves": {}, "beam_size": 4, "limit": 500,
            "load_before": [1.0, 1, 1], "load_after": [2.0, 1, 1], "command": "python experiments/t5.py",
            "commit": "abc1234", "torch": "2.x", "cpu_model": "test CPU", "cpu_count": 2}


def test_t5_table_puts_each_runs_scores_in_its_column_and_the_gain_is_pretrained_minus_scratch(tmp_path):
    pytest.importorskip("matplotlib")
    t = load("t5")
    everything = {"de-en_bleu": 12.0, "de-en_chrf": 33.0, "de-en_examples": 500, "fr-en_bleu": 20.0,
                  "fr-en_chrf": 45.0, "fr-en_examples": 500, "pos_accuracy": 0.6, "pos_majority_accuracy": 0.48,
                  "pos_examples": 500, "define_bleu": 3.0, "define_chrf": 18.0, "define_examples": 500}
    pre = {**everything, "de-en_bleu": 15.5, "de-en_chrf": 35.3, "fr-en_bleu": 19.0, "fr-en_chrf": 46.0,
           "pos_accuracy": 0.75}
    del pre["define_chrf"]  # a score missing from a run: "-", and no gain
    runs = {"multitask": _t5_run("multitask", everything), "multitask_pre": _t5_run("multitask_pre", pre),
            "single-de-en": _t5_run("single-de-en", {"de-en_bleu": 10.0, "de-en_chrf": 30.0, "de-en_examples": 500}),
            "single-pos": _t5_run("single-pos", {"pos_accuracy": 0.5, "pos_majority_accuracy": 0.48,
                                                 "pos_examples": 500}),
            "single-fr-en": {"run": "single-fr-en", "error": "out of memory", "load_before": [1.0, 1, 1]},
            "span": _t5_run("span", {"target_accuracy": 0.25, "target_loss": 4.5, "target_tokens": 7000}, 900)}
    results = {"meta": {"torch": "2.x", "machine": "test", "beam_size": 4, "limit": 500}, "runs": runs}
    text = t.markdown(results)
    assert ("| task | score | single-task | multi-task from scratch | multi-task pre-trained | gain from pre-training |"
            in text)
    assert "| de-en (500) | BLEU / chrF | 10.0 / 30.0 | 12.0 / 33.0 | 15.5 / 35.3 | +3.5 / +2.3 |" in text
    assert "| fr-en (500) | BLEU / chrF | failed | 20.0 / 45.0 | 19.0 / 46.0 | -1.0 / +1.0 |" in text
    assert "| pos (500) | exact match (%) | 50.0 | 60.0 | 75.0 | +15.0 |" in text  # percentage points
    assert "| define (500) | chrF | - | 18.0 | - | - |" in text  # no single-define run; no pre-trained chrF
    assert "always the most frequent training label: 48.0%" in text
    assert "accuracy 25.0%, loss 4.500 nats over 7,000 target tokens" in text
    assert "| span | t5_span_english | 13,590,272 | 900 | 20.0 (20) | 1 | 1.0, 2.0 | 1.5 |" in text
    assert "| single-fr-en | failed: out of memory |" in text
    t.plot(results, tmp_path / "t5.png")
    assert (tmp_path / "t5.png").stat().st_size > 10_000


def test_t5_multitask_pre_needs_the_span_run_and_says_which_folder(tmp_path, monkeypatch, capsys):
    t = load("t5")

    def no_training(name, args):
        raise AssertionError(f"{name} would have been trained")

    monkeypatch.setattr(t, "run_one", no_training)
    out = tmp_path / "runs"
    with pytest.raises(SystemExit):
        t.main(["--runs", "multitask_pre", "--out", str(out), "--results", str(tmp_path / "t5")])
    err = capsys.readouterr().err
    assert f"{out / 'span'} holds none" in err and "add span to --runs" in err
    (out / "span").mkdir(parents=True)
    (out / "span" / "run.json").write_text("{}")  # a run folder without a checkpoint is no start either
    with pytest.raises(SystemExit):
        t.main(["--runs", "multitask_pre", "--out", str(out), "--results", str(tmp_path / "t5")])
    assert f"{out / 'span'} holds none" in capsys.readouterr().err


def test_t5_multitask_pre_after_a_failed_span_run_is_an_error_row_not_a_run(tmp_path, monkeypatch):
    import subprocess
    from argparse import Namespace

    t = load("t5")
    real = subprocess.run

    def no_child(cmd, *a, **k):  # git (the provenance) may run; a training process may not
        if "--child" in cmd:
            pytest.fail("a training process was started")
        return real(cmd, *a, **k)

    monkeypatch.setattr(subprocess, "run", no_child)
    args = Namespace(out=str(tmp_path), minutes=1.0, pretrain_minutes=1.0, valid_sentences=5, limit=10, beam_size=1,
                     span_tokens=1000, threads=None, set=[])
    row = t.run_one("multitask_pre", args)
    assert str(tmp_path / "span") in row["error"] and "load_after" in row


def test_t5_refuses_set_items_for_unknown_runs(tmp_path, monkeypatch, capsys):
    from argparse import Namespace

    t = load("t5")

    def no_training(name, args):
        raise AssertionError(f"{name} would have been trained")

    monkeypatch.setattr(t, "run_one", no_training)
    for item in ("transformer:model.dropout=0.1", "model.dropout=0.1", "single-xx:train.lr=1e-3"):
        with pytest.raises(SystemExit):
            t.main(["--runs", "single-pos", "--set", item, "--out", str(tmp_path), "--results", str(tmp_path / "t5")])
        err = capsys.readouterr().err
        assert repr(item) in err and "RUN one of span, multitask, multitask_pre" in err and "text2text" in err
    # the names that are accepted reach the runs they name
    args = Namespace(out=str(tmp_path), minutes=1.0, pretrain_minutes=2.0, valid_sentences=5,
                     set=["text2text:model.dropout=0.2", "single-pos:train.lr=5e-4", "all:train.eval_every=50"])
    assert t.settings("single-pos", args)[-3:] == ["model.dropout=0.2", "train.lr=5e-4", "train.eval_every=50"]
    assert t.settings("span", args) == ["train.minutes=2.0", "train.progress=false", "train.eval_every=50"]
    assert f"model.init_from={tmp_path / 'span'}" in t.settings("multitask_pre", args)


def test_translation_reports_the_candidates_and_chooses_the_lowest_validation_loss_per_model_and_corpus(tmp_path):
    import json

    translation = load("translation")

    def candidate(name, model, loss, bleu, settings, corpus="de-en-all", parameters=10):
        run = {"model": model, "corpus": corpus, "train_minutes": 12.0, "parameters": parameters, "steps": 5,
               "settings": [f"data.corpus={corpus}", "train.minutes=12", *settings], "commit": "abc1234",
               "valid_loss_curve": [[60, loss + 1], [720, loss]], "valid_curve": [[60, 0.0], [720, bleu]]}
        (tmp_path / f"{name}.json").write_text(json.dumps({"runs": {f"{model}-{corpus}": run}}))

    candidate("t_small", "transformer", 4.0, 0.5, ["model.dropout=0.1"])
    candidate("t_big", "transformer", 5.5, 0.9, ["model.d_model=256"])  # better BLEU, worse loss: not chosen
    candidate("r_b64", "rnn", 4.4, 0.6, ["data.batch_size=64"])
    candidate("r_b128", "rnn", 4.9, 0.4, [])
    candidate("r_wide", "rnn", 4.39, 0.7, ["model.d_hidden=384"], parameters=20)  # lower by less than TIE, larger
    candidate("t_bible", "transformer", 3.3, 10.0, [], corpus="es-en-bible")  # another corpus: its own choice
    lines = translation.recipe_lines(tmp_path)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if "de-en-all" in line}
    assert rows["t_small"].endswith("| model.dropout=0.1 | abc1234 | yes |")
    assert rows["t_big"].endswith("| model.d_model=256 | abc1234 |  |")
    assert rows["r_b64"].endswith("| yes |") and rows["r_b128"].endswith("| - | abc1234 |  |")
    assert rows["r_wide"].endswith("| model.d_hidden=384 | abc1234 |  |")
    assert "| 4.000 | 0.50 |" in rows["t_small"]
    assert next(line for line in lines if line.startswith("| t_bible |")).endswith("| - | abc1234 | yes |")
    assert translation.recipe_lines(tmp_path / "none") == []


def test_translation_table_shows_each_runs_length_penalty_and_the_validation_scores_it_was_chosen_on():
    translation = load("translation")

    def run(model, corpus, bleu, **extra):
        test = {"bleu": bleu, "chrf": 40.0, "sentences": 100, "examples": [], **extra.pop("test", {})}
        return {"model": model, "corpus": corpus, "parameters": 1000, "steps": 50, "target_tokens_per_s": 900.0,
                "tests": {corpus: test}, "command": "python x.py", "commit": "abc1234", "threads": 1,
                "load_before": [1.0, 1.0, 1.0], "settings": [], **extra}

    results = {"meta": {"torch": "2.13", "machine": "x86_64, 2 CPUs", "minutes": 30.0}, "runs": {
        "transformer-es-en-bible": run("transformer", "es-en-bible", 30.2, length_penalty=2.0,
                                       valid_bleu_by_length_penalty=[[1.0, 20.5], [2.0, 22.25], [3.0, 21.0]],
                                       test={"length_ratio": 0.93}),
        "rnn-es-en-bible": run("rnn", "es-en-bible", 28.1),  # an older run: no penalty chosen, no ratio
    }}
    text = translation.markdown(results)
    assert "| es-en-bible | es-en-bible (100) | transformer | 1,000 | 50 | 900 | 2 | 30.2 | 40.0 | 0.93 |" in text
    assert "| es-en-bible | es-en-bible (100) | rnn | 1,000 | 50 | 900 | 1 | 28.1 | 40.0 | - |" in text
    assert "- transformer on es-en-bible: 1: 20.50, **2: 22.25**, 3: 21.00" in text
    assert "- rnn on es-en-bible: 1" not in text and "- rnn on es-en-bible: `python x.py`" in text


def test_transfer_reuses_the_choice_at_the_largest_swept_size_below_where_no_sweep_ran():
    t = load("transfer")
    lrs = t.LEARNING_RATES["mlm"]

    def run(size, lr, valid):
        return {"task": "lexname", "model": "mlm", "size": size, "lr": lr, "valid_accuracy": valid,
                "test_accuracy": 0.5, "test_macro_f1": 0.2, "majority_accuracy": 0.1, "steps": 100, "best_step": 50,
                "parameters": 1000, "load_before": [1.0, 1, 1], "settings": [f"train.lr={lr}"]}

    runs = {t.run_key("lexname", "mlm", 1000, lr): run(1000, lr, 0.6 if i == 1 else 0.3) for i, lr in enumerate(lrs)}
    # at 10,000 a single run, at a rate that is not the choice at 1,000, and with a better validation figure
    runs[t.run_key("lexname", "mlm", 10000, lrs[2])] = run(10000, lrs[2], 0.9)
    results = {"meta": {"torch": "2.x", "machine": "test", "minutes": 3.0}, "runs": runs}
    assert t.lr_choice(results, "mlm", 1000) == (lrs[1], 1000)
    assert t.lr_choice(results, "mlm", 10000) == (lrs[1], 1000)  # one run is no sweep
    assert t.lr_choice(results, "mlm", 0) == (lrs[1], 1000)  # the largest size below that has a choice
    assert t.chosen_lr(results, "scratch", 10000) is None
    text = t.markdown(results)
    width = max(len(v) for v in t.LEARNING_RATES.values())
    cells = [f"{lr:g}: -" for lr in lrs] + [""] * (width - len(lrs))
    assert f"| {t.LABELS['mlm']} | all | " + " | ".join(cells) + f" | {lrs[1]:g} (chosen at 1000) |" in text
    # a sweep at 10,000 (two or more candidates) chooses there
    runs[t.run_key("lexname", "mlm", 10000, lrs[0])] = run(10000, lrs[0], 0.4)
    assert t.lr_choice(results, "mlm", 10000) == (lrs[2], 10000)
    assert t.lr_choice(results, "mlm", 0) == (lrs[2], 10000)
