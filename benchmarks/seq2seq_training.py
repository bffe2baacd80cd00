"""Training throughput of the encoder-decoder Transformer against the RNN with attention, at equal
parameter counts: "Transformers train in parallel".

    python benchmarks/seq2seq_training.py                      # target lengths 16 .. 128, batch 64
    python benchmarks/seq2seq_training.py --lengths 32 --repeats 1

One training step = forward, loss, backward and an AdamW update, on a batch of random token ids with
source and target of the same length (the throughput does not depend on the ids). The RNN
(``RNNSeq2Seq``: GRU encoder and decoder, additive attention, as the ``de_en_rnn`` preset) must run its
decoder one position after another; the Transformer computes every target position at once. The
Transformer's feed-forward width is chosen so that both models have the same number of parameters
(within 2%). Reported: target tokens per second, the median of ``--repeats`` timings of ``--steps``
steps each after a warm-up step, with the spread (min-max). Writes benchmarks/results/seq2seq_training.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from attnkit.bench import provenance, write_results
from attnkit.models import RNNSeq2Seq, RNNSeq2SeqConfig, Transformer, TransformerConfig

RESULTS = Path(__file__).resolve().parent / "results"


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(vocab: int, max_len: int) -> dict[str, torch.nn.Module]:
    """The two models, the Transformer's d_ff matched to the RNN's parameter count."""
    torch.manual_seed(0)
    rnn = RNNSeq2Seq(RNNSeq2SeqConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, d_embed=256, d_hidden=256,
                                      cell="gru", dropout=0.0))
    target = n_params(rnn)

    def transformer(d_ff: int) -> Transformer:
        return Transformer(TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=256, n_heads=4,
                                             n_layers=3, d_ff=d_ff, max_len=max_len, dropout=0.0,
                                             share_embeddings=True))

    sizes = {d_ff: n_params(transformer(d_ff)) for d_ff in range(64, 2049, 32)}
    best = min(sizes, key=lambda d: abs(sizes[d] - target))
    torch.manual_seed(0)
    return {"transformer": transformer(best), "rnn": rnn}


def throughput(model, batch: int, length: int, vocab: int, steps: int, repeats: int) -> list[float]:
    """Target tokens per second of ``repeats`` timings of ``steps`` training steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, vocab, (batch, length), generator=g)
    tgt = torch.randint(4, vocab, (batch, length + 1), generator=g)
    model.train()

    def step():
        logits = model(src, tgt[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, vocab), tgt[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps * batch * length / (time.perf_counter() - start))
    return rates


def markdown(meta: dict, rows: list[dict]) -> str:
    load = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    lines = [
        "# Training throughput: Transformer against RNN with attention, equal parameter counts", "",
        f"`{meta['command']}` at commit {meta['commit']}; torch {meta['torch']}, {meta['cpu_model']}, "
        f"{meta['cpu_count']} CPUs, {meta['threads']} threads; load average {load(meta['load_before'])} before, "
        f"{load(meta['load_after'])} after.",
        f"Transformer: {meta['settings']['transformer']}. RNN: {meta['settings']['rnn']}. Batch {meta['batch']}, "
        f"vocabulary {meta['vocab']:,}, source length = target length, AdamW. Target tokens per second (forward, "
        f"backward, update): median of {meta['repeats']} timings of {meta['steps']} steps (min-max).", "",
        "| target length | Transformer (tokens/s) | RNN (tokens/s) | Transformer / RNN |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        cell = lambda xs: f"{statistics.median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})"  # noqa: E731
        lines.append(f"| {r['length']} | {cell(r['transformer'])} | {cell(r['rnn'])} | {r['ratio']:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "seq2seq_training"))
    args = p.parse_args(argv)
    models = build(args.vocab, max(args.lengths) + 1)
    c = models["transformer"].config
    meta = {**provenance(__file__, sys.argv[1:] if argv is None else argv), "threads": torch.get_num_threads(),
            "batch": args.batch, "vocab": args.vocab, "steps": args.steps, "repeats": args.repeats,
            "parameters": {name: n_params(m) for name, m in models.items()},
            "settings": {
                "transformer": f"{n_params(models['transformer']):,} parameters, d_model {c.d_model}, {c.n_heads} "
                               f"heads, {c.n_layers}+{c.n_layers} layers, d_ff {c.d_ff}, shared embeddings",
                "rnn": f"{n_params(models['rnn']):,} parameters, GRU, embeddings 256, hidden 256, additive attention",
            }}
    rows = []
    for length in args.lengths:
        row = {"length": length}
        for name, model in models.items():
            row[name] = throughput(model, args.batch, length, args.vocab, args.steps, args.repeats)
        row["ratio"] = statistics.median(row["transformer"]) / statistics.median(row["rnn"])
        rows.append(row)
        print(f"length {length}: Transformer {statistics.median(row['transformer']):,.0f} tokens/s, RNN "
              f"{statistics.median(row['rnn']):,.0f} ({row['ratio']:.1f}x)", flush=True)
    print(write_results(args.out, meta, rows, markdown))


if __name__ == "__main__":
    main()
