"""Long context that helps: byte-level language models of the King James Bible at growing contexts,
LSH attention (ReformerLM) against full attention (TransformerLM), the same wall-clock budget per run.

    python experiments/long_context.py                          # 1,024 .. 65,536 bytes, 10 minutes a run
    python experiments/long_context.py --contexts 1024 4096 --minutes 5 --models reformer
    python experiments/long_context.py --replot

Each run trains a preset (``kjv_byte_reformer`` or ``kjv_byte_transformer``: 4 layers, d_model 256,
about 3M parameters each) with ``data.context`` set and the batch set to keep ``--tokens-per-batch``
tokens per step (one sequence per step beyond that context), the learning-rate warm-up spanning
``--warmup-tokens`` at every context (a budget of minutes on this CPU is a few hundred steps at most),
in its own process so that its peak memory (peak RSS, GiB)
is its own. Whole books are held out (Joshua and Romans): bits per byte on them, each model reading
windows of its own context.
A run that fails (out of memory) is recorded with its error; one too slow to take more than a few
steps still reports its time per step. Runs already in the results are kept unless run again.
Writes experiments/results/long_context.{json,md,png}.
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

PRESETS = {"reformer": "kjv_byte_reformer", "transformer": "kjv_byte_transformer"}
RESULTS = Path(__file__).with_name("results") / "long_context"


def child(args) -> None:
    """Train and evaluate one (model, context) run; print one JSON line."""
    import torch

    from attnkit.runs import RunConfig, evaluate_run, load_run, train_run

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batch = max(1, args.tokens_per_batch // args.context)
    warmup = max(1, args.warmup_tokens // (batch * args.context))  # over the same tokens at every context
    sets = [f"data.context={args.context}", f"data.batch_size={batch}", f"train.minutes={args.minutes}",
            f"train.warmup_steps={warmup}",
            "train.max_steps=1000000", "train.progress=false", "train.eval_every=1000000",
            "train.checkpoint_every=1000000", "data.eval_batches=1"]
    if args.model == "reformer":  # chunk the feed-forward and the loss more as sequences grow
        sets += [f"model.ff_chunks={max(1, args.context // 4096)}", f"model.loss_chunks={max(1, args.context // 4096)}"]
    config = RunConfig.load(PRESETS[args.model], sets)
    started = time.time()
    result = train_run(config, args.run_dir, overwrite=True, log=lambda s: print(s, file=sys.stderr, flush=True))
    trained_s = time.time() - started
    steps = result.summary["step"]
    score = evaluate_run(load_run(args.run_dir), max_tokens=args.eval_bytes)
    print(json.dumps({
        "model": args.model, "context": args.context, "batch_size": batch, "steps": steps, "warmup_steps": warmup,
        "threads": torch.get_num_threads(),
        "train_minutes": result.summary["elapsed_s"] / 60, "s_per_step": result.summary["elapsed_s"] / max(steps, 1),
        "bits_per_byte": score.metrics["bits_per_token"], "eval_bytes": score.metrics["tokens"],
        "wall_minutes": (time.time() - started) / 60, "train_wall_minutes": trained_s / 60,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "curve": [(r["step"], r["loss"]) for r in result.folder.read_metrics() if "loss" in r],
    }))


def run_one(model: str, context: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", model, "--context", str(context),
           "--minutes", str(args.minutes), "--tokens-per-batch", str(args.tokens_per_batch),
           "--eval-bytes", str(args.eval_bytes), "--warmup-tokens", str(args.warmup_tokens),
           *(["--threads", str(args.threads)] if args.threads else []),
           "--run-dir", str(Path(args.out) / f"{model}-{context}")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    load = os.getloadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"model": model, "context": context, "error": tail[0][:300], "load_before": load}
    return {**json.loads(lines[-1]), "load_before": load, "load_after": os.getloadavg()}


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# Long context: LSH attention against full attention on KJV bytes", "",
        f"torch {meta['torch']}, {meta['machine']}. Each run: {meta['minutes']:g} minutes of training on this CPU, "
        f"{meta['tokens_per_batch']:,} tokens per step (batch = tokens / context, at least 1; warm-up over the "
        f"first {meta.get('warmup_tokens', 819_200):,} tokens), Adam 1e-3; held-out bits per "
        "byte on whole books (Joshua, Romans), each model reading windows of its own context. ReformerLM: "
        "`kjv_byte_reformer` (LSH, 4 hashes, chunks of 64, reversible, axial positions); TransformerLM: "
        "`kjv_byte_transformer` (full causal attention through SDPA, rotary positions). Peak memory: peak RSS of "
        "the run's process in GiB (training and evaluation).", "",
        "| context | model | steps | s / step | held-out bits per byte | peak RSS (GiB) | command, commit, load |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in sorted(results["runs"].values(), key=lambda r: (r["context"], r["model"])):
        how = f"`{r['command']}` at {r['commit']}, {r.get('threads', '?')} threads, load {r['load_before'][0]:.1f}"
        if "error" in r:
            lines.append(f"| {r['context']:,} | {r['model']} | - | - | failed: {r['error']} | - | {how} |")
            continue
        lines.append(f"| {r['context']:,} | {r['model']} | {r['steps']:,} | {r['s_per_step']:.2f} | "
                     f"{r['bits_per_byte']:.3f} | {r['peak_rss_gib']:.2f} | {how} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model in PRESETS:
        runs = sorted((r for r in results["runs"].values() if r["model"] == model and "error" not in r),
                      key=lambda r: r["context"])
        if runs:
            xs = [r["context"] for r in runs]
            ax1.plot(xs, [r["bits_per_byte"] for r in runs], marker="o", label=model)
            ax2.plot(xs, [r["peak_rss_gib"] for r in runs], marker="o", label=model)
    for ax, label in ((ax1, "held-out bits per byte"), (ax2, "peak RSS (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (bytes)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.set_title(f"{results['meta']['minutes']:g} minutes of training per run")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    p.add_argument("--models", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per run")
    p.add_argument("--tokens-per-batch", type=int, default=8192)
    p.add_argument("--warmup-tokens", type=int, default=81_920,
                   help="learning-rate warm-up over this many training tokens (10 steps of 8,192)")
    p.add_argument("--eval-bytes", type=int, default=150_000, help="held-out bytes scored (the start of the books)")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per run, training and evaluation")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: torch's choice); runs side by side use one each")
    p.add_argument("--out", default="runs/long_context")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--replot", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--context", type=int, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    out = Path(args.results)
    results = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {"runs": {}}
    if not args.replot:
        import torch

        from attnkit.bench import git_commit, record_runs

        results["meta"] = {"torch": torch.__version__, "python": platform.python_version(),
                           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads",
                           "minutes": args.minutes, "tokens_per_batch": args.tokens_per_batch,
                           "warmup_tokens": args.warmup_tokens}
        commit = git_commit(Path(__file__).parent)
        mine = {}  # the runs made by this process
        for context in args.contexts:
            for model in args.models:
                r = run_one(model, context, args)
                r.update(command=" ".join(["python", *sys.argv]), commit=commit)
                mine[f"{model}-{context}"] = r
                shown = r.get("error") or (f"{r['steps']} steps, {r['bits_per_byte']:.3f} bits/byte, "
                                           f"{r['peak_rss_gib']:.2f} GiB")
                print(f"{model} at {context:,}: {shown}", flush=True)
                record_runs(out.with_suffix(".json"), results, mine)  # after every run, others' runs kept
    out.with_suffix(".md").write_text(markdown(results))
    plot(results, out.with_suffix(".png"))
    print(markdown(results))


if __name__ == "__main__":
    main()
