"""Long context on one GPU: the fused LSH attention layer and a ReformerLM training step up to a million tokens.

Takes every figure of the GPU issue in one run (under 8 minutes on an H100 or H200) and writes
benchmarks/results/gpu_long_context.{json,md} naming the GPU:

1. One LSH attention layer, forward + backward: ``lsh_attention(qk, v, impl="fused")`` on bf16
   (1, 8, L, 64) inputs, causal, 4 hashes, bucket 64, at 65,536, 262,144 and 1,048,576 tokens, next to
   exact attention (``scaled_dot_product_attention``, bf16, causal, same heads) in the same run. Time is
   the median of ``--repeats`` steps after a warm-up (CUDA events); memory is the peak allocated during a
   step, both in total and above the inputs (qk, v and the output gradient), which are the caller's.
   Targets at 1,048,576 tokens: 0.1 s and 4 GB.
2. A ReformerLM training step (6 layers, d_model 512, 8 heads, byte vocabulary, LSH attention,
   reversible, chunked feed-forward and loss, bf16 autocast, AdamW) on one 1,048,576-token sequence:
   time and peak memory. Targets: 16 GB and 2 s on an H200.
3. The longest sequence whose training step fits in 16 GB, and in the whole card (doubling from 1M
   until a step runs out of memory or takes longer than ``--max-step-s``).

    python benchmarks/gpu_long_context.py            # on a CUDA machine
    python benchmarks/gpu_long_context.py --smoke    # tiny sizes on the CPU: checks the script, no figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnkit.bench import provenance  # noqa: E402
from attnkit.functional import lsh_attention  # noqa: E402
from attnkit.models import ReformerConfig, ReformerLM  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GB = 1e9


class Device:
    """Timing and peak memory on CUDA (events, allocator statistics), or wall clock on the CPU (smoke)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset(self) -> int:
        """Empty the cache and reset the peak; returns the bytes allocated now."""
        if not self.cuda:
            return 0
        self.sync()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else 0

    def timed(self, fn, repeats: int, warmup: int = 1) -> tuple[float, list[float], int, int]:
        """(median seconds, all seconds, peak bytes, bytes allocated before) of fn()."""
        for _ in range(warmup):
            fn()
        base = self.reset()
        times = []
        for _ in range(repeats):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), times, self.peak(), base


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def attention_layer(dev: Device, impl: str, L: int, args) -> dict:
    H, D = args.heads, args.d_head
    g = torch.Generator(device=dev.device).manual_seed(0)
    dtype = torch.bfloat16 if dev.cuda else torch.float32
    row = {"part": "layer", "impl": impl, "length": L}
    try:
        if impl == "sdpa":
            q, k, v = (torch.randn(1, H, L, D, device=dev.device, dtype=dtype, generator=g).requires_grad_() for _ in range(3))
            inputs = (q, k, v)

            def step():
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                torch.autograd.grad(out, inputs, grad)
        else:
            qk, v = (torch.randn(1, H, L, D, device=dev.device, dtype=dtype, generator=g).requires_grad_() for _ in range(2))
            inputs = (qk, v)

            def step():
                out = lsh_attention(
                    qk, v, n_hashes=args.n_hashes, bucket_size=args.bucket_size, causal=True, seed=1,
                    impl="fused" if dev.cuda else "chunked",
                )
                torch.autograd.grad(out, inputs, grad)

        grad = torch.randn(1, H, L, D, device=dev.device, dtype=dtype, generator=g)
        median, times, peak, base = dev.timed(step, args.repeats)
        return {**row, "time_s": median, "times_s": times, "peak_gb": peak / GB, "peak_above_inputs_gb": (peak - base) / GB}
    except Exception as e:  # noqa: BLE001 - an out-of-memory row is a result
        if not is_oom(e):
            raise
        return {**row, "error": "out of memory"}
    finally:
        dev.reset()


def reformer_config(L: int, args) -> ReformerConfig:
    side = 1 << ((L - 1).bit_length() + 1) // 2  # axial positions: side x side >= L
    return ReformerConfig(
        vocab_size=256, d_model=args.d_model, n_heads=args.heads, n_layers=args.layers, d_ff=4 * args.d_model,
        max_len=L, axial_shape=(side, -(-L // side)), n_hashes=args.n_hashes, bucket_size=args.bucket_size,
        reversible=True, ff_chunks=args.chunks, loss_chunks=args.chunks, dropout=0.0,
    )


def reformer_step(dev: Device, L: int, args, repeats: int) -> dict:
    row = {"part": "reformer_lm", "length": L, "layers": args.layers, "d_model": args.d_model}
    model = opt = None
    try:
        torch.manual_seed(0)
        model = ReformerLM(reformer_config(L, args)).to(dev.device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        tokens = torch.randint(0, 256, (1, L), device=dev.device)
        losses = []

        def step():
            with torch.autocast(dev.device.type, dtype=torch.bfloat16, enabled=dev.cuda):
                loss = model.loss(tokens)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())

        median, times, peak, _ = dev.timed(step, repeats)
        params = sum(p.numel() for p in model.parameters())
        return {**row, "parameters": params, "time_s": median, "times_s": times, "peak_gb": peak / GB, "loss": losses[-1]}
    except Exception as e:  # noqa: BLE001
        if not is_oom(e):
            raise
        return {**row, "error": "out of memory"}
    finally:
        model = opt = None  # drop the references before measuring the next length
        dev.reset()


def markdown(meta: dict, rows: list[dict], summary: dict) -> str:
    out = [
        "# Long context on one GPU", "", f"`{meta['command']}`", "",
        f"{meta['device']}; torch {meta['torch']}, triton {meta['triton']}; commit {meta['commit']}; "
        f"load average {meta['load_before'][0]:.2f} before, {meta.get('load_after', [float('nan')])[0]:.2f} after; batch 1, {meta['heads']} heads x {meta['d_head']}, "
        f"{meta['n_hashes']} hashes, bucket {meta['bucket_size']}, causal; median of {meta['repeats']} steps after a warm-up.",
        "", "## One attention layer, forward + backward", "",
        "| tokens | implementation | time (s) | peak (GB) | peak above inputs (GB) | SDPA time / ours |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    ours = {r["length"]: r for r in rows if r["part"] == "layer" and r["impl"] == "attnkit" and "time_s" in r}
    for r in (r for r in rows if r["part"] == "layer"):
        if "error" in r:
            out.append(f"| {r['length']:,} | {r['impl']} | {r['error']} | | | |")
            continue
        base = ours.get(r["length"])
        ratio = f"{r['time_s'] / base['time_s']:.1f}x" if base and r["impl"] == "sdpa" else ""
        out.append(
            f"| {r['length']:,} | {r['impl']} | {r['time_s']:.4f} | {r['peak_gb']:.2f} | {r['peak_above_inputs_gb']:.2f} | {ratio} |"
        )
    out += ["", "## ReformerLM training step (reversible, chunked feed-forward and loss, bf16 autocast, AdamW)", "",
            "| tokens | layers | d_model | parameters | time (s) | peak (GB) |", "|---:|---:|---:|---:|---:|---:|"]
    for r in (r for r in rows if r["part"] == "reformer_lm"):
        if "error" in r:
            out.append(f"| {r['length']:,} | {r['layers']} | {r['d_model']} | | {r['error']} | |")
        else:
            out.append(f"| {r['length']:,} | {r['layers']} | {r['d_model']} | {r['parameters']:,} | {r['time_s']:.2f} | {r['peak_gb']:.2f} |")
    out += ["", f"- longest sequence trained in {meta['budget_gb']:g} GB: {summary['longest_in_budget']}",
            f"- longest sequence trained on the whole card: {summary['longest_on_card']}"]
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, to check the script")
    p.add_argument("--lengths", type=int, nargs="+", default=[65536, 262144, 1048576])
    p.add_argument("--lm-length", type=int, default=1048576)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--n-hashes", type=int, default=4)
    p.add_argument("--bucket-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--chunks", type=int, default=16, help="feed-forward and loss chunks")
    p.add_argument("--budget-gb", type=float, default=16.0)
    p.add_argument("--max-step-s", type=float, default=30.0, help="stop the length search past this step time")
    p.add_argument("--no-search", action="store_true", help="skip the longest-sequence search")
    p.add_argument("--out", default=str(RESULTS / "gpu_long_context"))
    args = p.parse_args(argv)
    if args.smoke:
        args.lengths, args.lm_length, args.repeats = [512, 2048], 2048, 1
        args.layers, args.d_model, args.heads, args.chunks, args.max_step_s = 2, 64, 2, 4, 5.0
        args.out = "/tmp/gpu_long_context_smoke"
    elif not torch.cuda.is_available():
        sys.exit("gpu_long_context.py needs a CUDA GPU (use --smoke to check the script on the CPU)")
    dev = Device(torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    name = torch.cuda.get_device_name(dev.device) if dev.cuda else f"CPU ({platform.machine()}, smoke run)"
    meta = {
        **provenance(__file__, sys.argv[1:], ("torch", "triton")), "device": name,
        "heads": args.heads, "d_head": args.d_head, "n_hashes": args.n_hashes,
        "bucket_size": args.bucket_size, "repeats": args.repeats, "budget_gb": args.budget_gb,
    }
    if dev.cuda:
        meta["memory_gb"] = torch.cuda.get_device_properties(dev.device).total_memory / GB
    t_start = time.perf_counter()
    rows = []

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(summary):
        meta["wall_s"], meta["load_after"] = time.perf_counter() - t_start, list(os.getloadavg())
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=2))
        text = markdown(meta, rows, summary)
        out.with_suffix(".md").write_text(text)
        return text

    def record(r):
        rows.append(r)
        shown = r.get("error") or f"{r['time_s']:.4f} s, {r['peak_gb']:.2f} GB"
        print(f"[{time.perf_counter() - t_start:6.0f} s] {r['part']:<12} {r.get('impl', ''):<8} L={r['length']:>10,}  {shown}", flush=True)
        save({"longest_in_budget": "pending (run in progress)", "longest_on_card": "pending (run in progress)"})  # a killed run keeps its rows

    for L in args.lengths:
        for impl in ("attnkit", "sdpa"):
            record(attention_layer(dev, impl, L, args))
    lm = reformer_step(dev, args.lm_length, args, repeats=min(args.repeats, 2))
    record(lm)
    summary = {"longest_in_budget": None, "longest_on_card": None}
    fits = [lm] if "error" not in lm else []
    if not args.no_search:
        L = args.lm_length
        while fits and fits[-1]["time_s"] < args.max_step_s:
            L *= 2
            r = reformer_step(dev, L, args, repeats=1)
            record(r)
            if "error" in r:
                break
            fits.append(r)
    in_budget = [r["length"] for r in fits if r["peak_gb"] <= args.budget_gb]
    summary["longest_in_budget"] = f"{max(in_budget):,} tokens" if in_budget else f"under {args.lm_length:,} tokens"
    if fits:
        last = fits[-1]["length"]
        if args.no_search:
            stopped = "no search: --no-search"
        elif rows[-1].get("error"):
            stopped = "out of memory at twice that"
        else:
            stopped = "search stopped by --max-step-s"
        summary["longest_on_card"] = f"{last:,} tokens ({stopped})"
    print(save(summary))


if __name__ == "__main__":
    main()
