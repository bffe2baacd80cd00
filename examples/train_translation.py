"""Train German->English translation models on the Ding dictionary's example sentences.

    python examples/train_translation.py                          # both models, 15 minutes each
    python examples/train_translation.py --model transformer --minutes 5
    python examples/train_translation.py --model rnn --steps 20 --test-limit 50   # smoke test

Data: the sentence pairs of Debian trans-de-en (attnkit.data.translation), split by the project's
sha1 rule (about 16,300 training, 960 validation, 940 test pairs). One byte-level BPE vocabulary is
trained on the German and English training sentences together, so the Transformer can share one
embedding matrix between encoder, decoder and output layer.

Models: the encoder-decoder Transformer (pre-norm, shared embeddings) and the RNN baseline (a
bidirectional GRU encoder and a GRU decoder with additive attention). Each trains for --minutes of
wall clock (or --steps) with AdamW, warm-up + cosine decay, label smoothing, gradient clipping and
length-bucketed batches; the weights with the lowest validation loss are kept. The defaults (a
small Transformer: d_model 128, 2+2 layers, BPE 4000, dropout 0.1) won the tuning runs on two
shared CPU cores, where a bigger model gets too few steps; with more compute raise them (for instance
--d-model 256 --n-layers 3 --d-ff 1024). Then the script
prints sacreBLEU and chrF on the TEST pairs (never trained on, never used for choices; each distinct
German sentence is translated once and scored against all its translations) and a few translations,
and saves each model as an attnkit run folder --out/<model>/ (atomic checkpoint step-N/ with
safetensors weights and JSON config, tokenizer.json, metrics.json), which `attnkit translate` reads.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from pathlib import Path

# see examples/train_kjv_lm.py: spinning OpenMP threads are slow on a shared machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from attnkit.data import BPETokenizer, load_de_en, pad_sequences, references_by_source, token_batches  # noqa: E402
from attnkit.evaluation import bleu_chrf, translate  # noqa: E402
from attnkit.models import RNNSeq2Seq, RNNSeq2SeqConfig, Transformer, TransformerConfig  # noqa: E402
from attnkit.train.checkpoint import save_checkpoint, write_json_atomic  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=("transformer", "rnn", "both"), default="both")
    p.add_argument("--minutes", type=float, default=15.0, help="training time budget per model (wall clock)")
    p.add_argument("--steps", type=int, default=None, help="train this many steps instead of for --minutes")
    p.add_argument("--vocab-size", type=int, default=4000, help="joint German+English byte-level BPE vocabulary")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="padded tokens per batch and side (default: 1000 transformer, 2000 rnn)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 3e-3 transformer, 2e-3 rnn)")
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    p.add_argument("--min-lr-ratio", type=float, default=0.02, help="final lr / peak lr of the cosine decay")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--dropout", type=float, default=None,
                   help="default: 0.1 transformer (without it, it overfits after 6 epochs), 0 rnn (its "
                        "validation loss still falls at the end of 15 minutes)")
    # Transformer
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-layers", type=int, default=2, help="encoder layers (and decoder layers)")
    p.add_argument("--d-ff", type=int, default=512)
    # RNN
    p.add_argument("--cell", choices=("gru", "lstm"), default="gru")
    p.add_argument("--rnn-embed", type=int, default=256)
    p.add_argument("--rnn-hidden", type=int, default=256)
    # evaluation
    p.add_argument("--beam", type=int, default=4, help="beam size at test time (1 = greedy)")
    p.add_argument("--eval-every", type=float, default=60.0, help="seconds between validation-loss checks")
    p.add_argument("--test-limit", type=int, default=None, help="score only the first N test pairs")
    p.add_argument("--show", type=int, default=8, help="test translations to print")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/translation", help="checkpoint folder (one sub-folder per model)")
    return p.parse_args(argv)


# --- data -------------------------------------------------------------------------------------

def encode_pairs(tok: BPETokenizer, pairs) -> list[tuple[list[int], list[int]]]:
    """(source ids, <bos> + target ids + <eos>) for each pair (the source has no specials, as in
    attnkit.train.Seq2SeqTask and attnkit.evaluation.translate)."""
    src = tok.encode_batch([p.de for p in pairs])
    tgt = tok.encode_batch([p.en for p in pairs], bos=True, eos=True)
    return list(zip(src, tgt))


def make_batches(examples, max_tokens, pad_id, generator=None, shuffle=True):
    """Length-bucketed (src, tgt) batches: each holds at most ``max_tokens`` padded tokens per side."""
    lengths = [max(len(s), len(t)) for s, t in examples]
    for idx in token_batches(lengths, max_tokens, shuffle=shuffle, generator=generator):
        yield (pad_sequences([examples[i][0] for i in idx], pad_id),
               pad_sequences([examples[i][1] for i in idx], pad_id))


def seq2seq_loss(model, src, tgt, pad_id, label_smoothing=0.0, reduction="mean"):
    """Teacher forcing: predict tgt[:, 1:] from tgt[:, :-1]; padding is ignored."""
    logits = model(src, tgt[:, :-1])  # (B, T - 1, V)
    return F.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], ignore_index=pad_id,
                           label_smoothing=label_smoothing, reduction=reduction)


@torch.no_grad()
def validation_loss(model, examples, pad_id, max_tokens) -> float:
    """Mean per-token cross-entropy (no label smoothing) over ``examples``."""
    model.eval()
    total, count = 0.0, 0
    for src, tgt in make_batches(examples, max_tokens, pad_id, shuffle=False):
        total += float(seq2seq_loss(model, src, tgt, pad_id, reduction="sum"))
        count += int((tgt[:, 1:] != pad_id).sum())
    model.train()
    return total / count


# --- models -----------------------------------------------------------------------------------

# chosen on validation loss/BLEU in 10- and 15-minute runs on 2 shared CPU cores (examples/RESULTS.md)
DEFAULTS = {
    "transformer": {"lr": 3e-3, "max_tokens": 1000, "dropout": 0.1},
    "rnn": {"lr": 2e-3, "max_tokens": 2000, "dropout": 0.0},
}


def build_model(kind: str, args, vocab_size: int, pad_id: int):
    if kind == "transformer":
        config = TransformerConfig(
            src_vocab_size=vocab_size, tgt_vocab_size=vocab_size, d_model=args.d_model, n_heads=args.n_heads,
            n_layers=args.n_layers, d_ff=args.d_ff, max_len=256,
            dropout=DEFAULTS[kind]["dropout"] if args.dropout is None else args.dropout, positional="sinusoidal",
            norm_first=True, activation="relu", share_embeddings=True, tie_output=True, pad_id=pad_id,
        )
        return Transformer(config)
    config = RNNSeq2SeqConfig(
        src_vocab_size=vocab_size, tgt_vocab_size=vocab_size, d_embed=args.rnn_embed, d_hidden=args.rnn_hidden,
        cell=args.cell, n_layers=1, dropout=DEFAULTS[kind]["dropout"] if args.dropout is None else args.dropout,
        max_len=256,
        pad_id=pad_id,
    )
    return RNNSeq2Seq(config)


def lr_factor(step: int, progress: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` as progress goes 0 -> 1."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return warm * (min_ratio + (1.0 - min_ratio) * cosine)


def train(kind, model, args, train_ex, valid_ex, pad_id) -> dict:
    lr = args.lr or DEFAULTS[kind]["lr"]
    max_tokens = args.max_tokens or DEFAULTS[kind]["max_tokens"]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60.0
    by_steps = args.steps is not None
    bar = tqdm(total=args.steps if by_steps else round(budget), unit="step" if by_steps else "s",
               desc=kind, dynamic_ncols=True, mininterval=1.0)
    best = {"valid_loss": float("inf")}
    step, epoch, tokens, ema, eval_time = 0, 0, 0, None, 0.0
    start = last_eval = time.perf_counter()

    def check_validation():
        nonlocal eval_time
        t = time.perf_counter()
        loss = validation_loss(model, valid_ex, pad_id, max_tokens)
        if loss < best["valid_loss"]:
            best.update(valid_loss=loss, step=step, state=copy.deepcopy(model.state_dict()))
        eval_time += time.perf_counter() - t
        return loss

    model.train()
    done = False
    while not done:
        epoch += 1
        for src, tgt in make_batches(train_ex, max_tokens, pad_id, generator=gen):
            elapsed = time.perf_counter() - start
            progress = step / args.steps if by_steps else elapsed / budget
            if progress >= 1.0:
                done = True
                break
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(step, progress, args.warmup, args.min_lr_ratio)
            loss = seq2seq_loss(model, src, tgt, pad_id, args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            step += 1
            tokens += int((tgt[:, 1:] != pad_id).sum()) + int((src != pad_id).sum())
            value = loss.detach().item()
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            now = time.perf_counter()
            if now - last_eval >= args.eval_every:
                valid = check_validation()
                tqdm.write(f"  step {step:5d}  epoch {epoch:2d}  {now - start:5.0f}s  train loss {ema:.3f}  "
                           f"validation loss {valid:.3f}")
                last_eval = time.perf_counter()
            elapsed = time.perf_counter() - start
            bar.update(1 if by_steps else min(round(elapsed), bar.total) - bar.n)
            bar.set_postfix(loss=f"{ema:.3f}", epoch=epoch, step=step, tok_s=f"{tokens / elapsed:,.0f}",
                            best_valid=f"{best['valid_loss']:.3f}", refresh=False)
    final_valid = check_validation()
    bar.close()
    elapsed = time.perf_counter() - start
    model.load_state_dict(best.pop("state"))
    print(f"{kind}: {step} steps, {epoch} epochs, {elapsed:.0f}s ({eval_time:.0f}s of it validation); "
          f"validation loss final {final_valid:.3f}, best {best['valid_loss']:.3f} at step {best['step']} (kept)",
          flush=True)
    return {"steps": step, "epochs": epoch, "lr": lr, "max_tokens": max_tokens, "train_seconds": round(elapsed, 1),
            "tokens_per_second": round(tokens / elapsed), "final_valid_loss": round(final_valid, 4),
            "best_valid_loss": round(best["valid_loss"], 4), "best_step": best["step"]}


def save_run(folder: Path, model, tokenizer, steps: int, metrics: dict) -> Path:
    """An attnkit run folder: an atomic, verified checkpoint ``step-N/`` (safetensors weights + JSON
    config), ``tokenizer.json`` and ``metrics.json``; ``attnkit translate FOLDER`` reads it too."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder / "tokenizer.json")
    write_json_atomic(folder / "metrics.json", metrics)
    return save_checkpoint(folder, steps, model.state_dict(), model.config, keep=1)


def evaluate(model, tok, pairs, beam: int) -> tuple[dict, list[str], dict[str, list[str]]]:
    """Translate each distinct German sentence once and score it against all its translations
    (sacreBLEU BLEU and chrF, the same as ``attnkit eval``)."""
    refs = references_by_source(pairs)
    sources = list(refs)
    hyps = translate(model, tok, sources, beam_size=beam)
    scores = {k: round(v, 2) for k, v in bleu_chrf(hyps, [refs[s] for s in sources]).items()}
    return scores, hyps, refs


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_de_en()
    train_pairs, valid_pairs, test_pairs = splits["train"], splits["validation"], splits["test"]
    if args.test_limit:
        test_pairs = test_pairs[: args.test_limit]
    print(f"trans-de-en pairs: {len(train_pairs):,} train, {len(valid_pairs):,} validation, "
          f"{len(test_pairs):,} test", flush=True)
    tok = BPETokenizer.train([p.de for p in train_pairs] + [p.en for p in train_pairs], vocab_size=args.vocab_size)
    train_ex, valid_ex = encode_pairs(tok, train_pairs), encode_pairs(tok, valid_pairs)
    print(f"joint byte-level BPE vocabulary: {tok.vocab_size}", flush=True)

    kinds = ["transformer", "rnn"] if args.model == "both" else [args.model]
    results = {}
    for kind in kinds:
        torch.manual_seed(args.seed)
        model = build_model(kind, args, tok.vocab_size, tok.pad_id)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"\n{kind}: {n_params / 1e6:.2f}M parameters, {torch.get_num_threads()} threads", flush=True)
        metrics = train(kind, model, args, train_ex, valid_ex, tok.pad_id)
        t = time.perf_counter()
        valid, _, _ = evaluate(model, tok, valid_pairs, beam=1)
        test, hyps, refs = evaluate(model, tok, test_pairs, beam=args.beam)
        metrics.update(params=n_params, valid_greedy=valid, test=test, beam=args.beam, test_sentences=len(refs),
                       decode_seconds=round(time.perf_counter() - t, 1), args=vars(args))
        print(f"{kind}: validation (greedy) BLEU {valid['bleu']:.2f} chrF {valid['chrf']:.2f} | "
              f"TEST ({len(refs)} sentences, beam {args.beam}) BLEU {test['bleu']:.2f} chrF {test['chrf']:.2f}")
        for (src, ref), h in list(zip(refs.items(), hyps))[: args.show]:
            print(f"  DE  {src}\n  REF {ref[0]}\n  HYP {h}\n")
        ckpt = save_run(Path(args.out) / kind, model, tok, metrics["steps"], metrics)
        print(f"saved {ckpt}; try: attnkit translate {Path(args.out) / kind} \"Wo ist der Bahnhof?\"")
        results[kind] = metrics

    if len(results) > 1:
        print("\nsummary (test pairs):")
        for kind, m in results.items():
            print(f"  {kind:12s} BLEU {m['test']['bleu']:5.2f}  chrF {m['test']['chrf']:5.2f}  "
                  f"{m['params'] / 1e6:.1f}M params  {m['steps']} steps  {m['train_seconds']:.0f}s")
    return results


if __name__ == "__main__":
    main()
