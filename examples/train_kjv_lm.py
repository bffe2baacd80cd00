"""Train the main job's model, a character-level Transformer LM on the King James Bible, through the
library: the few calls that `attnkit train --config kjv_char_lm` makes.

    python examples/train_kjv_lm.py                               # the kjv_char_lm preset: five minutes
    python examples/train_kjv_lm.py --minutes 2 --set model.n_layers=2

Whole books (Joshua, Romans) are held out; the script prints bits per character on them and a passage
sampled from a prompt. The run folder (--out) is an ordinary attnkit run: `attnkit generate`,
`attnkit eval` and `attnkit resume` read it.
"""

from __future__ import annotations

import argparse

from attnkit.runs import RunConfig, evaluate_run, load_run, sample_run, train_run


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override the preset")
    p.add_argument("--out", default="runs/kjv-lm", help="the run folder (replaced if it exists)")
    p.add_argument("--prompt", default="And God said")
    p.add_argument("--sample-tokens", type=int, default=400)
    p.add_argument("--eval-tokens", type=int, default=None, help="score only the first N held-out characters")
    args = p.parse_args(argv)

    config = RunConfig.load("kjv_char_lm", [f"train.minutes={args.minutes}", *args.set])
    result = train_run(config, args.out, overwrite=True)
    run = load_run(args.out)
    evaluation = evaluate_run(run, max_tokens=args.eval_tokens)
    print(evaluation.report())
    text = sample_run(run, args.prompt, max_new_tokens=args.sample_tokens, temperature=0.8, top_p=0.95)
    print(f"\n{args.prompt}{text}")
    return {"steps": result.summary["step"], **evaluation.metrics, "sample": text}


if __name__ == "__main__":
    main()
