"""One LSH self-attention layer, forward + backward, side by side with reformer-pytorch, transformers and SDPA.

Each (implementation, length) runs in a fresh subprocess: ``--warmup`` untimed steps (default 1), then
``--repeats`` timed steps, shown as their median and min-max range. Peak memory is the child's peak RSS
(``resource.getrusage``'s ru_maxrss, KiB on Linux, divided by 2**20: GiB), which includes the ~0.25 GiB
of an imported torch; the tables also give the peak less the RSS after importing torch ("above import":
the memory the layer itself used, the same baseline subtracted from every row).
Every layer has the same shape: d_model = heads * d_head, causal, fp32, x of shape (batch, L, d_model)
(``--batch``, default 1), and for the LSH layers n_hashes and bucket_size as given (defaults: 4 heads x 64,
4 hashes, bucket 64). Rows (each says its settings in the table's "settings" column and the JSON):

* ``attnkit``: :class:`attnkit.nn.LSHSelfAttention` (shared-QK, value and output projections) with
  impl="auto", so ``lsh_attention`` picks the CPU path (the chunked one, or dense attention when L fits in
  one bucket; the commit in the header says which code ran), and attend_across_buckets=False (attnkit's
  default: a query meets keys of its own bucket only);
* ``reformer_pytorch``: ``reformer_pytorch.LSHSelfAttention`` (same projections) with its defaults,
  attend_across_buckets=True and attn_chunks=1;
* ``reformer_pytorch_chunked``: the same layer with attn_chunks=``--attn-chunks`` (default 8), its
  memory option, and attend_across_buckets=False, attnkit's bucket semantics. reformer-pytorch splits the
  batch * heads rows into attn_chunks pieces (``Tensor.chunk``), so there are at most batch * heads pieces
  (at batch 1 with 4 heads, attn_chunks=8 runs 4 pieces of one head);
* ``transformers``: ``transformers``' ``ReformerAttention`` (layer norm, LSH self-attention, output dense),
  chunk length = bucket_size, one chunk before, num_buckets chosen at run time (about 2 L / chunk length),
  no bucket mask (attends across buckets in the chunks it sees);
* ``sdpa``: exact causal attention, ``scaled_dot_product_attention`` with Q, K, V and output projections;
* ``attnkit_chunked``, ``attnkit_dense`` (only when asked for): attnkit with that CPU
  path forced, to see which one "auto" should pick at each length.

    python benchmarks/lsh_attention.py                 # 4,096, 16,384 and 65,536 tokens
    python benchmarks/lsh_attention.py --quick         # 1,024 and 4,096 tokens, 2 repeats
    python benchmarks/lsh_attention.py --lengths 65536 --impls attnkit reformer_pytorch reformer_pytorch_chunked
    python benchmarks/lsh_attention.py --lengths 1024 4096 --batch 16

The JSON's meta and the markdown's header record the provenance: the command, the git commit ("-dirty"
when tracked files are modified), the versions of Python, torch, reformer-pytorch and transformers, the
CPU model and count, torch threads, and the load average before and after the run (each row also keeps
the load average just before it). After the table, one line per length and reference row gives attnkit's
speed and memory ratios.

Needs ``pip install reformer-pytorch --no-deps einops axial-positional-embedding local-attention==1.9.15
product-key-memory==0.1.10`` (local-attention 1.11.2 imports hyper-connections, which --no-deps leaves
out) and ``pip install transformers`` (see the ``bench`` extra); an implementation that cannot be imported
is reported as skipped. Writes benchmarks/results/lsh_attention.{json,md} (``--out`` changes the path).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

IMPLS = ("attnkit", "reformer_pytorch", "reformer_pytorch_chunked", "transformers", "sdpa")
ATTNKIT_PATHS = ("chunked", "dense")  # rows "attnkit_<path>": one CPU path forced (not by default)
CHOICES = IMPLS + tuple(f"attnkit_{path}" for path in ATTNKIT_PATHS)
REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def settings(impl: str, attn_chunks: int) -> str:
    """What each implementation runs with, beyond the shared shape (shown per row)."""
    return {
        "attnkit": "impl='auto', attend_across_buckets=False",
        **{f"attnkit_{path}": f"impl='{path}', attend_across_buckets=False" for path in ATTNKIT_PATHS},
        "reformer_pytorch": "defaults (attend_across_buckets=True, attn_chunks=1)",
        "reformer_pytorch_chunked": f"attn_chunks={attn_chunks}, attend_across_buckets=False",
        "transformers": "layer norm + LSH + dense; 1 chunk before, num_buckets ~2L/chunk, no bucket mask",
        "sdpa": "exact causal attention, separate Q, K, V and output projections",
    }[impl]


def build(impl: str, args):
    """(module, fn): the layer and a function x (batch, L, d_model) -> y (batch, L, d_model)."""
    import torch

    d_model, heads, d_head = args.d_model, args.heads, args.d_head
    if impl == "attnkit" or impl.startswith("attnkit_"):
        from attnkit.nn import LSHSelfAttention

        layer = LSHSelfAttention(
            d_model, heads, d_head=d_head, n_hashes=args.n_hashes, bucket_size=args.bucket_size, causal=True,
            impl="auto" if impl == "attnkit" else impl.removeprefix("attnkit_"),
        )
        return layer, layer
    if impl in ("reformer_pytorch", "reformer_pytorch_chunked"):
        from reformer_pytorch import LSHSelfAttention

        own = dict(attn_chunks=args.attn_chunks, attend_across_buckets=False) if impl.endswith("_chunked") else {}
        layer = LSHSelfAttention(
            dim=d_model, heads=heads, dim_head=d_head, bucket_size=args.bucket_size, n_hashes=args.n_hashes,
            causal=True, **own,
        )
        return layer, layer
    if impl == "transformers":
        from transformers import ReformerConfig
        from transformers.models.reformer.modeling_reformer import ReformerAttention

        config = ReformerConfig(
            hidden_size=d_model, num_attention_heads=heads, attention_head_size=d_head, num_hashes=args.n_hashes,
            lsh_attn_chunk_length=args.bucket_size, lsh_num_chunks_before=1, lsh_num_chunks_after=0,
            attn_layers=["lsh"], is_decoder=True, lsh_attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0,
            max_position_embeddings=args.length, axial_pos_embds=False,
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


def peak_rss_gib() -> float:
    """This process's peak RSS in GiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rss_import = peak_rss_gib()
    try:
        layer, fn = build(args.impl, args)
    except ImportError as e:
        print(json.dumps({"skipped": f"cannot import: {e}"}))
        return
    layer.train()
    x = torch.randn(args.batch, args.length, args.d_model, requires_grad=True)

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
        "peak_rss_gb": peak_rss_gib(), "import_rss_gb": rss_import, "threads": torch.get_num_threads(),
    }))


def run_one(impl: str, L: int, args) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--impl", impl, "--length", str(L), "--batch", str(args.batch),
        "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--d-model", str(args.d_model),
        "--heads", str(args.heads), "--d-head", str(args.d_head), "--n-hashes", str(args.n_hashes),
        "--bucket-size", str(args.bucket_size), "--attn-chunks", str(args.attn_chunks), "--threads", str(args.threads),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    row = {"impl": impl, "length": L, "settings": settings(impl, args.attn_chunks), "load_before": os.getloadavg()[0]}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timed out after {args.timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**row, "error": f"exit {proc.returncode}: {tail[0][:200]}"}
    return {**row, **json.loads(lines[-1])}


def provenance(argv: list[str]) -> dict:
    """Where and how the run was made (the load average after it is added at the end)."""
    from attnkit.bench import provenance as made

    return made(__file__, argv, ("torch", "reformer-pytorch", "transformers"))


def fmt_time(r: dict) -> str:
    """Median and min-max range of the timed steps, three significant digits: "2.85 (2.80-2.91)", "0.0412 (...)"."""
    times = r.get("times_s") or [r["time_s"]]
    return f"{r['time_s']:.3g} ({min(times):.3g}-{max(times):.3g})"


def fmt_load(loads: list[float] | None) -> str:
    return " / ".join(f"{x:.2f}" for x in loads) if loads else "-"


def times_better(ratio: float, better: str, worse: str) -> str:
    """"2.3x faster" for a ratio of 2.3, "1.5x slower" for 0.67 (a ratio that rounds to 1.0 reads as better)."""
    return f"{ratio:.1f}x {better}" if round(1 / ratio, 1) <= 1.0 else f"{1 / ratio:.1f}x {worse}"


def summary(rows: list[dict]) -> list[str]:
    """One line per length and reference row: attnkit's time and peak RSS against it."""
    ours = {r["length"]: r for r in rows if r["impl"] == "attnkit" and "time_s" in r}
    lines = []
    for r in rows:
        base = ours.get(r["length"])
        if r["impl"] == "attnkit" or base is None or "time_s" not in r:
            continue
        speed = times_better(r["time_s"] / base["time_s"], "faster", "slower")
        memory = times_better(r["peak_rss_gb"] / base["peak_rss_gb"], "leaner", "heavier")
        own = (f" in peak RSS, {times_better(layer_gib(r) / layer_gib(base), 'leaner', 'heavier')} in the memory "
               "above the imported torch") if layer_gib(r) and layer_gib(base) else ""
        lines.append(f"{r['length']:,} tokens: attnkit is {speed} and {memory}{own} than {r['impl']} "
                     f"({r['settings']})")
    return lines


def layer_gib(r: dict) -> float | None:
    """The memory a row's layer used: its peak RSS less the RSS of the same process after importing torch
    (what every row starts from), in GiB; None where the row did not record the latter."""
    return r["peak_rss_gb"] - r["import_rss_gb"] if r.get("import_rss_gb") is not None else None


def markdown(rows: list[dict], meta: dict) -> str:
    allocator = (
        f"MALLOC_MMAP_THRESHOLD_={meta['mmap_threshold']}" if meta.get("mmap_threshold")
        else "glibc's default allocator settings"
    )
    out = [
        "# One LSH self-attention layer, forward + backward",
        "",
        f"`{meta['command']}`",
        "",
        f"Commit {meta['commit']}; Python {meta['python']}, torch {meta['torch']}, reformer-pytorch "
        f"{meta['reformer_pytorch']}, transformers {meta['transformers']}; {meta['cpu_model']}, "
        f"{meta['cpu_count']} CPUs, {meta['threads']} torch threads; load average (1/5/15 min) "
        f"{fmt_load(meta.get('load_before'))} before the run, {fmt_load(meta.get('load_after'))} after it.",
        "",
        f"Batch {meta['batch']}, fp32, causal, {meta['heads']} heads x {meta['d_head']}, {meta['n_hashes']} hashes, "
        f"bucket {meta['bucket_size']}; time: median (min-max) of {meta['repeats']} timed step(s) after "
        f"{meta['warmup']} warm-up; memory: peak RSS of a fresh process in GiB ({allocator}), and that peak less the RSS "
        "after importing torch (above import).",
        "",
        "| tokens | implementation | settings | time (s) | CPU time (s) | peak RSS (GiB) | above import (GiB) "
        "| time / attnkit | memory / attnkit (RSS; above import) | load avg |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ours = {r["length"]: r for r in rows if r["impl"] == "attnkit" and "time_s" in r}
    for r in rows:
        head = f"| {r['length']:,} | {r['impl']} | {r.get('settings', '-')} |"
        if "time_s" not in r:
            out.append(f"{head} {r.get('error') or r.get('skipped')} | | | | | | {r['load_before']:.1f} |")
            continue
        base = ours.get(r["length"])
        own = layer_gib(r)
        tr = f"{r['time_s'] / base['time_s']:.1f}x" if base else "-"
        mr = f"{r['peak_rss_gb'] / base['peak_rss_gb']:.1f}x" if base else "-"
        if base and own and layer_gib(base):
            mr += f"; {own / layer_gib(base):.1f}x"
        out.append(
            f"{head} {fmt_time(r)} | {r['cpu_s']:.2f} | {r['peak_rss_gb']:.2f} | "
            f"{'-' if own is None else f'{own:.2f}'} | {tr} | {mr} | {r['load_before']:.1f} |"
        )
    ratios = summary(rows)
    if ratios:
        out += ["", *(f"- {line}" for line in ratios)]
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=CHOICES)
    p.add_argument("--quick", action="store_true", help="1,024 and 4,096 tokens, 2 repeats")
    p.add_argument("--batch", type=int, default=1, help="x is (batch, L, d_model) for every implementation")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument(
        "--attn-chunks", type=int, default=8,
        help="reformer-pytorch's attn_chunks in the reformer_pytorch_chunked row (pieces of the batch * heads rows)",
    )
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
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.lengths = args.lengths or [1024, 4096]
        args.repeats = min(args.repeats, 2)
    lengths = args.lengths or [4096, 16384, 65536]

    import torch

    meta = {
        **provenance(argv),
        "threads": args.threads or torch.get_num_threads(),
        "batch": args.batch, "d_model": args.d_model, "heads": args.heads, "d_head": args.d_head,
        "n_hashes": args.n_hashes, "bucket_size": args.bucket_size, "attn_chunks": args.attn_chunks,
        "repeats": args.repeats, "warmup": args.warmup, "mmap_threshold": args.mmap_threshold,
        "memory_unit": "GiB",
    }
    rows = []
    for L in lengths:
        for impl in args.impls:
            r = run_one(impl, L, args)
            rows.append(r)
            shown = (
                f"{fmt_time(r)} s, {r['peak_rss_gb']:.2f} GiB peak RSS" if "time_s" in r
                else (r.get("error") or r.get("skipped"))
            )
            print(f"L={L:>7,}  {impl:<24} {shown}", flush=True)
    from attnkit.bench import write_results

    print(write_results(args.out, meta, rows, lambda meta, rows: markdown(rows, meta)))


if __name__ == "__main__":
    main()
