"""T5 against transformers' T5ForConditionalGeneration on randomly initialized models (no pretrained T5
installs offline): the v1.0 layout (relu, tied and rescaled output), the v1.1 layout (gated GELU, untied)
and a gated tied one, each saved by transformers' ``save_pretrained`` and read by ``attnkit.interop.load_t5``.
For each: the largest relative difference of the encoder output and of the logits on a padded batch
(3 sources of 30 positions, 20 decoder positions, past the relative-position buckets' max distance), and
whether greedy decoding of 16 tokens gives the same tokens. Goal: within 1e-4, and equal.

    python benchmarks/t5_parity.py [--seeds 3]

Writes benchmarks/results/t5_parity.{json,md}. Needs transformers (scripts/setup.sh installs it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from attnkit.bench import provenance, write_results  # noqa: E402
from attnkit.interop.t5_parity import SHAPES, compare, random_pair  # noqa: E402

OUT = Path(__file__).with_name("results") / "t5_parity"


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = ["# T5 parity with transformers (random models)", "",
             f"`{meta['command']}` at {meta['commit']}; torch {meta['torch']}, transformers {meta['transformers']}, "
             f"{meta['cpu_model']} ({meta['cpu_count']} CPUs), load {meta['load_before'][0]:.1f} before. "
             "Relative error: max |attnkit - transformers| / max |transformers|, float32. Greedy: 16 new tokens "
             "for each of 3 sources.", "",
             "| shape | seed | encoder rel. error | logits rel. error | greedy tokens equal |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        greedy = "yes" if r["greedy_equal"] else f"no ({r['greedy_tokens_differing']} of {r['greedy_tokens']} differ)"
        lines.append(f"| {r['shape']} | {r['seed']} | {r['encoder_relative_error']:.1e} | "
                     f"{r['logits_relative_error']:.1e} | {greedy} |")
    worst = max(r["logits_relative_error"] for r in rows)
    lines += ["", f"Largest logits relative error: {worst:.1e} (goal 1e-4); greedy equal in "
              f"{sum(r['greedy_equal'] for r in rows)} of {len(rows)} models.", "",
              "The shapes (transformers `T5Config` arguments; vocabulary 64, no dropout):", ""]
    for shape in dict.fromkeys(r["shape"] for r in rows):
        config = next(r["config"] for r in rows if r["shape"] == shape)
        lines.append(f"- {shape}: " + ", ".join(f"`{k}={v}`" for k, v in config.items()))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="random models per shape")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be at least 1, got {args.seeds}")
    meta = provenance(__file__, sys.argv[1:] if argv is None else argv, packages=("torch", "transformers"))
    rows = []
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        for shape in SHAPES:
            for seed in range(args.seeds):
                hf, model = random_pair(shape, Path(tmp) / f"{shape}-{seed}", seed=seed)
                rows.append({"shape": shape, "seed": seed, "config": SHAPES[shape],
                             **compare(hf, model, seed=seed)})
    print(write_results(args.out, meta, rows, markdown))


if __name__ == "__main__":
    main()
