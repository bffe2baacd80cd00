"""Where one fused LSH attention step spends its GPU time: PyTorch's profiler over one forward + backward
(bf16, batch 1, 8 heads x 64, causal, 4 hashes, bucket 64), kernels sorted by their total CUDA time.

    python benchmarks/gpu_profile_lsh.py --lengths 65536 1048576 --out benchmarks/results/gpu_profile_lsh.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnkit.bench import provenance  # noqa: E402
from attnkit.functional import lsh_attention  # noqa: E402


def profile_length(L: int, heads: int, d_head: int, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator(device="cuda").manual_seed(0)
    qk, v, grad = (torch.randn(1, heads, L, d_head, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    qk.requires_grad_()
    v.requires_grad_()

    def step():
        out = lsh_attention(qk, v, n_hashes=4, bucket_size=64, causal=True, seed=1, impl="fused")
        torch.autograd.grad(out, (qk, v), grad)

    step()  # compile and warm up
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70)
    return f"## {L:,} tokens\n\n```\n{table}\n```\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[65536, 1048576])
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_profile_lsh.py needs a CUDA GPU")
    meta = provenance(__file__, sys.argv[1:], ("torch", "triton"))
    text = (f"# Fused LSH attention: CUDA time by kernel\n\n`{meta['command']}`\n\n{torch.cuda.get_device_name()}; "
            f"torch {meta['torch']}, triton {meta['triton']}; commit {meta['commit']}; "
            f"load average {meta['load_before'][0]:.2f} before\n\n")
    for L in args.lengths:
        text += profile_length(L, args.heads, args.d_head, args.rows)
        print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
