"""Training-step time of the duplication model (the `duplication_lsh` preset) with LSH against full attention.

The preset's one-layer ReformerLM (d_model = d_ff = 256, 4 heads, learned positions) with its LSH-4 attention
(chunks of 64) and with full shared-QK attention (one chunk as long as the sequence, the table's "full" row),
at short lengths: one Adam step (forward, summed loss over the second copy, backward, update) on a batch of
``0 w 0 w`` sequences. The two models alternate ``--rounds`` times in one process, each round timing
``--steps`` steps after a warm-up, so drift of the machine's speed reaches both alike.

    python benchmarks/duplication_step.py                         # 128, 256, 512 tokens, batch 16
    python benchmarks/duplication_step.py --lengths 1024 --batch 4

Writes benchmarks/results/duplication_step.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from attnkit.bench import provenance, write_results
from attnkit.runs import RunConfig
from attnkit.runs.ops import build_model, build_tokenizer, resolve_model_config

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("lsh-4", "full")


def build(length: int, model: str) -> torch.nn.Module:
    """The preset's model at ``length`` tokens: LSH-4 in chunks of 64, or one chunk spanning the sequence."""
    sets = [f"data.context={length}"] + ([f"model.bucket_size={length}", "model.n_hashes=1"] if model == "full" else [])
    config = RunConfig.load("duplication_lsh", sets)
    return build_model(config, resolve_model_config(config, build_tokenizer(config))).train()


def batch(length: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``0 w 0 w`` sequences (w from symbols 1..127) and their targets: the next token, on the second copy only."""
    w = torch.randint(1, 128, (size, length // 2 - 1), generator=generator)
    zero = torch.zeros(size, 1, dtype=torch.long)
    seq = torch.cat([zero, w, zero, w], dim=1)  # (B, length)
    targets = torch.full_like(seq, -100)
    targets[:, length // 2 : -1] = seq[:, length // 2 + 1 :]
    return seq, targets


def time_steps(model: torch.nn.Module, length: int, size: int, steps: int, warmup: int) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + steps):
        tokens, targets = batch(length, size, g)
        start = time.perf_counter()
        loss = model(tokens, targets=targets).sum
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# Duplication model: training-step time, LSH-4 against full attention",
        "",
        f"`{meta['command']}`",
        "",
        f"Commit {meta['commit']}; Python {meta['python']}, torch {meta['torch']}; {meta['cpu_model']}, "
        f"{meta['cpu_count']} CPUs, {meta['threads']} torch threads; load average (1/5/15 min) "
        f"{' / '.join(f'{x:.2f}' for x in meta['load_before'])} before, "
        f"{' / '.join(f'{x:.2f}' for x in meta['load_after'])} after.",
        "",
        f"The `duplication_lsh` preset's model, one Adam step on a batch of {meta['batch']}; the two models "
        f"alternate {meta['rounds']} times, {meta['steps']} timed steps each after a warm-up. Time: median over "
        "all timed steps (min-max); ratio: LSH-4 over full, median of the rounds' ratios (min-max).",
        "",
        "| tokens | LSH-4 (s) | full (s) | LSH-4 / full |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lsh, full, ratios = r["lsh-4"], r["full"], r["ratios"]
        lines.append(
            f"| {r['length']:,} | {statistics.median(lsh):.3g} ({min(lsh):.3g}-{max(lsh):.3g}) "
            f"| {statistics.median(full):.3g} ({min(full):.3g}-{max(full):.3g}) "
            f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model and round")
    p.add_argument("--rounds", type=int, default=3, help="times the two models alternate")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=str(RESULTS / "duplication_step"))
    args = p.parse_args(argv)
    for name in ("lengths", "batch", "steps", "rounds"):
        values = getattr(args, name)
        if any(v < 1 for v in (values if isinstance(values, list) else [values])):
            raise SystemExit(f"--{name} must be positive, got {values}")
    if any(n % 2 for n in args.lengths):
        raise SystemExit(f"--lengths must be even (two copies of 0 w), got {args.lengths}")
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {**provenance(__file__, sys.argv[1:] if argv is None else argv), "threads": torch.get_num_threads(),
            "batch": args.batch, "steps": args.steps, "rounds": args.rounds}
    rows = []
    for length in args.lengths:
        models = {m: build(length, m) for m in MODELS}
        row = {"length": length, **{m: [] for m in MODELS}, "ratios": []}
        for _ in range(args.rounds):
            medians = {}
            for m in MODELS:
                times = time_steps(models[m], length, args.batch, args.steps, warmup=1)
                row[m] += times
                medians[m] = statistics.median(times)
            row["ratios"].append(medians["lsh-4"] / medians["full"])
        print(f"{length:>6,} tokens: LSH-4 {statistics.median(row['lsh-4']):.3g} s, full "
              f"{statistics.median(row['full']):.3g} s per step", flush=True)
        rows.append(row)
    text = write_results(args.out, meta, rows, markdown)
    print(text)
    return text


if __name__ == "__main__":
    main()
