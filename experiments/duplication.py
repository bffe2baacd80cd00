"""The Reformer paper's duplication table (section 5, Table 2), reproduced with attnkit's presets.

    python experiments/duplication.py                    # 5 models x 8 minutes on this CPU, then the grid
    python experiments/duplication.py --minutes 2 --length 256 --out runs/dup-small

Trains one-layer ReformerLMs on ``0 w 0 w`` (|w| = 511, 127 symbols) with full shared-QK attention,
LSH-1, LSH-2, LSH-4 and local attention (the same chunk width, one bucket), each for the same wall-clock
budget, then evaluates every model with every attention setting on held-out sequences (accuracy on the
second copy). Writes experiments/results/duplication.{json,md} with the command, commit, versions, load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from attnkit.bench import git_commit
from attnkit.runs import RunConfig, evaluate_run, load_run, resume_run, train_run

PAPER = {  # Table 2 of the paper: trained with (rows) x evaluated with (columns), accuracy in %
    "full": {"full": 100, "lsh-8": 94.8, "lsh-4": 92.5, "lsh-2": 76.9, "lsh-1": 52.5},
    "lsh-4": {"full": 0.8, "lsh-8": 100, "lsh-4": 99.9, "lsh-2": 99.4, "lsh-1": 91.9},
    "lsh-2": {"full": 0.8, "lsh-8": 100, "lsh-4": 99.9, "lsh-2": 98.1, "lsh-1": 86.8},
    "lsh-1": {"full": 0.8, "lsh-8": 99.9, "lsh-4": 99.6, "lsh-2": 94.8, "lsh-1": 77.9},
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=8.0, help="training budget per model")
    p.add_argument("--length", type=int, default=1024, help="sequence length (|w| = length / 2 - 1)")
    p.add_argument("--chunk", type=int, default=64, help="LSH chunk width (bucket_size)")
    p.add_argument("--batch", type=int, default=16, help="sequences per training step")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice); rows run side by side use one each")
    p.add_argument("--rows", nargs="+", default=["full", "lsh-1", "lsh-2", "lsh-4", "local"])
    p.add_argument("--out", default="runs/duplication")
    p.add_argument("--results", default=str(Path(__file__).with_name("results") / "duplication"))
    p.add_argument("--replot", action="store_true", help="only redraw the table and plot from the results JSON")
    p.add_argument("--resume", action="store_true",
                   help="train the rows' existing runs --minutes more (from their last checkpoint) instead of anew")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.replot:
        results = json.loads(Path(args.results).with_suffix(".json").read_text())
        Path(args.results).with_suffix(".md").write_text(markdown(results))
        plot(results, Path(args.results).with_suffix(".png"))
        return results

    whole = args.length  # a chunk as long as the sequence: one chunk, full shared-QK attention
    train_sets = {"full": [f"model.bucket_size={whole}", "model.n_hashes=1"], "local": ["model.n_buckets=1"],
                  **{f"lsh-{k}": [f"model.n_hashes={k}"] for k in (1, 2, 4)}}
    eval_sets = {"full": dict(bucket_size=whole, n_hashes=1),
                 **{f"lsh-{k}": dict(bucket_size=args.chunk, n_hashes=k) for k in (8, 4, 2, 1)},
                 "local": dict(bucket_size=args.chunk, n_buckets=1, n_hashes=1)}
    base = [f"data.context={args.length}", f"model.bucket_size={args.chunk}", f"train.minutes={args.minutes}",
            f"data.batch_size={args.batch}", f"data.eval_batches={max(1, 64 // args.batch)}",  # 64 held-out sequences
            "train.progress=false", "train.checkpoint_every=100"]
    out = Path(args.results)
    # Rows already measured (possibly by other commands, at other budgets) stay; the rows run now replace theirs.
    results = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    if results.get("meta", {}).get("length", args.length) != args.length:
        raise SystemExit(f"{out.with_suffix('.json')} holds length {results['meta']['length']}: pass another --results")
    trained, grid = results.get("trained", {}), results.get("accuracy", {})
    old = results.get("meta", {})
    for t in trained.values():  # rows from before rows were recorded one by one carry the run's meta
        t.setdefault("command", old.get("command"))
        t.setdefault("commit", old.get("commit"))
        t.setdefault("load_average", old.get("load_average"))
        t.setdefault("budget_minutes", old.get("minutes_per_model"))
    commit = git_commit(Path(__file__).parent)
    for row in args.rows:
        started = time.time()
        log = lambda s: print(s, flush=True)  # noqa: E731
        if args.resume:  # train the row's run args.minutes more, from its last checkpoint
            result = resume_run(Path(args.out) / row, minutes=args.minutes, log=log)
            budget = load_run(result.folder.path).config.train.minutes  # the time trained before + args.minutes
        else:
            config = RunConfig.load("duplication_lsh", base + train_sets[row])
            result = train_run(config, Path(args.out) / row, overwrite=True, log=log)
            budget = args.minutes
        records = result.folder.read_metrics()
        trained[row] = {"steps": result.summary["step"], "minutes": result.summary["elapsed_s"] / 60,
                        "budget_minutes": budget, "commit": commit, "batch": args.batch,
                        "threads": torch.get_num_threads(),
                        "command": " ".join([Path(sys.executable).name, *sys.argv]),
                        "load_average": os.getloadavg(),  # at the end of its training
                        "curve": [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]}
        run = load_run(result.folder.path)
        grid[row] = {}
        for col, settings in eval_sets.items():
            if row == "local" and col.startswith("lsh"):
                continue  # its layers keep one bucket: evaluate it with local and full attention only
            grid[row][col] = 100 * evaluate_run(run, **settings).metrics["accuracy"]
        print(f"{row}: {trained[row]['steps']} steps; " + ", ".join(f"{c} {a:.1f}%" for c, a in grid[row].items()),
              flush=True)
        trained[row]["wall_minutes"] = (time.time() - started) / 60  # training and the evaluations
    meta = {
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "commit": commit,
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "length": args.length, "chunk": args.chunk,
    }
    if out.with_suffix(".json").exists():  # rows finished meanwhile by another process stay
        latest = json.loads(out.with_suffix(".json").read_text())
        trained = {**latest.get("trained", {}), **{r: trained[r] for r in args.rows}}
        grid = {**latest.get("accuracy", {}), **{r: grid[r] for r in args.rows}}
    order = [r for r in ("full", "lsh-1", "lsh-2", "lsh-4", "local") if r in grid]
    results = {"meta": meta, "trained": {r: trained[r] for r in order}, "accuracy": {r: grid[r] for r in order},
               "paper": PAPER}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(markdown(results))
    plot(results, out.with_suffix(".png"))
    print(markdown(results))
    return results


def plot(results: dict, path: Path) -> None:
    """Held-out loss on the second copy against training steps, one curve per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row, t in results["trained"].items():
        if t["curve"]:
            budget = t.get("budget_minutes", t["minutes"])
            ax.plot(*zip(*t["curve"]), marker="o", markersize=3, label=f"{row} ({t['steps']} steps, {budget:.3g} min)")
    ax.axhline(math.log(127), color="grey", linestyle=":", label="uniform guess (ln 127)")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out loss on the second copy (nats)")
    ax.set_title(f"Duplication task, length {results['meta']['length']}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def markdown(results: dict) -> str:
    meta, grid, trained = results["meta"], results["accuracy"], results["trained"]
    cols = ["full", "lsh-8", "lsh-4", "lsh-2", "lsh-1", "local"]
    lines = [
        "# Duplication task (Reformer paper, Table 2)", "",
        f"torch {meta['torch']}, {meta['cpus']} CPUs ({meta['threads']} threads). Length {meta['length']} "
        f"(|w| = {meta['length'] // 2 - 1}), chunk {meta['chunk']}, one layer, d_model = d_ff = 256, 4 heads, learned "
        "positions, Adam 1e-3, each model trained for a wall-clock budget on this CPU (batch and threads per row "
        "below). Accuracy (%) on the "
        "second copy of 64 held-out sequences; attnkit (paper in brackets"
        + (", measured at length 1,024)." if meta["length"] != 1024 else ")."), "",
        "| trained \\ evaluated | budget (min) | steps | " + " | ".join(cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for row, accs in grid.items():
        cells = []
        for c in cols:
            ours = f"{accs[c]:.1f}" if c in accs else "-"
            paper = results["paper"].get(row, {}).get(c)
            cells.append(ours + (f" ({paper})" if paper is not None else ""))
        t = trained[row]
        lines.append(f"| {row} | {t.get('budget_minutes', meta.get('minutes_per_model', 0)):.3g} | {t['steps']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Full = one chunk spanning the sequence (exact shared-QK attention); local = one bucket, so each "
              "chunk attends to itself and the chunk before (a window of two chunks). A random guess scores "
              "0.8% (1/127). Held-out loss against steps: `duplication.png`.", "", "How each row was made:", ""]
    for row, t in trained.items():
        load = ", ".join(f"{x:.1f}" for x in t.get("load_average", meta.get("load_average")))
        command, commit = t.get("command", meta.get("command")), t.get("commit", meta.get("commit"))
        threads = t.get("threads", meta["threads"])
        lines.append(f"- {row}: `{command}` at commit {commit}, {t['minutes']:.1f} min of training, batch "
                     f"{t.get('batch', 16)}, {threads} threads, load average {load} at its end")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
