"""Greedy decoding tokens/s of a TransformerLM with and without the KV cache (same tokens).

    python benchmarks/generation.py [--quick]

Writes benchmarks/results/generation.{json,md}.
"""

import argparse
import json
import platform
from pathlib import Path

import torch

from attnkit.bench import generation

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--quick", action="store_true")
args = p.parse_args()
result = generation(quick=args.quick)
result["device"] = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
out = Path(__file__).with_name("results")
out.mkdir(exist_ok=True)
(out / "generation.json").write_text(json.dumps(result, indent=2))
(out / "generation.md").write_text(
    "| setting | with cache (tok/s) | without cache (tok/s) | speedup | same tokens |\n|---|---|---|---|---|\n"
    f"| {result['setting']} | {result['tokens_per_s_with_cache']:.0f} | {result['tokens_per_s_without_cache']:.0f} "
    f"| {result['speedup']:.1f}x | {result['same_tokens']} |\n"
)
print(json.dumps(result, indent=2))
