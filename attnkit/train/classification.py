"""Sequence classification as a training task: labelled token sequences -> padded batches, scored by
the summed cross-entropy of the model's logits (B, n_classes) against the labels (one count per example).
Also the pre-training of the ELMo-style BiLM such a classifier can start from (:class:`BiLMTask`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.batching import pad_sequences
from ..nn.chunked import TokenLoss
from .tasks import LanguageModelingTask, _generator, derive_seed

Batch = tuple[Tensor, Tensor, Tensor]  # tokens (B, T), key_mask (B, T), labels (B,)


def subsample(n: int, k: int, seed: int) -> list[int]:
    """The indices of the ``k`` examples (of ``n``) a run with ``train_examples = k`` trains on, in their
    original order; ``k = 0`` or ``k >= n``: all of them.

    The rule: the first ``k`` of one permutation drawn from ``seed``, so for one seed a smaller sample is
    always a subset of a larger one (the 1,000 examples are among the 10,000).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k (the examples kept) must be an int >= 0, got {k!r}")
    if k == 0 or k >= n:
        return list(range(n))
    perm = torch.randperm(n, generator=_generator(seed, "classification-subsample"))
    return sorted(perm[:k].tolist())


def collate(ids: Sequence[Sequence[int]], labels: Sequence[int], pad_id: int) -> Batch:
    """-> tokens (B, T) right-padded with ``pad_id``, key_mask (B, T) True at real tokens, labels (B,);
    T is the longest sequence (an empty one is all padding)."""
    tokens = pad_sequences([s or [pad_id] for s in ids], pad_id)  # (B, T)
    lengths = torch.tensor([len(s) for s in ids])
    key_mask = torch.arange(tokens.shape[1]) < lengths[:, None]  # (B, T)
    return tokens, key_mask, torch.tensor(labels, dtype=torch.long)


class ClassificationTask:
    """Labelled token sequences in shuffled batches (a fresh order each epoch, from the seed).

    Args:
        train, valid: token-id lists (already tokenized) and their labels in [0, n_classes).
        n_classes: the number of labels.
        pad_id: the id padding fills with (the key mask marks the real tokens, so any id serves).
        batch_size: examples per batch (the global batch when distributed).
        max_len: longer sequences are cut to their first ``max_len`` tokens.
        seed: the order of the batches and the subsample.
        train_examples: train on this many examples (:func:`subsample`); 0 = all.
        eval_batches: how many batches of the validation split to score (a fixed sample of it drawn from
            the seed, the same at every evaluation: WordNet's validation split runs noun by noun, so
            its first examples would be all nouns); 0 = all of it.

    ``batch(i)`` -> (tokens (B, T), key_mask (B, T), labels (B,)), T the longest sequence in the batch.
    """

    def __init__(self, train: tuple[Sequence[Sequence[int]], Sequence[int]],
                 valid: tuple[Sequence[Sequence[int]], Sequence[int]], *, n_classes: int, pad_id: int,
                 batch_size: int, max_len: int, seed: int = 0, train_examples: int = 0, eval_batches: int = 0):
        for name, value in (("n_classes", n_classes), ("batch_size", batch_size), ("max_len", max_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if eval_batches < 0:
            raise ValueError(f"eval_batches must be >= 0 (0: the whole validation split), got {eval_batches}")
        splits = {}
        for name, (ids, labels) in (("train", train), ("valid", valid)):
            if len(ids) != len(labels):
                raise ValueError(f"{name}: {len(ids)} sequences but {len(labels)} labels")
            bad = [y for y in labels if not 0 <= y < n_classes]
            if bad:
                raise ValueError(f"{name}: label {bad[0]} is outside [0, n_classes={n_classes})")
            splits[name] = ([list(s)[:max_len] for s in ids], list(labels))
        keep = subsample(len(splits["train"][0]), train_examples, seed)
        self.train_ids = [splits["train"][0][i] for i in keep]
        self.train_labels = [splits["train"][1][i] for i in keep]
        self.train_indices = keep  # into the given training split
        if not self.train_ids:
            raise ValueError("train holds no examples")
        self.valid_ids, self.valid_labels = splits["valid"]
        self.n_classes, self.pad_id, self.batch_size, self.max_len = n_classes, pad_id, batch_size, max_len
        self.seed, self.n_eval = seed, eval_batches

    def collate(self, ids: Sequence[Sequence[int]], labels: Sequence[int]) -> Batch:
        """-> tokens (B, T), key_mask (B, T), labels (B,): see :func:`collate`."""
        return collate(ids, labels, self.pad_id)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_ids) / self.batch_size)

    def batch(self, index: int) -> Batch:
        """The ``index``-th training batch: epoch ``index // batches_per_epoch`` in an order drawn from
        (seed, epoch); the last batch of an epoch may be smaller."""
        epoch, i = divmod(index, self.batches_per_epoch)
        perm = torch.randperm(len(self.train_ids), generator=_generator(self.seed, "classification", epoch))
        rows = perm[i * self.batch_size : (i + 1) * self.batch_size].tolist()
        return self.collate([self.train_ids[j] for j in rows], [self.train_labels[j] for j in rows])

    def eval_rows(self) -> list[int]:
        """The validation examples scored at each evaluation (see ``eval_batches``)."""
        n = len(self.valid_ids)
        if not self.n_eval or self.n_eval * self.batch_size >= n:
            return list(range(n))
        g = torch.Generator().manual_seed(derive_seed(self.seed, "classification-eval"))
        return torch.randperm(n, generator=g)[: self.n_eval * self.batch_size].tolist()

    def eval_batches(self) -> Iterator[Batch]:
        rows = self.eval_rows()
        for i in range(0, len(rows), self.batch_size):
            part = rows[i : i + self.batch_size]
            yield self.collate([self.valid_ids[j] for j in part], [self.valid_labels[j] for j in part])

    def loss(self, model, batch: Batch, *, label_smoothing: float = 0.0) -> TokenLoss:
        """Summed cross-entropy over the batch; the count is the number of examples."""
        tokens, key_mask, labels = batch
        logits = model(tokens, key_mask)  # (B, n_classes)
        total = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction="sum")
        return TokenLoss(total, torch.tensor(labels.numel(), device=labels.device))

    @torch.no_grad()
    def scores(self, model) -> dict[str, float]:
        """Accuracy on the evaluation batches, logged beside the held-out loss."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        correct = total = 0
        for tokens, key_mask, labels in self.eval_batches():
            logits = model(tokens.to(device), key_mask.to(device))
            correct += int((logits.argmax(-1).cpu() == labels).sum())
            total += labels.numel()
        model.train(was_training)
        return {"valid_accuracy": correct / max(total, 1)}


class BiLMTask(LanguageModelingTask):
    """ELMo's pre-training objective (the BiLM a :class:`~attnkit.models.BiLMForClassification` starts
    from) on random windows of a token stream: the forward LM predicts each next token, the backward LM
    each previous one. The loss is the mean of the two, summed over the T - 1 neighbouring pairs of a
    window of T = ``context`` + 1 tokens and counted once per pair.

    ``batch(i)`` -> tokens (B, context + 1), the windows of :class:`LanguageModelingTask` whole.
    """

    def batch(self, index: int) -> Tensor:
        x, y = super().batch(index)
        return torch.cat([x, y[:, -1:]], dim=1)  # (B, T + 1)

    def eval_batches(self) -> Iterator[Tensor]:
        for x, y in super().eval_batches():
            yield torch.cat([x, y[:, -1:]], dim=1)

    def loss(self, model, batch: Tensor, *, label_smoothing: float = 0.0) -> TokenLoss:
        return bilm_loss(model, batch, label_smoothing=label_smoothing)

    def scores(self, model) -> dict[str, float]:
        """Next-token accuracy of the forward LM and previous-token accuracy of the backward LM on the
        evaluation windows, and their mean (the BiLM's counterpart of masked-token accuracy)."""
        device = next(model.parameters()).device
        forward = backward = count = 0
        for tokens in self.eval_batches():
            tokens = tokens.to(device)
            out = model(tokens)
            forward += int((out.forward_logits[:, :-1].argmax(-1) == tokens[:, 1:]).sum())
            backward += int((out.backward_logits[:, 1:].argmax(-1) == tokens[:, :-1]).sum())
            count += tokens[:, 1:].numel()
        count = max(count, 1)
        return {"valid_forward_accuracy": forward / count, "valid_backward_accuracy": backward / count,
                "valid_accuracy": (forward + backward) / (2 * count)}


def bilm_loss(model, tokens: Tensor, *, label_smoothing: float = 0.0) -> TokenLoss:
    """A BiLM's loss on full windows tokens (B, T): (forward + backward summed cross-entropy) / 2 over
    the B * (T - 1) neighbouring pairs, and that count."""
    out = model(tokens)
    V = out.forward_logits.shape[-1]
    ce = dict(reduction="sum", label_smoothing=label_smoothing)
    forward = F.cross_entropy(out.forward_logits[:, :-1].reshape(-1, V).float(), tokens[:, 1:].reshape(-1), **ce)
    backward = F.cross_entropy(out.backward_logits[:, 1:].reshape(-1, V).float(), tokens[:, :-1].reshape(-1), **ce)
    return TokenLoss((forward + backward) / 2, torch.tensor(tokens[:, 1:].numel(), device=tokens.device))
