"""Train a small character-level Transformer language model on the King James Bible.

    python examples/train_kjv_lm.py                  # about 5 minutes of training on a laptop CPU
    python examples/train_kjv_lm.py --minutes 2      # shorter
    python examples/train_kjv_lm.py --steps 20       # a fixed number of steps (smoke test)
    python examples/train_kjv_lm.py --load runs/kjv-lm --prompt "In the beginning"   # sample again

Trains a causal TransformerLM on every book but the held-out ones (attnkit.data.kjv.VALIDATION_BOOKS:
Joshua and Romans), then prints bits per character on the held-out books and a passage sampled from
a prompt. The run folder --out (default runs/kjv-lm) gets an atomic checkpoint step-N/ (safetensors
weights, JSON config, manifest), tokenizer.json and metrics.json; `attnkit generate runs/kjv-lm` reads it.

The defaults (d_model 128, 4 layers, context 128, batches of 8 windows, peak lr 3e-3) gave the best
held-out bpc among the sizes tried in 5-minute runs on two shared CPU cores (d_model 256 with context
256 managed only a few hundred steps there); with more compute, raise them.

Needs the Debian package sword-text-kjv and PyPI pysword the first time (the text is then cached
under ~/.cache/attnkit).
"""

from __future__ import annotations

import argparse
import json
import math
import os

# On a shared machine an OpenMP thread that spins while waiting for a descheduled sibling wastes its
# core: passive waiting made 2-thread training 3x faster under load (and costs nothing when idle).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from attnkit.data import CharTokenizer, kjv_splits, random_windows  # noqa: E402
from attnkit.data.kjv import VALIDATION_BOOKS  # noqa: E402
from attnkit.evaluation import bits_per_token  # noqa: E402
from attnkit.models import TransformerLM, TransformerLMConfig  # noqa: E402
from attnkit.recipes import load_model  # noqa: E402
from attnkit.train.checkpoint import save_checkpoint, write_json_atomic  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0, help="training time budget (wall clock)")
    p.add_argument("--steps", type=int, default=None, help="train this many steps instead of for --minutes")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=None, help="default 4 * d_model")
    p.add_argument("--context", type=int, default=128, help="characters the model sees")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr of the cosine decay")
    p.add_argument("--warmup", type=int, default=30, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/kjv-lm", help="checkpoint folder")
    p.add_argument("--load", default=None, help="skip training: evaluate and sample a saved checkpoint")
    p.add_argument("--prompt", default="And God said")
    p.add_argument("--generate", type=int, default=600, help="characters to sample")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--eval-chars", type=int, default=None, help="evaluate on the first N held-out characters only")
    return p.parse_args(argv)


def lr_factor(step: int, progress: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` as progress goes 0 -> 1
    (progress is the fraction of the step or time budget used, so a time budget decays fully too)."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return warm * (min_ratio + (1.0 - min_ratio) * cosine)


@torch.no_grad()
def sample(model: TransformerLM, prompt: list[int], n: int, temperature: float, generator) -> list[int]:
    """Sample ``n`` tokens after ``prompt``, beyond the model's max_len too: when the window is full,
    restart the KV cache from the last half of the context."""
    model.eval()
    context = model.config.max_len
    ids = list(prompt)
    while n > 0:
        keep = ids[-(context // 2):] if len(ids) + 1 > context else ids
        new = min(n, context - len(keep))
        out = model.generate(torch.tensor([keep]), new, temperature=temperature, generator=generator)
        ids.extend(out[0, len(keep):].tolist())
        n -= new
    return ids


def save_run(folder: Path, model, tokenizer, steps: int, metrics: dict) -> Path:
    """An attnkit run folder: an atomic, verified checkpoint ``step-N/`` (safetensors weights + JSON
    config), ``tokenizer.json`` and ``metrics.json``; ``attnkit generate FOLDER`` reads it too."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder / "tokenizer.json")
    write_json_atomic(folder / "metrics.json", metrics)
    return save_checkpoint(folder, steps, model.state_dict(), model.config, keep=1)


def train(args, model, train_ids) -> dict:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.99),
    )
    gen = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60.0
    by_steps = args.steps is not None
    bar = tqdm(total=args.steps if by_steps else round(budget), unit="step" if by_steps else "s",
               dynamic_ncols=True, mininterval=1.0)
    start, step, ema, chars = time.perf_counter(), 0, None, 0
    model.train()
    while True:
        elapsed = time.perf_counter() - start
        progress = step / args.steps if by_steps else elapsed / budget
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor(step, progress, args.warmup, args.min_lr_ratio)
        x, y = random_windows(train_ids, args.batch_size, args.context, generator=gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step, chars = step + 1, chars + x.numel()
        value = loss.detach().item()
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        elapsed = time.perf_counter() - start
        if by_steps:
            bar.update(1)
        else:
            bar.update(min(round(elapsed), bar.total) - bar.n)
        bar.set_postfix(loss=f"{ema:.3f}", bpc=f"{ema / math.log(2):.2f}", chars_s=f"{chars / elapsed:,.0f}",
                        step=step, refresh=False)
    bar.close()
    elapsed = time.perf_counter() - start
    return {"steps": step, "train_seconds": round(elapsed, 1), "train_chars": chars,
            "chars_per_second": round(chars / elapsed), "final_train_loss_ema": ema}


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    print(f"loading the KJV (held out: {', '.join(VALIDATION_BOOKS)}) ...", flush=True)
    train_text, valid_text = kjv_splits(progress=True)

    if args.load:
        model, tok = load_model(args.load)
        metrics_file = Path(args.load) / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    else:
        tok = CharTokenizer.train(train_text)
        config = TransformerLMConfig(
            vocab_size=tok.vocab_size, d_model=args.d_model, n_heads=args.n_heads, n_layers=args.n_layers,
            d_ff=args.d_ff or 4 * args.d_model, max_len=args.context, dropout=args.dropout,
            positional="learned", norm_first=True, activation="gelu",
        )
        model = TransformerLM(config)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{len(train_text):,} training characters, {len(valid_text):,} held-out, vocabulary "
              f"{tok.vocab_size}; model: {n_params / 1e6:.2f}M parameters, d_model {args.d_model}, "
              f"{args.n_layers} layers, context {args.context}; {torch.get_num_threads()} threads", flush=True)
        train_ids = torch.tensor(tok.encode(train_text), dtype=torch.long)
        metrics = train(args, model, train_ids)
        metrics.update(params=n_params, args=vars(args))

    valid_ids = torch.tensor(tok.encode(valid_text[: args.eval_chars] if args.eval_chars else valid_text))
    t = time.perf_counter()
    bpc = bits_per_token(model, valid_ids, model.config.max_len)  # windows overlap by half a context
    metrics["valid_bpc"] = round(bpc, 4)
    print(f"\nheld-out bits per character ({', '.join(VALIDATION_BOOKS)}, {valid_ids.numel():,} chars): "
          f"{bpc:.3f}  [{time.perf_counter() - t:.0f}s]")

    gen = torch.Generator().manual_seed(args.seed)
    ids = sample(model, tok.encode(args.prompt), args.generate, args.temperature, gen)
    print(f"\nsample (temperature {args.temperature}):\n\n{tok.decode(ids)}\n")

    if not args.load:
        ckpt = save_run(Path(args.out), model, tok, metrics["steps"], metrics)
        print(f"checkpoint saved: {ckpt} (+ tokenizer.json, metrics.json in {args.out}); sample it again with\n"
              f"  python examples/train_kjv_lm.py --load {args.out} --prompt \"In the beginning\"")
    return metrics


if __name__ == "__main__":
    main()
