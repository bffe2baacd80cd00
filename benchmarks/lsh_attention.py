"""One LSH self-attention layer, forward + backward, side by side with reformer-pytorch, transformers and SDPA.

Each (implementation, length) runs in a fresh subprocess: a warm-up step, then the median of
``--repeats`` timed steps; peak memory is the child's peak RSS (``resource.getrusage``), which includes
the ~0.25 GB of an imported torch. Every layer has the same shape: d_model = heads * d_head, causal,
batch 1, fp32, and for the LSH layers n_hashes and bucket_size as given (defaults: 4 heads x 64,
4 hashes, bucket 64). Layers:

* ``attnkit``: :class:`attnkit.nn.LSHSelfAttention` (shared-QK, value and output projections);
* ``reformer_pytorch``: ``reformer_pytorch.LSHSelfAttention`` (same projections);
* ``transformers``: ``transformers``' ``ReformerAttention`` (layer norm, LSH self-attention, output dense);
* ``sdpa``: exact causal attention, ``scaled_dot_product_attention`` with Q, K, V and output projections.

    python benchmarks/lsh_attention.py                 # 4,096, 16,384 and 65,536 tokens
    python benchmarks/lsh_attention.py --quick         # 1,024 and 4,096 tokens, 2 repeats
    python benchmarks/lsh_attention.py --lengths 65536 --impls attnkit reformer_pytorch

Needs ``pip install reformer-pytorch --no-deps einops axial-positional-embedding local-attention
product-key-memory==0.1.10`` and ``pip install transformers`` (see the ``bench`` extra); an
implementation that cannot be imported is reported as skipped. Writes benchmarks/results/lsh_attention.{json,md}.
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

IMPLS = ("attnkit", "reformer_pytorch", "transformers", "sdpa")
RESULTS = Path(__file__).resolve().parent / "results"


def build(impl: str, d_model: int, heads: int, d_head: int, n_hashes: int, bucket_size: int, L: int):
    """The layer as a function x (1, L, d_model) -> y (1, L, d_model)."""
    import torch

    if impl == "attnkit":
        from attnkit.nn import LSHSelfAttention

        layer = LSHSelfAttention(d_model, heads, d_head=d_head, n_hashes=n_hashes, bucket_size=bucket_size, causal=True)
        return layer, layer
    if impl == "reformer_pytorch":
        from reformer_pytorch import LSHSelfAttention

        layer = LSHSelfAttention(
            dim=d_model, heads=heads, dim_head=d_head, bucket_size=bucket_size, n_hashes=n_hashes, causal=True
        )
        return layer, layer
    if impl == "transformers":
        from transformers import ReformerConfig
        from transformers.models.reformer.modeling_reformer import ReformerAttention

        config = ReformerConfig(
            hidden_size=d_model, num_attention_heads=heads, attention_head_size=d_head, num_hashes=n_hashes,
            lsh_attn_chunk_length=bucket_size, lsh_num_chunks_before=1, lsh_num_chunks_after=0,
            attn_layers=["lsh"], is_decoder=True, lsh_attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0,
            max_position_embeddings=L, axial_pos_embds=False,
        )
        layer = ReformerAttention(config, layer_id=0)
        return layer, lambda x: layer(x)[0]
    if impl == "sdpa":
        qkv = torch.nn.Linear(d_model, 3 * heads * d_head, bias=False)
        out = torch.nn.Linear(heads * d_head, d_model)
        layer = torch.nn.ModuleList([qkv, out])

        def run(x):
            B, T, _ = x.shape
            q, k, v = qkv(x).view(B, T, 3, heads, d_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return out(y.transpose(1, 2).reshape(B, T, heads * d_head))

        return layer, run
    raise ValueError(f"unknown implementation {impl!r}")


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    try:
        layer, fn = build(args.impl, args.d_model, args.heads, args.d_head, args.n_hashes, args.bucket_size, args.length)
    except ImportError as e:
        print(json.dumps({"skipped": f"cannot import: {e}"}))
        return
    layer.train()
    x = torch.randn(1, args.length, args.d_model, requires_grad=True)

    def step():
        y = fn(x)
        y.square().mean().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)

    times, cpu = [], []
    for i in range(args.warmup + args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    print(json.dumps({
        "time_s": statistics.median(times), "times_s": times, "cpu_s": statistics.median(cpu),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "import_rss_gb": rss_import,
        "threads": torch.get_num_threads(),
    }))


def run_one(impl: str, L: int, args) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--impl", impl, "--length", str(L), "--repeats", str(args.repeats),
        "--warmup", str(args.warmup), "--d-model", str(args.d_model), "--heads", str(args.heads),
        "--d-head", str(args.d_head), "--n-hashes", str(args.n_hashes), "--bucket-size", str(args.bucket_size),
        "--threads", str(args.threads),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    load = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "length": L, "error": f"timed out after {args.timeout} s", "load_before": load}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"impl": impl, "length": L, "error": f"exit {proc.returncode}: {tail[0][:200]}", "load_before": load}
    return {"impl": impl, "length": L, "load_before": load, **json.loads(lines[-1])}


def markdown(rows: list[dict], meta: dict) -> str:
    out = [
        "# One LSH self-attention layer, forward + backward",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['machine']}; torch {meta['torch']}, {meta['threads']} threads; batch 1, fp32, causal, "
        f"{meta['heads']} heads x {meta['d_head']}, {meta['n_hashes']} hashes, bucket {meta['bucket_size']}; "
        f"median of {meta['repeats']} steps after {meta['warmup']} warm-up; peak RSS of a fresh process"
        + (f" (MALLOC_MMAP_THRESHOLD_={meta['mmap_threshold']})." if meta.get("mmap_threshold") else " (glibc's default allocator settings)."),
        "",
        "| tokens | implementation | time (s) | CPU time (s) | peak RSS (GB) | time / attnkit | memory / attnkit | load avg |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    ours = {r["length"]: r for r in rows if r["impl"] == "attnkit" and "time_s" in r}
    for r in rows:
        if "time_s" not in r:
            out.append(f"| {r['length']:,} | {r['impl']} | {r.get('error') or r.get('skipped')} | | | | | |")
            continue
        base = ours.get(r["length"])
        tr = f"{r['time_s'] / base['time_s']:.1f}x" if base else "-"
        mr = f"{r['peak_rss_gb'] / base['peak_rss_gb']:.1f}x" if base else "-"
        out.append(
            f"| {r['length']:,} | {r['impl']} | {r['time_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_rss_gb']:.2f} | "
            f"{tr} | {mr} | {r['load_before']:.1f} |"
        )
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--quick", action="store_true", help="1,024 and 4,096 tokens, 2 repeats")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads in each child (0: torch's default)")
    p.add_argument(
        "--mmap-threshold", type=int, default=0,
        help="set glibc's MALLOC_MMAP_THRESHOLD_ (bytes) in each child, so freed large blocks go back to the "
        "system and peak RSS follows live memory rather than heap fragmentation (0: glibc's default)",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per child")
    p.add_argument("--out", default=str(RESULTS / "lsh_attention"), help="path without suffix for .json and .md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.lengths = args.lengths or [1024, 4096]
        args.repeats = min(args.repeats, 2)
    lengths = args.lengths or [4096, 16384, 65536]

    import torch

    meta = {
        "command": "python " + " ".join([Path(__file__).name if i == 0 else a for i, a in enumerate(sys.argv)]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__, "threads": args.threads or torch.get_num_threads(),
        "heads": args.heads, "d_head": args.d_head, "n_hashes": args.n_hashes, "bucket_size": args.bucket_size,
        "repeats": args.repeats, "warmup": args.warmup, "mmap_threshold": args.mmap_threshold,
    }
    rows = []
    for L in lengths:
        for impl in args.impls:
            r = run_one(impl, L, args)
            rows.append(r)
            shown = f"{r['time_s']:.2f} s, {r['peak_rss_gb']:.2f} GB" if "time_s" in r else (r.get("error") or r.get("skipped"))
            print(f"L={L:>7,}  {impl:<17} {shown}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    text = markdown(rows, meta)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
