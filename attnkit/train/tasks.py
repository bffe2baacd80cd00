"""Training tasks: deterministic batches as a function of their index, and the loss a task is scored by.

A task gives the trainer three things (the :class:`Task` protocol): ``batch(i)``, a pure function of
``i`` and the task's seed (so a resumed run sees exactly the batches it would have seen);
``eval_batches()``, the held-out batches; and ``loss(model, batch) -> TokenLoss(sum, count)``, the
summed token loss and the number of tokens it counts. A task may also have ``scores(model) -> dict``:
held-out figures other than the loss (BLEU for translation), logged with each evaluation. A model
that computes its own loss (``owns_loss = True``, e.g. ReformerLM's chunked loss that never holds the
whole logits) is trained through it: the task passes the targets to the model's forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.batching import pad_sequences, random_windows, token_batches
from ..nn.chunked import TokenLoss
from ..seeding import derive_seed

IGNORE = -100  # target id left out of every loss


class Task(Protocol):
    """What the trainer needs from a task."""

    def batch(self, index: int) -> Any: ...

    def eval_batches(self) -> Iterable[Any]: ...

    def loss(self, model: torch.nn.Module, batch: Any, *, label_smoothing: float = 0.0) -> TokenLoss: ...


def _generator(*parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def token_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> TokenLoss:
    """Summed cross-entropy of (B, T, V) logits against (B, T) targets (``IGNORE`` left out), and the count."""
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE,
                            label_smoothing=label_smoothing, reduction="sum")
    return TokenLoss(total, (targets != IGNORE).sum())


def owns_loss(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or the module a DDP wrapper holds) computes its token loss in its forward."""
    return bool(getattr(getattr(model, "module", model), "owns_loss", False))


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
        """-> inputs (B, T), targets (B, T): windows at offsets drawn from (seed, index)."""
        return random_windows(self.train_tokens, self.batch_size, self.context, _generator(self.seed, "lm", index))

    def eval_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        T, B = self.context, self.batch_size
        n_windows = min((self.valid_tokens.numel() - 1) // T, self.n_eval * B)
        for i in range(0, n_windows, B):
            rows = torch.arange(i, min(i + B, n_windows))
            window = self.valid_tokens[rows[:, None] * T + torch.arange(T + 1)]  # (b, T + 1)
            yield window[:, :-1], window[:, 1:]

    def loss(self, model, batch, *, label_smoothing: float = 0.0) -> TokenLoss:
        return next_token_loss(model, *batch, label_smoothing=label_smoothing)


def next_token_loss(model, x: Tensor, y: Tensor, *, label_smoothing: float = 0.0) -> TokenLoss:
    """A language model's loss on inputs x and targets y (B, T), through its own loss if it has one."""
    if owns_loss(model):
        return model(x, targets=y, label_smoothing=label_smoothing)
    return token_loss(model(x), y, label_smoothing)


class DuplicationTask:
    """The Reformer paper's duplication task as language modelling: sequences ``0 w 0 w`` of ``length``
    tokens (see :mod:`attnkit.data.synthetic`), scored on the second copy of ``w`` only. Training
    batches are drawn from (seed, index), held-out ones from a separate stream."""

    def __init__(self, *, length: int, vocab_size: int, batch_size: int, seed: int = 0, eval_batches: int = 4):
        from ..data.synthetic import duplication_sequences

        duplication_sequences(1, length, vocab_size)  # checks the arguments
        self.length, self.vocab_size, self.batch_size = length, vocab_size, batch_size
        self.seed, self.n_eval = seed, eval_batches

    def _batch(self, *parts) -> tuple[Tensor, Tensor]:
        from ..data.synthetic import duplication_sequences, second_copy_targets

        seqs = duplication_sequences(self.batch_size, self.length, self.vocab_size, _generator(self.seed, *parts))
        return second_copy_targets(seqs, IGNORE)

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        """-> inputs (B, length - 1), targets (B, length - 1) with IGNORE outside the second copy."""
        return self._batch("duplication", index)

    def eval_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(self.n_eval):
            yield self._batch("duplication-held-out", i)

    def loss(self, model, batch, *, label_smoothing: float = 0.0) -> TokenLoss:
        return next_token_loss(model, *batch, label_smoothing=label_smoothing)


class Seq2SeqTask:
    """Sequence-to-sequence (translation) with batches of similar lengths.

    Args:
        train, valid: pairs of token-id lists (source, target), without bos/eos.
        pad_id, bos_id, eos_id: special ids; targets are ``bos + tgt`` -> ``tgt + eos``.
        batch_size: pairs per batch (the global batch when distributed).
        max_len: longer sequences are cut to this many tokens.
        scorer: ``model -> {name: value}``, held-out figures logged at each evaluation (e.g. BLEU).
    """

    def __init__(self, train: Sequence[tuple[list[int], list[int]]], valid: Sequence[tuple[list[int], list[int]]],
                 *, pad_id: int, bos_id: int, eos_id: int, batch_size: int, seed: int = 0, max_len: int = 128,
                 scorer: Callable[[torch.nn.Module], dict[str, float]] | None = None):
        if not train:
            raise ValueError("train holds no pairs")
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.batch_size, self.seed, self.max_len = batch_size, seed, max_len
        self.train, self.valid = list(train), list(valid)
        self.scorer = scorer
        # Batches of similar length, formed once; their order is shuffled per epoch from the seed, so
        # batch(i) depends on i alone.
        lengths = [max(len(s), len(t)) for s, t in self.train]
        self.train_batches = token_batches(lengths, max_tokens=2**62, shuffle=False, max_batch_size=batch_size)

    def collate(self, pairs) -> tuple[Tensor, Tensor, Tensor]:
        """-> src (B, S), tgt_in (B, T) starting with bos, tgt_out (B, T) ending with eos, IGNORE at padding."""
        L = self.max_len
        srcs = [s[:L] for s, _ in pairs]
        tgts = [t[: L - 1] for _, t in pairs]
        src = pad_sequences(srcs, self.pad_id)
        tgt_in = pad_sequences([[self.bos_id, *t] for t in tgts], self.pad_id)
        tgt_out = pad_sequences([[*t, self.eos_id] for t in tgts], IGNORE)
        return src, tgt_in, tgt_out

    def batch(self, index: int):
        n = len(self.train_batches)
        epoch, i = divmod(index, n)
        perm = torch.randperm(n, generator=_generator(self.seed, "seq2seq", epoch))
        return self.collate([self.train[j] for j in self.train_batches[int(perm[i])]])

    def eval_batches(self):
        for i in range(0, len(self.valid), self.batch_size):
            yield self.collate(self.valid[i : i + self.batch_size])

    def scores(self, model) -> dict[str, float]:
        return {} if self.scorer is None else self.scorer(model)

    def loss(self, model, batch, *, label_smoothing: float = 0.0) -> TokenLoss:
        src, tgt_in, tgt_out = batch
        logits = model(src, tgt_in, src_key_mask=src != self.pad_id)
        return token_loss(logits, tgt_out, label_smoothing)


def mask_tokens(tokens: Tensor, *, mask_id: int, vocab_size: int, p: float = 0.15, special: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT's masking for masked-LM training (Devlin et al. 2019, section 3.1).

    A fraction ``p`` of the positions is chosen, never one where ``special`` (B, T) is True (padding,
    separators); of the chosen ones 80% become ``mask_id``, 10% a random token from [0, vocab_size)
    and 10% stay as they are. Returns (inputs, labels): labels hold the original token at the chosen
    positions and ``IGNORE`` elsewhere, so only the chosen positions are scored.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} must be an id in [0, vocab_size={vocab_size})")
    draw = torch.rand(tokens.shape, generator=generator)
    chosen = draw < p
    if special is not None:
        chosen &= ~special.cpu()
    labels = tokens.masked_fill(~chosen, IGNORE)
    # one more draw per position decides between [MASK] (80%), a random token (10%) and keeping (10%)
    action = torch.rand(tokens.shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, tokens.shape, generator=generator)
    inputs = tokens.clone()
    inputs[chosen & (action < 0.8)] = mask_id
    swap = chosen & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random_ids[swap]
    return inputs, labels


EVAL_MASK_P = 0.15  # held-out masked-token figures always mask BERT's 15%, whatever the training rate


class MaskedLMTask(LanguageModelingTask):
    """BERT's masked-LM objective on windows of a token stream (see :func:`mask_tokens`): only the chosen
    positions are scored. The masking of batch i is drawn from the seed and i, like the windows.

    ``p`` is the training masking rate (BERT: 0.15; Wettig et al. 2023 find 0.4 better for pre-training
    under a budget); the evaluation batches mask ``EVAL_MASK_P`` so that runs with different rates are
    scored on the same positions.
    """

    def __init__(self, train: Tensor, valid: Tensor, *, mask_id: int, vocab_size: int, p: float = 0.15, **kw):
        super().__init__(train, valid, **kw)
        self.mask_id, self.vocab_size, self.p = mask_id, vocab_size, p

    def _mask(self, window: Tensor, p: float, *parts) -> tuple[Tensor, Tensor]:
        return mask_tokens(window, mask_id=self.mask_id, vocab_size=self.vocab_size, p=p,
                           generator=_generator(self.seed, "mlm", *parts))

    def batch(self, index: int) -> tuple[Tensor, Tensor]:
        x, _ = super().batch(index)
        return self._mask(x, self.p, "train", index)

    def eval_batches(self):
        for i, (x, _) in enumerate(super().eval_batches()):
            yield self._mask(x, EVAL_MASK_P, "eval", i)

    def loss(self, model, batch, *, label_smoothing: float = 0.0) -> TokenLoss:
        inputs, labels = batch
        chosen = labels != IGNORE
        return token_loss(model(inputs, positions=chosen), labels[chosen], label_smoothing)

    def scores(self, model) -> dict[str, float]:
        """Masked-token accuracy on the evaluation batches (the argmax at the chosen positions), the
        pre-training curve's second figure beside the loss."""
        device = next(model.parameters()).device
        correct = count = 0
        for inputs, labels in self.eval_batches():
            labels = labels.to(device)
            chosen = labels != IGNORE
            predicted = model(inputs.to(device), positions=chosen).argmax(-1)  # (N,)
            correct += int((predicted == labels[chosen]).sum())
            count += int(chosen.sum())
        return {"valid_masked_accuracy": correct / max(count, 1)}
