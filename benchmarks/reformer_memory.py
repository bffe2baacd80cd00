"""Peak memory of ReformerLM training steps: flat in depth with reversible layers, and a 65,536-token step.

Each configuration runs in a fresh subprocess: one training step (forward, loss, backward, Adam update)
as warm-up, then ``--repeats`` timed steps; memory is the child's peak RSS (``resource.getrusage``),
which includes the ~0.25 GB of an imported torch, the parameters, gradients and Adam's state.

1. Depth: a byte-level ReformerLM (d_model 256, 4 heads, d_ff 1024, LSH attention, 4 hashes, bucket 64,
   ff and loss chunks 8) on one 16,384-token sequence with 1 and with 12 layers, reversible on and off.
   Target: 12 layers at most 1.3x the peak of 1 layer with reversible layers.
2. Long sequence: the same model with 6 layers on one 65,536-token sequence: time and peak memory.

    python benchmarks/reformer_memory.py            # both parts
    python benchmarks/reformer_memory.py --quick    # 4,096 and 16,384 tokens, 1 repeat

Writes benchmarks/results/reformer_memory.{json,md}.
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

RESULTS = Path(__file__).resolve().parent / "results"


def child(args) -> None:
    import torch

    from attnkit.models import ReformerConfig, ReformerLM

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ReformerConfig(
        vocab_size=256, d_model=256, n_heads=4, n_layers=args.layers, d_ff=1024, max_len=args.length,
        n_hashes=4, bucket_size=64, reversible=args.reversible, ff_chunks=8, loss_chunks=8, dropout=0.0,
    )
    model = ReformerLM(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 256, (1, args.length))
    times = []
    for i in range(1 + args.repeats):
        t0 = time.perf_counter()
        loss = model.loss(tokens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    print(json.dumps({
        "time_s": statistics.median(times), "times_s": times, "loss": loss.item(),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
    }))


def run(length: int, layers: int, reversible: bool, args) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--length", str(length), "--layers", str(layers),
        "--repeats", str(args.repeats), "--threads", str(args.threads),
    ] + (["--reversible"] if reversible else [])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    row = {"length": length, "layers": layers, "reversible": reversible, "load_before": os.getloadavg()[0]}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timed out after {args.timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**row, "error": f"exit {proc.returncode}: {tail[0][:200]}"}
    return {**row, **json.loads(lines[-1])}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--depth-length", type=int, default=16384)
    p.add_argument("--long-length", type=int, default=65536)
    p.add_argument("--long-layers", type=int, default=6)
    p.add_argument("--no-long", action="store_true", help="only the depth comparison")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads in each child (0: torch's default)")
    p.add_argument(
        "--mmap-threshold", type=int, default=0,
        help="set glibc's MALLOC_MMAP_THRESHOLD_ (bytes) in each child, so freed large blocks go back to the "
        "system and peak RSS follows live memory rather than heap fragmentation (0: glibc's default)",
    )
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--out", default=str(RESULTS / "reformer_memory"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    p.add_argument("--reversible", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.depth_length, args.long_length, args.repeats = 4096, 16384, 1

    import torch

    rows = []
    for reversible in (True, False):
        for layers in (1, 12):
            rows.append(run(args.depth_length, layers, reversible, args))
            print(rows[-1], flush=True)
    if not args.no_long:
        rows.append(run(args.long_length, args.long_layers, True, args))
        print(rows[-1], flush=True)

    def get(layers, reversible):
        return next(r for r in rows[:4] if r["layers"] == layers and r["reversible"] == reversible)

    lines = [
        "# ReformerLM training steps: memory against depth, and one 65,536-token sequence",
        "",
        "`python " + " ".join([Path(__file__).name] + sys.argv[1:]) + "`",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}; byte vocabulary, "
        "d_model 256, 4 heads, d_ff 1024, LSH (4 hashes, bucket 64), ff/loss chunks 8, Adam; batch 1, fp32; "
        f"median of {args.repeats} steps after a warm-up; peak RSS of a fresh process"
        + (f" (MALLOC_MMAP_THRESHOLD_={args.mmap_threshold})." if args.mmap_threshold else " (glibc's default allocator settings)."),
        "",
        "| tokens | layers | reversible | parameters | step time (s) | peak RSS (GB) | load avg |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['length']:,} | {r['layers']} | {r['reversible']} | {r['error']} | | | |")
        else:
            lines.append(
                f"| {r['length']:,} | {r['layers']} | {r['reversible']} | {r['parameters']:,} | {r['time_s']:.2f} | "
                f"{r['peak_rss_gb']:.2f} | {r['load_before']:.1f} |"
            )
    summary = {}
    for reversible in (True, False):
        a, b = get(1, reversible), get(12, reversible)
        if "peak_rss_gb" in a and "peak_rss_gb" in b:
            summary[f"12_vs_1_layers_{'reversible' if reversible else 'plain'}"] = b["peak_rss_gb"] / a["peak_rss_gb"]
    lines += ["", *(f"- {k.replace('_', ' ')}: {v:.2f}x peak memory" for k, v in summary.items())]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
