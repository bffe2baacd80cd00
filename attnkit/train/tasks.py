"""Training tasks: deterministic batches as a function of their index, and (logits, targets)."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor


def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


class LanguageModelingTask:
    """Next-token prediction on random windows of a token stream.

    Args:
        train: 1-D token ids of the training text; ``valid`` those of the held-out text.
        context: window length T (inputs are T tokens, targets the next T).
        batch_size: windows per batch (the global batch when distributed).
        eval_batches: how many batches of consecutive, non-overlapping windows of ``valid`` to score.
    """

    def __init__(self, train: Tensor, valid: Tensor, *, context: int, batch_size: int, seed: int = 0,
                 eval_batches: int = 20):
        for name, t in (("train", train), ("valid", valid)):
            if t.dim() != 1 or t.numel() <= context + 1:
                raise ValueError(f"{name} must be a 1-D token stream longer than context+1={context + 1}, "
                                 f"got shape {tuple(t.shape)}")
        self.train_tokens, self.valid_tokens = train.long(), valid.long()
        self.context, self.batch_size, self.seed, self.n_eval = context, batch_size, seed, eval_batches

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        g = _generator(self.seed, index)
        starts = torch.randint(0, self.train_tokens.numel() - self.context - 1, (self.batch_size,), generator=g)
        window = torch.stack([self.train_tokens[s : s + self.context + 1] for s in starts.tolist()])
        return window[:, :-1], window[:, 1:]  # (B, T) inputs, (B, T) targets

    def eval_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        T, B = self.context, self.batch_size
        n_windows = min((self.valid_tokens.numel() - 1) // T, self.n_eval * B)
        for i in range(0, n_windows, B):
            rows = range(i, min(i + B, n_windows))
            window = torch.stack([self.valid_tokens[r * T : r * T + T + 1] for r in rows])
            yield window[:, :-1], window[:, 1:]

    def forward(self, model, batch):
        x, y = batch
        return model(x), y


class Seq2SeqTask:
    """Sequence-to-sequence (translation) with batches of similar lengths.

    Args:
        train, valid: pairs of token-id lists (source, target), without bos/eos.
        pad_id, bos_id, eos_id: special ids; targets are ``bos + tgt`` -> ``tgt + eos``.
        batch_size: pairs per batch (the global batch when distributed).
        max_len: longer sequences are cut to this many tokens.
    """

    def __init__(self, train: Sequence[tuple[list[int], list[int]]], valid: Sequence[tuple[list[int], list[int]]],
                 *, pad_id: int, bos_id: int, eos_id: int, batch_size: int, seed: int = 0, max_len: int = 128):
        if not train:
            raise ValueError("train holds no pairs")
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.batch_size, self.seed, self.max_len = batch_size, seed, max_len
        self.train, self.valid = list(train), list(valid)
        # Batches of similar length: sort by (target, source) length once; the order of batches is
        # shuffled per epoch from the seed, so batch(i) depends on i alone.
        order = sorted(range(len(self.train)), key=lambda j: (len(self.train[j][1]), len(self.train[j][0]), j))
        self.train_batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def collate(self, pairs) -> tuple[Tensor, Tensor, Tensor]:
        """-> src (B, S), tgt_in (B, T) starting with bos, tgt_out (B, T) ending with eos, -100 at padding."""
        L = self.max_len
        srcs = [s[:L] for s, _ in pairs]
        tgts = [t[: L - 1] for _, t in pairs]
        S, T = max(len(s) for s in srcs), max(len(t) for t in tgts) + 1
        src = torch.full((len(pairs), S), self.pad_id, dtype=torch.long)
        tgt_in = torch.full((len(pairs), T), self.pad_id, dtype=torch.long)
        tgt_out = torch.full((len(pairs), T), -100, dtype=torch.long)
        for i, (s, t) in enumerate(zip(srcs, tgts)):
            src[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            tgt_in[i, : len(t) + 1] = torch.tensor([self.bos_id, *t], dtype=torch.long)
            tgt_out[i, : len(t) + 1] = torch.tensor([*t, self.eos_id], dtype=torch.long)
        return src, tgt_in, tgt_out

    def batch(self, index: int):
        n = len(self.train_batches)
        epoch, i = divmod(index, n)
        perm = torch.randperm(n, generator=_generator(self.seed, epoch))
        return self.collate([self.train[j] for j in self.train_batches[int(perm[i])]])

    def eval_batches(self):
        for i in range(0, len(self.valid), self.batch_size):
            yield self.collate(self.valid[i : i + self.batch_size])

    def forward(self, model, batch):
        src, tgt_in, tgt_out = batch
        return model(src, tgt_in, src_mask=src != self.pad_id), tgt_out


class MaskedLMTask(LanguageModelingTask):
    """BERT's masked-LM objective on windows of a token stream: a fraction ``p`` of positions is
    chosen (80% replaced by ``mask_id``, 10% by a random token, 10% kept) and only those are scored.
    The masking of batch i is drawn from the seed and i, like the windows."""

    def __init__(self, train: Tensor, valid: Tensor, *, mask_id: int, vocab_size: int, p: float = 0.15, **kw):
        super().__init__(train, valid, **kw)
        self.mask_id, self.vocab_size, self.p = mask_id, vocab_size, p

    def _mask(self, window: Tensor, index: int) -> tuple[Tensor, Tensor]:
        from ..models import mask_tokens

        return mask_tokens(window, mask_id=self.mask_id, vocab_size=self.vocab_size, p=self.p,
                           generator=_generator(self.seed + 7919, index))

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        x, _ = super().batch(index)
        return self._mask(x, index)

    def eval_batches(self):
        for i, (x, _) in enumerate(super().eval_batches()):
            yield self._mask(x, -1 - i)
