"""Greedy decoding with a ReformerLM after a long prompt: cached steps against re-running the prefix.

    python benchmarks/reformer_generation.py                    # prompt 4,096 tokens, 1 and 2 layers
    python benchmarks/reformer_generation.py --prompt 1024 --repeats 1

Both paths decode the same model (random weights, eval mode, seed 0) from the same prompt. Time per new
token is the median of the gaps between consecutive tokens after the first (the first one also pays for
the prompt), over ``--repeats`` runs; the spread (min-max of the runs' medians) is reported too.
"Same tokens" compares the greedy outputs: equal by construction for one LSH layer; with more layers a
re-run recomputes the earlier positions' hidden states under the longer sequence's chunking, which no
cache can reproduce (see attnkit/functional/lsh_decode.py), so the outputs may part.
Writes benchmarks/results/reformer_generation.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from attnkit.bench import provenance, write_results
from attnkit.models.reformer import ReformerConfig, ReformerLM

RESULTS = Path(__file__).resolve().parent / "results"


def decode(model: ReformerLM, prompt: torch.Tensor, n: int, use_cache: bool) -> tuple[list[float], torch.Tensor]:
    """Greedy decoding of n tokens -> (seconds between consecutive tokens after the first, the tokens)."""
    stamps = []
    out = model.generate(prompt, n, use_cache=use_cache, on_token=lambda _: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])], out[:, prompt.shape[1]:]


def measure(layers: int, args) -> dict:
    torch.manual_seed(0)
    config = ReformerConfig(vocab_size=256, d_model=256, n_heads=4, n_layers=layers, d_ff=1024, n_hashes=4,
                            bucket_size=64, max_len=2 * args.prompt)
    model = ReformerLM(config).eval()
    prompt = torch.randint(0, 256, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    runs = {"cached": [], "rerun": []}
    tokens = {}
    for _ in range(args.repeats):
        for name, n in (("cached", args.new_tokens), ("rerun", args.rerun_tokens)):
            gaps, tokens[name] = decode(model, prompt, n, use_cache=name == "cached")
            runs[name].append(statistics.median(gaps))
    n = min(args.new_tokens, args.rerun_tokens)
    same = int((tokens["cached"][:, :n] == tokens["rerun"][:, :n]).all(0).cumprod(0).sum())
    cached, rerun = statistics.median(runs["cached"]), statistics.median(runs["rerun"])
    return {
        "layers": layers, "prompt": args.prompt, "config": config.to_dict(),
        "cached_s_per_token": cached, "rerun_s_per_token": rerun, "speedup": rerun / cached,
        "cached_runs": runs["cached"], "rerun_runs": runs["rerun"],
        "same_prefix_tokens": same, "compared_tokens": n,
    }


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# ReformerLM greedy decoding: cached steps against re-running the prefix", "",
        f"`{meta['command']}` at commit {meta['commit']}; torch {meta['torch']}, {meta['cpu_model']}, "
        f"{meta['cpu_count']} CPUs, {meta['threads']} threads, load average {', '.join(f'{x:.1f}' for x in meta['load_before'])} before, "
        f"{', '.join(f'{x:.1f}' for x in meta['load_after'])} after.",
        "ReformerLM, random weights, d_model 256, 4 heads, d_ff 1024, LSH with 4 hashes and chunks of 64, "
        "axial positions, batch 1, eval mode. Time per new token: median gap between tokens after the first, "
        f"median over {meta['repeats']} runs (min-max of the runs in brackets).", "",
        "| layers | prompt | cached (ms/token) | re-run (ms/token) | speedup | same greedy tokens |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        spread = lambda xs: f"{1000 * min(xs):.1f}-{1000 * max(xs):.1f}"  # noqa: E731
        lines.append(
            f"| {r['layers']} | {r['prompt']:,} | {1000 * r['cached_s_per_token']:.1f} ({spread(r['cached_runs'])}) | "
            f"{1000 * r['rerun_s_per_token']:.0f} ({spread(r['rerun_runs'])}) | {r['speedup']:.0f}x | "
            f"first {r['same_prefix_tokens']} of {r['compared_tokens']} |"
        )
    lines += ["", "With one LSH layer the greedy tokens are equal by construction (each cached step equals the "
              "re-run's last position). With two, a re-run recomputes earlier positions under the longer "
              "sequence's chunking, so the paths may part; the cached path keeps each position's state from "
              "when it was last, as causal decoding does."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt", type=int, default=4096, help="prompt length in tokens")
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--new-tokens", type=int, default=64, help="tokens decoded with the cache")
    p.add_argument("--rerun-tokens", type=int, default=8, help="tokens decoded by re-running the prefix")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "reformer_generation"))
    args = p.parse_args(argv)
    meta = {**provenance(__file__, sys.argv[1:] if argv is None else argv), "threads": torch.get_num_threads(),
            "repeats": args.repeats}
    rows = []
    for layers in args.layers:
        rows.append(measure(layers, args))
        r = rows[-1]
        print(f"{layers} layer(s): cached {1000 * r['cached_s_per_token']:.1f} ms/token, re-run "
              f"{1000 * r['rerun_s_per_token']:.0f} ms/token ({r['speedup']:.0f}x)", flush=True)
    print(write_results(args.out, meta, rows, markdown))


if __name__ == "__main__":
    main()
