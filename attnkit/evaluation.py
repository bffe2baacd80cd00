"""Evaluation on real data: bits per token for language models, BLEU/chrF for translation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def bits_per_token(model, ids: Tensor, context: int, batch_size: int | None = None) -> float:
    """Mean -log2 p(token | preceding tokens) over ``ids[1:]`` with a sliding window.

    Windows of ``context`` tokens overlap by half and each scores only the tokens the previous one did
    not, so every scored token (after the first window) sees at least context / 2 tokens before it.
    ``batch_size`` windows run at once (default: 16, fewer for long windows, about 32K tokens at once).
    """
    model.eval()
    n_targets = ids.numel() - 1
    context = min(context, n_targets)
    batch_size = batch_size or max(1, min(16, 2**15 // context))
    stride = max(1, context // 2)
    starts = list(range(0, n_targets - context + 1, stride))
    if starts[-1] + context < n_targets:
        starts.append(n_targets - context)
    windows, covered = [], 0  # (start, number of leading positions already scored)
    for s in starts:
        windows.append((s, max(covered - s, 0)))
        covered = s + context
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        idx = torch.tensor([s for s, _ in chunk])[:, None] + torch.arange(context + 1)  # (B, context + 1)
        window = ids[idx]
        nll = F.cross_entropy(model(window[:, :-1]).transpose(1, 2).float(), window[:, 1:], reduction="none")
        keep = torch.arange(context)[None, :] >= torch.tensor([skip for _, skip in chunk])[:, None]
        total += float(nll[keep].sum())
        count += int(keep.sum())
    return total / count / math.log(2)


@torch.no_grad()
def translate(model, tokenizer, texts: Sequence[str], *, beam_size: int = 1, max_new_tokens: int = 100,
              batch_size: int = 64, length_penalty: float = 1.0) -> list[str]:
    """Translate ``texts`` with a seq2seq model that has ``generate(src, n, bos_id=, eos_id=, beam_size=)``."""
    model.eval()
    pad = tokenizer.pad_id
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch together
    out: list[str] = [""] * len(texts)
    max_len = getattr(model.config, "max_len", None)  # None: sources are not cut
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        encoded = [tokenizer.encode(texts[j])[: max_len] for j in idx]
        src = torch.full((len(idx), max(len(e) for e in encoded)), pad, dtype=torch.long)
        for r, e in enumerate(encoded):
            src[r, : len(e)] = torch.tensor(e, dtype=torch.long)
        hyp = model.generate(src, max_new_tokens, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                             src_key_mask=src != pad, beam_size=beam_size, length_penalty=length_penalty)
        for r, j in enumerate(idx):
            ids = hyp[r, 1:].tolist()
            if tokenizer.eos_id in ids:
                ids = ids[: ids.index(tokenizer.eos_id)]
            out[j] = tokenizer.decode(ids).strip()
    return out


def bleu_chrf(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus sacreBLEU, chrF and BLEU's length ratio; ``references[i]`` lists the accepted translations of
    sentence i."""
    try:
        import sacrebleu
    except ImportError as e:
        raise ImportError("BLEU and chrF need sacrebleu: `pip install sacrebleu`") from e
    n_refs = max(len(r) for r in references)
    # sacrebleu takes reference streams: stream k holds the k-th reference of every sentence (or None)
    streams = [[r[k] if k < len(r) else None for r in references] for k in range(n_refs)]
    bleu = sacrebleu.corpus_bleu(list(hypotheses), streams)
    return {
        "bleu": bleu.score,
        "chrf": sacrebleu.corpus_chrf(list(hypotheses), streams).score,
        # hypothesis words over the closest reference lengths: below 1, BLEU's brevity penalty applies
        "length_ratio": bleu.sys_len / max(bleu.ref_len, 1),
    }
