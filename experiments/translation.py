"""Translation on real data: the encoder-decoder Transformer against the RNN with attention (GRU,
additive attention), the same tokenizer and wall-clock budget, on three parallel corpora.

    python experiments/translation.py --minutes 30                       # every corpus, both models
    python experiments/translation.py --minutes 30 --threads 1 --models transformer &   # side by side,
    python experiments/translation.py --minutes 30 --threads 1 --models rnn             # one core each
    python experiments/translation.py --corpora es-en-bible --set transformer:model.dropout=0.3
    python experiments/translation.py --replot

Each run trains a preset (``de_en_transformer`` or ``de_en_rnn``) with ``data.corpus`` set to the
training corpus, in its own process (its peak memory its own), logging BLEU on the first
``--valid-sentences`` validation sources at each evaluation (BLEU against training time), then scores
each test set with beam search: German-English trains on the union ``de-en-all`` (Ding sentence pairs and
package descriptions) and is scored on each member's own test set. Settings are the presets' plus the
``--set MODEL:SECTION.KEY=VALUE`` overrides, which the results record; choose them on the validation
curves, never on the test figures. Example translations follow one rule: every 100th test source.
Runs already in the results are kept unless run again.
Writes experiments/results/translation.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PRESETS = {"transformer": "de_en_transformer", "rnn": "de_en_rnn"}
CORPORA = {  # training corpus -> the test sets its models are scored on
    "de-en-all": ["de-en", "de-en-descriptions"],
    "fr-en-descriptions": ["fr-en-descriptions"],
    "es-en-bible": ["es-en-bible"],
}
EVERY = 100  # example translations: every 100th test source
RESULTS = Path(__file__).with_name("results") / "translation"
RECIPES = RESULTS.with_name("translation_recipe")  # the validation runs the presets' settings were chosen on
TIE = 0.02  # held-out losses closer than this (nats per token) count as equal when choosing settings
SHARED = ("data.corpus=", "train.minutes=", "train.progress=", "data.valid_bleu_sentences=")  # set for every run


def child(args) -> None:
    """Train and score one (model, corpus) run; print one JSON line."""
    import torch

    from attnkit.data import pair_splits, references_by_source
    from attnkit.runs import RunConfig, evaluate_run, load_run, train_run

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sets = [f"data.corpus={args.corpus}", f"train.minutes={args.minutes}", "train.progress=false",
            f"data.valid_bleu_sentences={args.valid_sentences}", *args.sets]
    config = RunConfig.load(PRESETS[args.model], sets)
    started = time.time()
    result = train_run(config, args.run_dir, overwrite=True, log=lambda s: print(s, file=sys.stderr, flush=True))
    run = load_run(args.run_dir)
    records = result.folder.read_metrics()
    # The length penalty of beam search, chosen per run on the first validation sources (the highest BLEU;
    # the smallest penalty among equals), never on the test sets.
    valid_bleu = {}
    for lp in args.length_penalties:
        ev = evaluate_run(run, beam_size=args.beam_size, split="validation", limit=args.valid_sentences,
                          length_penalty=lp, show=0)
        valid_bleu[lp] = ev.metrics["bleu"]
        print(f"validation, length penalty {lp:g}: BLEU {ev.metrics['bleu']:.2f}, length ratio "
              f"{ev.metrics['length_ratio']:.2f}", file=sys.stderr, flush=True)
    length_penalty = max(sorted(valid_bleu), key=lambda lp: valid_bleu[lp])
    tests = {}
    for test in CORPORA[args.corpus]:
        n = min(len(references_by_source(pair_splits(test)["test"])), args.limit or 10**9)
        ev = evaluate_run(run, beam_size=args.beam_size, test_corpus=test, limit=args.limit, show=max(1, n // EVERY),
                          length_penalty=length_penalty)
        tests[test] = {"bleu": ev.metrics["bleu"], "chrf": ev.metrics["chrf"], "sentences": ev.metrics["sentences"],
                       "length_ratio": ev.metrics["length_ratio"], "examples": ev.examples}
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    print(json.dumps({
        "model": args.model, "corpus": args.corpus, "settings": sets,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "steps": result.summary["step"], "train_minutes": result.summary["elapsed_s"] / 60,
        "target_tokens_per_s": statistics.median(speeds) if speeds else None,
        "threads": torch.get_num_threads(), "tests": tests, "length_penalty": length_penalty,
        "valid_bleu_by_length_penalty": list(valid_bleu.items()),
        "valid_curve": [(r["elapsed_s"], r["valid_bleu"]) for r in records if "valid_bleu" in r],
        "valid_loss_curve": [(r["elapsed_s"], r["eval_loss"]) for r in records if "eval_loss" in r],
        "wall_minutes": (time.time() - started) / 60,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }))


def run_one(model: str, corpus: str, args) -> dict:
    mine = [s.split(":", 1)[1] for s in args.set if s.split(":", 1)[0] == model]
    cmd = [sys.executable, __file__, "--child", "--model", model, "--corpus", corpus, "--minutes", str(args.minutes),
           "--valid-sentences", str(args.valid_sentences), "--beam-size", str(args.beam_size),
           "--length-penalties", *map(str, args.length_penalties),
           *(["--limit", str(args.limit)] if args.limit else []),
           *(["--threads", str(args.threads)] if args.threads else []),
           "--run-dir", str(Path(args.out) / f"{model}-{corpus}"), *[a for s in mine for a in ("--child-set", s)]]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    load = os.getloadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"model": model, "corpus": corpus, "error": tail[0][:300], "load_before": load}
    return {**json.loads(lines[-1]), "load_before": load, "load_after": os.getloadavg()}


def markdown(results: dict) -> str:
    meta, runs = results["meta"], results["runs"]
    lines = [
        "# Translation: the Transformer against the RNN with attention", "",
        f"torch {meta['torch']}, {meta['machine']}. Each run: {meta['minutes']:g} minutes of training on this CPU "
        "(periodic validation included), then beam search (width 4) on each test set, scored by sacreBLEU "
        "against all references of a source, with the length penalty that gave the run's highest BLEU on its "
        "first validation sources (runs without one used 1). Length ratio: hypothesis words over the closest "
        "references' (below 1, BLEU's brevity penalty applies). Settings: the preset plus the overrides "
        "listed per run.", "",
        "| training corpus | test set | model | parameters | steps | target tokens/s | length penalty | BLEU | chrF "
        "| length ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ordered = sorted(runs.values(), key=lambda r: (r["corpus"], r["model"]))
    for r in ordered:
        if "error" in r:
            lines.append(f"| {r['corpus']} | - | {r['model']} | - | - | - | - | failed: {r['error']} | - | - |")
            continue
        for test, t in r["tests"].items():
            speed = f"{r['target_tokens_per_s']:,.0f}" if r["target_tokens_per_s"] else "-"
            ratio = f"{t['length_ratio']:.2f}" if "length_ratio" in t else "-"
            lines.append(f"| {r['corpus']} | {test} ({t['sentences']:,}) | {r['model']} | {r['parameters']:,} | "
                         f"{r['steps']:,} | {speed} | {r.get('length_penalty', 1.0):g} | {t['bleu']:.1f} | "
                         f"{t['chrf']:.1f} | {ratio} |")
    lines += ["", "Validation BLEU against training time: `translation.png`.", ""]
    tried = [r for r in ordered if r.get("valid_bleu_by_length_penalty")]
    if tried:
        lines += ["Validation BLEU (beam search, first validation sources) by length penalty, the choice in bold:", ""]
        for r in tried:
            shown = [f"**{lp:g}: {b:.2f}**" if lp == r["length_penalty"] else f"{lp:g}: {b:.2f}"
                     for lp, b in r["valid_bleu_by_length_penalty"]]
            lines.append(f"- {r['model']} on {r['corpus']}: {', '.join(shown)}")
        lines.append("")
    lines += ["## How each run was made", ""]
    for r in ordered:
        lines.append(f"- {r['model']} on {r['corpus']}: `{r['command']}` at {r['commit']}, "
                     f"{r.get('threads', '?')} threads, load {r['load_before'][0]:.1f} before; settings "
                     f"{', '.join(r.get('settings', [])) or '-'}")
    lines += ["", *recipe_lines(RECIPES), f"## Example translations (every {EVERY}th test source)", ""]
    by_test: dict[str, dict[str, list]] = {}
    for r in ordered:
        for test, t in r.get("tests", {}).items():
            by_test.setdefault(test, {})[r["model"]] = t["examples"]
    for test, models in by_test.items():
        lines += [f"### {test}", ""]
        first = next(iter(models.values()))
        for i, (source, _, refs) in enumerate(first[:8]):
            lines.append(f"- source: {source}")
            lines.append(f"  - reference: {refs[0]}")
            for model, examples in models.items():
                if i < len(examples) and examples[i][0] == source:
                    lines.append(f"  - {model}: {examples[i][1]}")
        lines.append("")
    return "\n".join(lines)


def recipe_lines(folder: Path) -> list[str]:
    """The settings' choice, from the candidates' results in ``folder`` (one JSON per candidate, written by
    this script with ``--results``): each candidate's final held-out loss and validation BLEU (greedy);
    per model and training corpus, the lowest loss was chosen (losses on two corpora do not compare), the
    smallest model among those within ``TIE`` of it (a difference the run-to-run noise can make)."""
    candidates = [(path.stem, r) for path in sorted(folder.glob("*.json"))
                  for r in json.loads(path.read_text())["runs"].values()
                  if "error" not in r and r.get("valid_loss_curve")]
    if not candidates:
        return []
    def final_loss(c):
        return c[1]["valid_loss_curve"][-1][1]

    chosen = {}
    for g in {(r["model"], r["corpus"]) for _, r in candidates}:
        group = [c for c in candidates if (c[1]["model"], c[1]["corpus"]) == g]
        best = min(map(final_loss, group))
        tied = [c for c in group if final_loss(c) <= best + TIE]
        chosen[g] = min(tied, key=lambda c: (c[1]["parameters"], final_loss(c)))[0]
    lines = ["## How the settings were chosen", "",
             "Validation runs on the training corpus (held-out loss on its validation pairs, BLEU of greedy "
             "translations of its first validation sources), never the test sets; per model and training corpus "
             f"the lowest final loss was chosen, or the smallest model within {TIE} nats of it (the presets hold the "
             "choice on de-en-all). Settings are overrides of the preset at the commit named.", "",
             "| candidate | model | training corpus | minutes | parameters | steps | held-out loss | validation BLEU "
             "| settings | commit | chosen |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---|---|"]
    for name, r in sorted(candidates, key=lambda c: (c[1]["model"], c[0])):
        own = [s for s in r["settings"] if not s.startswith(SHARED)]
        mark = "yes" if chosen[r["model"], r["corpus"]] == name else ""
        lines.append(f"| {name} | {r['model']} | {r['corpus']} | {r['train_minutes']:.0f} | {r['parameters']:,} | "
                     f"{r['steps']:,} | {r['valid_loss_curve'][-1][1]:.3f} | {r['valid_curve'][-1][1]:.2f} | "
                     f"{', '.join(own) or '-'} | {r['commit']} | {mark} |")
    return [*lines, ""]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = sorted({r["corpus"] for r in results["runs"].values() if "error" not in r})
    if not corpora:
        return
    fig, axes = plt.subplots(1, len(corpora), figsize=(5 * len(corpora), 4), squeeze=False)
    for ax, corpus in zip(axes[0], corpora):
        for r in results["runs"].values():
            if r["corpus"] == corpus and "error" not in r and r["valid_curve"]:
                xs, ys = zip(*r["valid_curve"])
                ax.plot([x / 60 for x in xs], ys, marker="o", markersize=3,
                        label=f"{r['model']} ({r['parameters'] / 1e6:.1f}M)")
        ax.set_title(corpus)
        ax.set_xlabel("training time (minutes)")
        ax.set_ylabel("validation BLEU (greedy)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    p.add_argument("--models", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--minutes", type=float, default=30.0, help="training budget per run")
    p.add_argument("--set", action="append", default=[], metavar="MODEL:SECTION.KEY=VALUE",
                   help="override a preset value for one model, e.g. transformer:model.dropout=0.3")
    p.add_argument("--valid-sentences", type=int, default=200, help="validation sources scored at each evaluation")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--length-penalties", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0],
                   help="beam search's length penalties tried on the validation sources; each run uses its best")
    p.add_argument("--limit", type=int, default=None, help="score the first N test sources only (quick checks)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: torch's choice); runs side by side use one each")
    p.add_argument("--out", default="runs/translation")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--replot", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--child-set", dest="sets", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    for s in args.set:
        if s.split(":", 1)[0] not in PRESETS or ":" not in s:
            p.error(f"--set {s!r}: expected MODEL:SECTION.KEY=VALUE with MODEL one of {', '.join(PRESETS)}")
    out = Path(args.results)
    results = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {"runs": {}}
    if not args.replot:
        import torch

        from attnkit.bench import git_commit, record_runs

        results["meta"] = {"torch": torch.__version__, "python": platform.python_version(),
                           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "minutes": args.minutes}
        commit = git_commit(Path(__file__).parent)
        mine = {}  # the runs made by this process
        for corpus in args.corpora:
            for model in args.models:
                r = run_one(model, corpus, args)
                r.update(command=" ".join(["python", *sys.argv]), commit=commit)
                mine[f"{model}-{corpus}"] = r
                shown = r.get("error") or ", ".join(f"{t} BLEU {v['bleu']:.1f}" for t, v in r["tests"].items())
                print(f"{model} on {corpus}: {shown}", flush=True)
                record_runs(out.with_suffix(".json"), results, mine)  # after every run, others' runs kept
    out.with_suffix(".md").write_text(markdown(results))
    plot(results, out.with_suffix(".png"))
    print(markdown(results))


if __name__ == "__main__":
    main()
