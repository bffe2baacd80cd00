"""T5's two training tasks, as :class:`~attnkit.train.Task` objects.

- :class:`SpanCorruptionTask`: pre-training on a token stream. Each batch is ``batch_size`` random
  windows of ``context`` tokens, each corrupted by :func:`~attnkit.train.span_corruption.span_corruption`
  (15% of the tokens in spans of 3 on average, each span replaced by one sentinel id; the targets list
  each sentinel and its span), with eos appended to inputs and targets as T5 does.
- :class:`TextToTextTask`: multi-task fine-tuning on (input, target) examples of several tasks, every
  batch a sample of the tasks at their mixing rates (:func:`attnkit.data.text2text.mixing_rates`).

Both give batches ``(src (B, S), tgt_in (B, T), tgt_out (B, T))``: ``tgt_in`` is the targets shifted
right behind the decoder start id (:func:`attnkit.models.t5.shift_right`), ``tgt_out`` the targets with
``IGNORE`` at padding; the loss is the cross-entropy of ``model(src, tgt_in)`` against ``tgt_out``.
Batch i is a pure function of i and the seed.

The sentinels are T5's extra ids at the top of the vocabulary: the model's vocabulary is the
tokenizer's plus :data:`SENTINELS` ids, and sentinel k is ``vocab_size - 1 - k``, so text never encodes
to one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from ..data.batching import pad_sequences, random_windows
from ..models.t5 import shift_right
from ..nn.chunked import TokenLoss
from .span_corruption import span_corruption
from .tasks import IGNORE, _generator, token_loss

SENTINELS = 100  # T5's extra ids: <extra_id_0> .. <extra_id_99>

Batch = tuple[Tensor, Tensor, Tensor]


def n_spans(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> int:
    """How many noise spans (so sentinels) span corruption makes of ``length`` >= 2 tokens: the same for
    every sequence of that length (the counts of :func:`~attnkit.train.span_corruption.random_spans`)."""
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    return min(max(round(n_noise / mean_noise_span_length), 1), length - n_noise)


def corrupt_windows(windows: Tensor, *, first_sentinel_id: int, eos_id: int, decoder_start_id: int,
                    seed_parts: tuple, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> Batch:
    """Span-corrupt each row of ``windows`` (B, T), row r with a generator drawn from ``(*seed_parts, r)``
    -> ``(src (B, S), tgt_in (B, U), tgt_out (B, U))``, eos ending both.

    Every row of one length gets the same number of noise tokens and spans, so the rows stack without
    padding: S = T - noise + spans + 1, U = noise + spans + 1."""
    if windows.dim() != 2:
        raise ValueError(f"windows must have shape (B, T), got {tuple(windows.shape)}")
    rows = [span_corruption(w, first_sentinel_id=first_sentinel_id, eos_id=eos_id,
                            generator=_generator(*seed_parts, r), noise_density=noise_density,
                            mean_noise_span_length=mean_noise_span_length) for r, w in enumerate(windows)]
    src = torch.stack([r.inputs for r in rows])  # (B, S)
    targets = torch.stack([r.targets for r in rows])  # (B, U)
    return src, shift_right(targets, decoder_start_id), targets


def seq2seq_loss(model, batch: Batch, pad_id: int, label_smoothing: float = 0.0) -> TokenLoss:
    """The summed cross-entropy of ``model(src, tgt_in)`` against ``tgt_out`` (IGNORE left out)."""
    src, tgt_in, tgt_out = batch
    return token_loss(model(src, tgt_in, src_key_mask=src != pad_id), tgt_out, label_smoothing)


class SpanCorruptionTask:
    """T5's span-corruption pre-training on random windows of a token stream.

    Args:
        train, valid: 1-D token ids (without sentinel ids) of the training and the held-out text.
        context: window length T, the tokens corrupted per example.
        batch_size: windows per batch (the global batch when distributed).
        first_sentinel_id: sentinel of the first span (``vocab_size - 1``); span k gets ``first - k``.
        eos_id, pad_id, decoder_start_id: the special ids (T5 starts the decoder with its pad id).
        eval_batches: batches of consecutive, non-overlapping windows of ``valid`` scored in evaluation,
            corrupted with seeds of their own (the same at every evaluation).
    """

    def __init__(self, train: Tensor, valid: Tensor, *, context: int, batch_size: int, first_sentinel_id: int,
                 eos_id: int, pad_id: int, decoder_start_id: int, seed: int = 0, eval_batches: int = 20,
                 noise_density: float = 0.15, mean_noise_span_length: float = 3.0):
        if context < 2:
            raise ValueError(f"context must be >= 2 (one kept token, one dropped), got {context}")
        for name, t in (("train", train), ("valid", valid)):
            if t.dim() != 1 or t.numel() <= context:
                raise ValueError(f"{name} must be a 1-D token stream longer than context={context} tokens, "
                                 f"got shape {tuple(t.shape)}")
        first_text_sentinel = first_sentinel_id - n_spans(context, noise_density, mean_noise_span_length) + 1
        if int(max(train.max(), valid.max())) >= first_text_sentinel:
            raise ValueError(f"train and valid must hold token ids below the sentinels (< {first_text_sentinel})")
        self.train_tokens, self.valid_tokens = train.long(), valid.long()
        self.context, self.batch_size, self.seed, self.n_eval = context, batch_size, seed, eval_batches
        self.pad_id = pad_id
        self.corruption = dict(first_sentinel_id=first_sentinel_id, eos_id=eos_id, decoder_start_id=decoder_start_id,
                               noise_density=noise_density, mean_noise_span_length=mean_noise_span_length)

    def batch(self, index: int) -> Batch:
        """Batch ``index``: windows at offsets drawn from (seed, index), corrupted with seeds from both."""
        windows, _ = random_windows(self.train_tokens, self.batch_size, self.context,
                                    _generator(self.seed, "span-windows", index))  # (B, T)
        return corrupt_windows(windows, seed_parts=(self.seed, "span", index), **self.corruption)

    def held_out(self, ids: Tensor, n_windows: int | None = None) -> Iterator[Batch]:
        """Consecutive windows of ``ids`` (at most ``n_windows``), ``batch_size`` at a time, batch i corrupted
        with seeds from (seed, "span-eval", i): the same batches at every call."""
        T, B = self.context, self.batch_size
        n = ids.numel() // T if n_windows is None else min(ids.numel() // T, n_windows)
        windows = ids[: n * T].view(n, T)  # (N, T)
        for i in range(0, n, B):
            yield corrupt_windows(windows[i : i + B], seed_parts=(self.seed, "span-eval", i // B), **self.corruption)

    def eval_batches(self) -> Iterator[Batch]:
        return self.held_out(self.valid_tokens, self.n_eval * self.batch_size)

    def loss(self, model, batch: Batch, *, label_smoothing: float = 0.0) -> TokenLoss:
        return seq2seq_loss(model, batch, self.pad_id, label_smoothing)


class TextToTextTask:
    """Multi-task text-to-text training, examples-proportional mixing.

    Args:
        train, valid: ``{task: [(input ids, target ids), ...]}``, the ids without eos (appended here).
        rates: ``{task: rate}`` summing to 1, the share of each task's examples in the batches
            (:func:`attnkit.data.text2text.mixing_rates`); every task of ``train``.
        pad_id, eos_id, decoder_start_id: the special ids.
        batch_size: examples per batch. Each one's task is drawn at the rates, then an example of that
            task uniformly, from (seed, batch index): sampling with replacement, as T5 mixes.
        max_len: inputs and targets are cut to this many tokens, eos included.
        eval_batches: batches of validation examples scored in evaluation, the tasks taken in turn.
        scorer: ``model -> {name: value}``, held-out figures logged with each evaluation.
    """

    def __init__(self, train: dict[str, Sequence[tuple[list[int], list[int]]]],
                 valid: dict[str, Sequence[tuple[list[int], list[int]]]], *, rates: dict[str, float], pad_id: int,
                 eos_id: int, decoder_start_id: int, batch_size: int, max_len: int = 128, seed: int = 0,
                 eval_batches: int = 20, scorer: Callable[[torch.nn.Module], dict[str, float]] | None = None):
        empty = [t for t, examples in train.items() if not examples]
        if not train or empty:
            raise ValueError(f"train must hold examples for every task, got none for {empty or 'any task'}")
        if set(rates) != set(train):
            raise ValueError(f"rates must name the tasks of train {sorted(train)}, got {sorted(rates)}")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (a token and eos), got {max_len}")
        self.tasks = list(train)
        self.train, self.valid = {t: list(train[t]) for t in self.tasks}, {t: list(v) for t, v in valid.items()}
        self.rates = torch.tensor([float(rates[t]) for t in self.tasks], dtype=torch.float64)
        self.pad_id, self.eos_id, self.decoder_start_id = pad_id, eos_id, decoder_start_id
        self.batch_size, self.max_len, self.seed, self.n_eval = batch_size, max_len, seed, eval_batches
        self.scorer = scorer

    def collate(self, pairs: Sequence[tuple[list[int], list[int]]]) -> Batch:
        """-> src (B, S) ending in eos, tgt_in (B, T) starting with the decoder start id, tgt_out (B, T)
        ending in eos, IGNORE at its padding."""
        L = self.max_len
        srcs = [[*s[: L - 1], self.eos_id] for s, _ in pairs]
        tgts = [[*t[: L - 1], self.eos_id] for _, t in pairs]
        src = pad_sequences(srcs, self.pad_id)
        tgt_in = pad_sequences([[self.decoder_start_id, *t[:-1]] for t in tgts], self.pad_id)
        tgt_out = pad_sequences(tgts, IGNORE)
        return src, tgt_in, tgt_out

    def sample(self, index: int) -> list[tuple[str, int]]:
        """The (task, example index) pairs of batch ``index``, drawn from (seed, index)."""
        g = _generator(self.seed, "text2text", index)
        tasks = torch.multinomial(self.rates, self.batch_size, replacement=True, generator=g).tolist()
        draws = torch.rand(self.batch_size, generator=g, dtype=torch.float64).tolist()
        out = []
        for t, u in zip(tasks, draws):
            task = self.tasks[t]
            out.append((task, min(int(u * len(self.train[task])), len(self.train[task]) - 1)))
        return out

    def batch(self, index: int) -> Batch:
        return self.collate([self.train[task][i] for task, i in self.sample(index)])

    def eval_examples(self) -> list[tuple[list[int], list[int]]]:
        """The validation examples scored in evaluation: the tasks in turn (first of each, second of
        each, ...), at most ``eval_batches * batch_size``."""
        columns = [self.valid.get(t, []) for t in self.tasks]
        turns = [col[i] for i in range(max(map(len, columns), default=0)) for col in columns if i < len(col)]
        return turns[: self.n_eval * self.batch_size]

    def eval_batches(self) -> Iterator[Batch]:
        examples = self.eval_examples()
        for i in range(0, len(examples), self.batch_size):
            yield self.collate(examples[i : i + self.batch_size])

    def scores(self, model) -> dict[str, float]:
        return {} if self.scorer is None else self.scorer(model)

    def loss(self, model, batch: Batch, *, label_smoothing: float = 0.0) -> TokenLoss:
        return seq2seq_loss(model, batch, self.pad_id, label_smoothing)
