"""German to English on the Ding dictionary's sentence pairs (Debian trans-de-en): the encoder-decoder
Transformer against the RNN with attention it replaced, each trained for the same wall-clock budget
from its preset, then scored with sacreBLEU and chrF on the held-out test pairs.

    python examples/train_translation.py                         # both presets as they are
    python examples/train_translation.py --minutes 5 --models de_en_transformer

The same as `attnkit train --config de_en_transformer` and `--config de_en_rnn`; each run folder
(--out/<preset>) is an ordinary attnkit run that `attnkit translate` reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attnkit.runs import RunConfig, evaluate_run, load_run, train_run

PRESETS = ("de_en_transformer", "de_en_rnn")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=PRESETS, default=list(PRESETS))
    p.add_argument("--minutes", type=float, default=None, help="budget per model (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override both presets")
    p.add_argument("--out", default="runs", help="parent of the run folders (replaced if they exist)")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--test-limit", type=int, default=None, help="score only the first N test sentences")
    args = p.parse_args(argv)

    results = {}
    for preset in args.models:
        budget = [f"train.minutes={args.minutes}"] if args.minutes is not None else []
        config = RunConfig.load(preset, [*budget, *args.set])
        trained = train_run(config, Path(args.out) / preset, overwrite=True)
        evaluation = evaluate_run(load_run(trained.folder.path), beam_size=args.beam_size, limit=args.test_limit)
        print(f"\n{preset} ({trained.n_parameters:,} parameters, {trained.summary['step']} steps)")
        print(evaluation.report())
        results[preset] = {"steps": trained.summary["step"], "parameters": trained.n_parameters, **evaluation.metrics}
    print("\n" + "\n".join(f"{name}: BLEU {r['bleu']:.1f}, chrF {r['chrf']:.1f}" for name, r in results.items()))
    return results


if __name__ == "__main__":
    main()
