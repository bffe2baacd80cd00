"""T5 on four tasks: one text-to-text model trained on the mixture of German-English and French-English
translation, part of speech of WordNet glosses and WordNet definitions, against a model of the same size
and the same wall-clock budget for each task alone; and the same multi-task model fine-tuned from a
span-corruption pre-training run, against it from scratch.

    python experiments/t5.py                                   # every run: the figures of the T5 issue
    python experiments/t5.py --threads 1 --runs span multitask_pre single-de-en single-fr-en &  # side by side,
    python experiments/t5.py --threads 1 --runs multitask single-pos single-define              # one core each
    python experiments/t5.py --runs single-pos --set text2text:train.lr=5e-4
    python experiments/t5.py --replot

The runs (``--runs``, default all; one process each, so that each run's peak memory is its own):

- ``span``: the preset ``t5_span_english`` (span corruption on the english corpus) for
  ``--pretrain-minutes``, then scored on the first ``--span-tokens`` held-out tokens (loss and accuracy
  of the dropped spans);
- ``multitask``: the preset ``t5_multitask`` (mixture ``t5-mixture``) from scratch, ``--minutes``;
- ``multitask_pre``: the same, started from the ``span`` run (``model.init_from``; its folder must hold a
  checkpoint: run ``span`` first, or in the same command), ``--minutes``;
- ``single-de-en``, ``single-fr-en``, ``single-pos``, ``single-define``: the same preset on one task
  (``data.corpus=t5-<task>``), ``--minutes`` each.

Every text-to-text run logs greedy scores of the first ``--valid-sentences`` validation sources of each of
its tasks at each evaluation (its validation curves; validation time counts in the budget), then answers
``--limit`` test sources of each task by beam search (``--beam-size``): BLEU and chrF for translation,
exact match for part of speech (beside always the most frequent training label), chrF for definitions.
The sources are spread evenly over each test set, the same for every run. Settings are the presets' plus
``--set RUN:SECTION.KEY=VALUE`` (RUN a run's name, ``text2text`` for every run of ``t5_multitask``, or
``all``), which the results record; choose them on the validation curves, never on the test figures.
Runs already in the results are kept unless run again.
Writes experiments/results/t5.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

TASKS = ("de-en", "fr-en", "pos", "define")
METRICS = {"de-en": ("bleu", "chrf"), "fr-en": ("bleu", "chrf"), "pos": ("accuracy",), "define": ("chrf",)}
METRIC_NAMES = {"bleu": "BLEU", "chrf": "chrF", "accuracy": "exact match (%)"}
RUNS = {  # name -> (preset, data.corpus; None: the preset's)
    "span": ("t5_span_english", None),
    "multitask": ("t5_multitask", "t5-mixture"),
    "multitask_pre": ("t5_multitask", "t5-mixture"),
    **{f"single-{task}": ("t5_multitask", f"t5-{task}") for task in TASKS},
}
GROUPS = {"text2text": [r for r in RUNS if r != "span"], "all": list(RUNS)}  # --set names for several runs
COLUMNS = ("single", "multitask", "multitask_pre")  # the table's columns of scores
COLUMN_NAMES = {"single": "single-task", "multitask": "multi-task from scratch",
                "multitask_pre": "multi-task pre-trained"}
EXAMPLES = 5  # examples shown per task (evenly spread over the scored test sources)
RESULTS = Path(__file__).with_name("results") / "t5"


def span_folder(out: str | Path) -> Path:
    return Path(out) / "span"


def span_ready(out: str | Path) -> bool:
    """Whether the span-corruption run's folder holds a checkpoint to start from."""
    from attnkit.train.runfolder import RunFolder

    folder = RunFolder(span_folder(out))
    return folder.is_run() and bool(folder.checkpoints())


def run_for(column: str, task: str) -> str:
    """The run whose score of ``task`` fills ``column`` of the table."""
    return f"single-{task}" if column == "single" else column


# ---- one run (a child process) ----------------------------------------------------------------------

def child(args) -> None:
    """Train and score one run; print one JSON line."""
    import torch

    from attnkit.data.text2text import TASKS as TEXT_TASKS
    from attnkit.runs import RunConfig, evaluate_run, load_run, train_run

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    preset = RUNS[args.run][0]
    config = RunConfig.load(preset, args.sets)
    started = time.time()
    result = train_run(config, args.run_dir, overwrite=True, log=lambda s: print(s, file=sys.stderr, flush=True))
    records = result.folder.read_metrics()
    run = load_run(args.run_dir)
    evaluated = time.time()
    if args.run == "span":
        ev = evaluate_run(run, max_tokens=args.span_tokens, show=2)
        examples = [{"task": "span", "source": s, "answer": a, "references": refs} for s, a, refs in ev.examples]
    else:
        ev = evaluate_run(run, beam_size=args.beam_size, limit=args.limit, show=EXAMPLES)
        prefixes = {task.prefix: name for name, task in TEXT_TASKS.items()}
        examples = [{"task": next((t for p, t in prefixes.items() if s.startswith(p)), "?"), "source": s,
                     "answer": a, "references": refs} for s, a, refs in ev.examples]
    evals = [r for r in records if "eval_loss" in r]
    curves = {k: [(r["elapsed_s"], r[k]) for r in evals if k in r]
              for k in sorted({k for r in evals for k in r}) if k == "eval_loss" or k.startswith("valid_")}
    print(json.dumps({
        "run": args.run, "preset": preset, "settings": args.sets,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "steps": result.summary["step"], "stop_reason": result.summary.get("stop_reason"),
        "train_minutes": result.summary.get("elapsed_s", 0.0) / 60, "scores": ev.metrics, "examples": examples,
        "curves": curves, "threads": torch.get_num_threads(), "torch": torch.__version__,
        **({"span_tokens": args.span_tokens} if args.run == "span" else {"beam_size": args.beam_size,
                                                                         "limit": args.limit}),
        "eval_minutes": (time.time() - evaluated) / 60, "wall_minutes": (time.time() - started) / 60,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }))


def overrides(name: str, sets: list[str]) -> list[str]:
    """The ``--set RUN:SECTION.KEY=VALUE`` items that apply to run ``name`` (its own, its group's, all's)."""
    out = []
    for item in sets:
        target, value = item.split(":", 1)
        if target == name or name in GROUPS.get(target, ()):
            out.append(value)
    return out


def settings(name: str, args) -> list[str]:
    """The overrides of the preset that run ``name`` trains with: its budget, its corpus, its start, then
    the user's ``--set`` items (which win)."""
    if name == "span":
        sets = [f"train.minutes={args.pretrain_minutes}", "train.progress=false"]
    else:
        sets = [f"data.corpus={RUNS[name][1]}", f"train.minutes={args.minutes}", "train.progress=false",
                f"data.valid_bleu_sentences={args.valid_sentences}"]
        if name == "multitask_pre":
            sets.append(f"model.init_from={span_folder(args.out)}")
    return sets + overrides(name, args.set)


def run_one(name: str, args) -> dict:
    from attnkit.bench import provenance

    row = {"run": name, **provenance(__file__, sys.argv[1:])}
    if name == "multitask_pre" and not span_ready(args.out):
        return {**row, "error": f"needs the span-corruption run in {span_folder(args.out)} (no checkpoint there: "
                                "the span run failed or was not made)", "load_after": list(os.getloadavg())}
    cmd = [sys.executable, __file__, "--child", "--run", name, "--run-dir", str(Path(args.out) / name),
           "--beam-size", str(args.beam_size), "--limit", str(args.limit), "--span-tokens", str(args.span_tokens),
           *(["--threads", str(args.threads)] if args.threads else []),
           *[a for s in settings(name, args) for a in ("--child-set", s)]]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    (Path(args.out) / f"{name}.log").write_text(proc.stderr)
    row["load_after"] = list(os.getloadavg())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {**row, "error": tail[0][:300]}
    return {**row, **json.loads(lines[-1])}


# ---- results ----------------------------------------------------------------------------------------

def _ok(results: dict, name: str) -> dict | None:
    r = results["runs"].get(name)
    return r if r and "error" not in r else None


def _values(run: dict | None, task: str) -> list[float] | None:
    """``task``'s scores in ``run`` (accuracy in percent), or None when the run is missing or has none."""
    if run is None or any(f"{task}_{m}" not in run["scores"] for m in METRICS[task]):
        return None
    return [run["scores"][f"{task}_{m}"] * (100 if m == "accuracy" else 1) for m in METRICS[task]]


def score_cell(results: dict, column: str, task: str) -> str:
    name = run_for(column, task)
    values = _values(_ok(results, name), task)
    if values is None:
        return "failed" if "error" in results["runs"].get(name, {}) else "-"
    return " / ".join(f"{v:.1f}" for v in values)


def gain_cell(results: dict, task: str) -> str:
    """Multi-task pre-trained minus multi-task from scratch, per metric of ``task``."""
    pre, scratch = (_values(_ok(results, name), task) for name in ("multitask_pre", "multitask"))
    if pre is None or scratch is None:
        return "-"
    return " / ".join(f"{a - b:+.1f}" for a, b in zip(pre, scratch))


def _line(text: str, n: int) -> str:
    """``text`` on one line, cut to ``n`` characters (examples in a markdown list)."""
    return " ".join(text.split())[:n]


def _budget(r: dict) -> str:
    minutes = next((s.split("=", 1)[1] for s in reversed(r.get("settings", [])) if s.startswith("train.minutes=")),
                   None)
    return f"{float(minutes):g}" if minutes is not None else "?"


def markdown(results: dict) -> str:
    meta, runs = results.get("meta", {}), results["runs"]
    lines = [
        "# T5: one text-to-text model for four tasks, single-task models, and span-corruption pre-training", "",
        f"torch {meta.get('torch', '?')}, {meta.get('machine', '?')}. Text-to-text runs: the preset "
        "`t5_multitask` (the same model for every run), each trained for its budget of wall-clock minutes "
        "(validation included), then scored on the same test sources of each task by beam search "
        f"(width {meta.get('beam_size', '?')}, {meta.get('limit', '?')} sources per task): sacreBLEU BLEU / chrF "
        "for translation, exact match for part of speech, chrF for definitions.", "",
        "## Test scores per task", "",
        "| task | score | " + " | ".join(COLUMN_NAMES[c] for c in COLUMNS) + " | gain from pre-training |",
        "|---|---|" + "---:|" * (len(COLUMNS) + 1),
    ]
    majority = next((r["scores"]["pos_majority_accuracy"] for r in runs.values()
                     if "error" not in r and "pos_majority_accuracy" in r.get("scores", {})), None)
    for task in TASKS:
        n = next((r["scores"][f"{task}_examples"] for r in runs.values()
                  if "error" not in r and f"{task}_examples" in r.get("scores", {})), None)
        what = " / ".join(METRIC_NAMES[m] for m in METRICS[task])
        lines.append(f"| {task}{f' ({n:,})' if n is not None else ''} | {what} | "
                     + " | ".join(score_cell(results, c, task) for c in COLUMNS) + f" | {gain_cell(results, task)} |")
    lines += ["", "Single-task: the run `single-<task>` (the same preset on that task alone, the same budget). "
              "Gain from pre-training: multi-task pre-trained minus multi-task from scratch (percentage points "
              "for exact match). -: no such run yet."]
    if majority is not None:
        lines += ["", f"Part of speech, always the most frequent training label: {100 * majority:.1f}% of the "
                  "scored test glosses."]
    span = runs.get("span")
    lines += ["", "## Span-corruption pre-training", ""]
    if span is None:
        lines.append("Not run yet.")
    elif "error" in span:
        lines.append(f"Failed: {span['error']}")
    else:
        s, tokens = span["scores"], span.get("span_tokens")
        tokens = f"{tokens:,}" if tokens else "?"
        lines.append(f"Preset `t5_span_english`, a budget of {_budget(span)} minutes: {span['steps']:,} steps in "
                     f"{span['train_minutes']:.1f} minutes of training, {span['parameters']:,} parameters. Held-out "
                     f"targets (sentinels, dropped tokens, eos) of the first {tokens} held-out tokens"
                     f": accuracy {100 * s['target_accuracy']:.1f}%, loss {s['target_loss']:.3f} nats over "
                     f"{s['target_tokens']:,} target tokens.")
        losses = span.get("curves", {}).get("eval_loss")
        if losses:
            lines[-1] += (f" Held-out loss during training: {losses[0][1]:.3f} nats at the first evaluation, "
                          f"{losses[-1][1]:.3f} at the last ({len(losses)} evaluation{'s' * (len(losses) != 1)}).")
        for e in span.get("examples", [])[:2]:
            lines += ["", f"- input: {_line(e['source'], 300)}", f"  - target: {_line(e['references'][0], 200)}",
                      f"  - answer (greedy): {_line(e['answer'], 200)}"]
    lines += ["", "Validation curves and the test scores: `t5.png`.", "", "## How each run was made", "",
              "| run | preset | parameters | steps | training minutes (budget) | threads | load before, after "
              "| peak memory (GiB) | settings |", "|---|---|---:|---:|---:|---:|---|---:|---|"]
    for name in [n for n in RUNS if n in runs] + sorted(set(runs) - set(RUNS)):
        r = runs[name]
        load = f"{r['load_before'][0]:.1f}, {r['load_after'][0]:.1f}" if "load_after" in r else "?"
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | {load} | | |")
            continue
        lines.append(f"| {name} | {r['preset']} | {r['parameters']:,} | {r['steps']:,} | {r['train_minutes']:.1f} "
                     f"({_budget(r)}) | {r['threads']} | {load} | {r['peak_rss_gib']:.1f} | "
                     + ", ".join(f"`{s}`" for s in r["settings"])
                     + (f"; test: beam {r['beam_size']}, {r['limit']} sources per task" if "limit" in r else "")
                     + " |")
    lines.append("")
    made = sorted({(r.get("command", "?"), r.get("commit", "?"), r.get("torch", "?"), r.get("cpu_model", "?"),
                    r.get("cpu_count", "?")) for r in runs.values()})
    for command, commit, torch_version, cpu, count in made:
        names = [n for n, r in runs.items() if (r.get("command", "?"), r.get("commit", "?")) == (command, commit)]
        lines.append(f"- `{command}` at {commit}, torch {torch_version}, {cpu} ({count} CPUs): "
                     + ", ".join(names))
    lines += ["", f"## Examples (up to {EXAMPLES} test sources per task, evenly spread over the scored ones)", ""]
    for task in TASKS:
        shown = [(n, {e["source"]: e for e in r.get("examples", []) if e["task"] == task})
                 for n, r in runs.items() if n != "span" and "error" not in r]
        shown = [(n, by_source) for n, by_source in shown if by_source]
        if not shown:
            continue
        lines += [f"### {task}", ""]
        for source, first in shown[0][1].items():
            lines += [f"- {_line(source, 200)}", f"  - reference: {_line(first['references'][0], 200)}"]
            lines += [f"  - {n}: {_line(by_source[source]['answer'], 200)}" for n, by_source in shown
                      if source in by_source]
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {n: r for n, r in results["runs"].items() if "error" not in r and n != "span"}
    if not runs:
        return
    curves = any(k.startswith("valid_") for r in runs.values() for k in r.get("curves", {}))
    fig, axes = plt.subplots(2 if curves else 1, len(TASKS), figsize=(4.2 * len(TASKS), 7.5 if curves else 3.8),
                             squeeze=False)
    for ax, task in zip(axes[0], TASKS):
        metric = METRICS[task][0]
        for i, column in enumerate(COLUMNS):
            values = _values(runs.get(run_for(column, task)), task)
            if values is not None:
                ax.bar(i, values[0], color=f"C{i}")
                ax.text(i, values[0], f"{values[0]:.1f}", ha="center", va="bottom", fontsize=8)
        if task == "pos":
            base = next((r["scores"]["pos_majority_accuracy"] for r in runs.values()
                         if "pos_majority_accuracy" in r.get("scores", {})), None)
            if base is not None:
                ax.axhline(100 * base, color="grey", linestyle="--", label="most frequent label")
                ax.legend(fontsize=8)
        ax.set_xticks(range(len(COLUMNS)), [COLUMN_NAMES[c].replace(" from", "\nfrom") for c in COLUMNS], fontsize=8)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{task}: test {METRIC_NAMES[metric]}")
        ax.grid(alpha=0.3, axis="y")
    if curves:
        for ax, task in zip(axes[1], TASKS):
            key = f"valid_{task}_{METRICS[task][0]}"
            for i, column in enumerate(COLUMNS):
                r = runs.get(run_for(column, task))
                if r and r.get("curves", {}).get(key):
                    xs, ys = zip(*r["curves"][key])
                    scale = 100 if METRICS[task][0] == "accuracy" else 1
                    ax.plot([x / 60 for x in xs], [scale * y for y in ys], marker="o", markersize=3, color=f"C{i}",
                            label=COLUMN_NAMES[column])
            ax.set_title(f"{task}: validation {METRIC_NAMES[METRICS[task][0]]} (greedy)")
            ax.set_xlabel("training time (minutes)")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--minutes", type=float, default=25.0, help="training budget of each text-to-text run")
    p.add_argument("--pretrain-minutes", type=float, default=25.0, help="training budget of the span run")
    p.add_argument("--set", action="append", default=[], metavar="RUN:SECTION.KEY=VALUE",
                   help="override a preset value for one run (or text2text: every run of t5_multitask; all), "
                        "e.g. text2text:model.dropout=0.2")
    p.add_argument("--valid-sentences", type=int, default=50,
                   help="validation sources of each task scored (greedy) at each evaluation")
    p.add_argument("--limit", type=int, default=500, help="test sources scored per task")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--span-tokens", type=int, default=50000, help="held-out tokens the span run is scored on")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: torch's choice); runs side by side use one each")
    p.add_argument("--out", default="runs/t5", help="the run folders")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--replot", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--child-set", dest="sets", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    names = [*RUNS, *GROUPS]
    for s in args.set:
        if ":" not in s or s.split(":", 1)[0] not in names:
            p.error(f"--set {s!r}: expected RUN:SECTION.KEY=VALUE with RUN one of {', '.join(names)}")
    for flag, value in (("--minutes", args.minutes), ("--pretrain-minutes", args.pretrain_minutes)):
        if not value > 0:
            p.error(f"{flag} must be a positive number of minutes, got {value:g}")
    for flag, value in (("--limit", args.limit), ("--beam-size", args.beam_size), ("--span-tokens", args.span_tokens)):
        if value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    out = Path(args.results).with_suffix(".json")
    if args.replot and not out.exists():
        p.error(f"--replot: {out} does not exist yet")
    todo = [name for name in RUNS if name in args.runs]  # the span run first: multitask_pre starts from it
    if not args.replot and "multitask_pre" in todo and "span" not in todo and not span_ready(args.out):
        p.error(f"multitask_pre starts from the span-corruption run, but {span_folder(args.out)} holds none (no "
                "checkpoint): add span to --runs, or give the --out that holds it")
    results = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    if not args.replot:
        import torch

        from attnkit.bench import cpu_model, record_runs

        results["meta"] = {"torch": torch.__version__, "python": platform.python_version(),
                           "machine": f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} CPUs",
                           "minutes": args.minutes, "pretrain_minutes": args.pretrain_minutes,
                           "limit": args.limit, "beam_size": args.beam_size}
        mine = {}  # the runs made by this process
        for name in todo:
            r = run_one(name, args)
            mine[name] = r
            shown = r.get("error") or ", ".join(f"{k} {v:.3g}" for k, v in r["scores"].items()
                                                if not k.endswith("_examples"))
            print(f"{name} ({r.get('steps', '?')} steps): {shown}", flush=True)
            record_runs(out, results, mine)  # after every run, others' runs kept
        if mine:
            record_runs(out, results, mine)  # the runs others recorded since, for the figures
    text = markdown(results)
    out.with_suffix(".md").write_text(text)
    plot(results, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
