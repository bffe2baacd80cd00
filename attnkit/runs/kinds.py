"""The kinds of task a run can be: what data each needs, how it fixes the model's vocabulary and
lengths, how it is trained (its :class:`~attnkit.train.Task`) and how it is scored on held-out data.

- ``lm``: next-token language modelling on a text stream; scored in bits per token; ``generate``.
- ``mlm``: masked-LM (BERT) on a text stream; scored by masked-token accuracy and loss.
- ``seq2seq``: translation on a parallel corpus; scored by BLEU and chrF on the test pairs; ``translate``.
- ``classify``: a label per text (:mod:`attnkit.runs.classify`); scored by test accuracy and macro-F1.
- ``bilm``: ELMo's bidirectional LM on a text stream (:mod:`attnkit.runs.classify`); scored in bits per token.
- ``span``: T5's span-corruption pre-training on a text stream (:mod:`attnkit.runs.text2text`); scored by
  the loss and accuracy of the dropped spans.
- ``text2text``: T5 on a mixture of text-to-text tasks named by prefixes (:mod:`attnkit.runs.text2text`);
  scored per task (BLEU/chrF, exact match); ``translate``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..data import PAIR_CORPORA, SYNTHETIC_CORPORA, TEXT_CORPORA, pair_splits, text_splits
from ..errors import UsageError


@dataclass
class Evaluation:
    """A held-out score: ``metrics`` (numbers, for programs), ``lines`` (the report, for people) and
    ``examples`` (translation: the shown (source, hypothesis, references) triples)."""

    metrics: dict[str, float]
    lines: list[str] = field(default_factory=list)
    examples: list[tuple[str, str, list[str]]] = field(default_factory=list)

    def report(self) -> str:
        return "\n".join(self.lines)


@functools.lru_cache(maxsize=4)
def _text(corpus: str) -> tuple[str, str]:
    try:
        return text_splits(corpus)
    except FileNotFoundError as e:
        raise UsageError(f"data.{e}") from None


@functools.lru_cache(maxsize=4)
def _pairs(corpus: str) -> dict:
    return pair_splits(corpus)


def _unit(data) -> str:
    return {"char": "character", "byte": "byte"}.get(data.tokenizer, "token")


@torch.no_grad()
def _scored_accuracy(model, batches) -> tuple[float, int, int]:
    """Over (inputs, targets) batches: the summed cross-entropy, the correct argmax predictions and the
    count of the scored targets (those not IGNORE)."""
    from ..train import IGNORE

    model.eval()
    loss, correct, count = 0.0, 0, 0
    for x, y in batches:
        logits = model(x)  # (B, T, vocab)
        scored = y != IGNORE
        loss += float(F.cross_entropy(logits[scored].float(), y[scored], reduction="sum"))
        correct += int((logits[scored].argmax(-1) == y[scored]).sum())
        count += int(scored.sum())
    return loss, correct, count


class TaskKind:
    """One kind of task; subclasses fill in the data, the task and the evaluation."""

    name: str = ""
    noun: str = ""  # what a run of this kind is, e.g. "language model"
    command: str | None = None  # the command that uses such a run besides eval ("generate", "translate")
    data_fields: dict[str, str] = {}  # model config fields set from the data -> where they come from
    reads_tokenizer_corpus = False  # whether a fresh run's tokenizer also learns from data.tokenizer_corpus

    def describe(self, data) -> str:
        return f"a {self.noun}"

    def check_data(self, model_type: str, data) -> None:
        raise NotImplementedError

    def tokenizer_texts(self, data) -> list[str]:
        raise NotImplementedError

    def resolve(self, config_cls, values: dict[str, Any], data, tokenizer) -> dict[str, Any]:
        raise NotImplementedError

    def build_task(self, data, tokenizer):
        raise NotImplementedError

    def evaluate(self, model, tokenizer, data, **options) -> Evaluation:
        raise NotImplementedError

    def pretrained_tokenizer(self, init_from: str, data):
        """The tokenizer of the pre-trained model ``model.init_from`` names (kinds that start from one)."""
        raise UsageError(f"model.init_from: a {self.noun} does not start from a pre-trained model")

    def load_pretrained(self, model, init_from: str) -> None:
        """Copy the weights of the pre-trained model ``init_from`` names into ``model``."""
        raise UsageError(f"model.init_from: a {self.noun} does not start from a pre-trained model")


class _TextKind(TaskKind):
    data_fields = {"vocab_size": "the tokenizer's vocabulary"}

    def check_data(self, model_type, data):
        if data.corpus in SYNTHETIC_CORPORA and self.name != "lm":
            raise UsageError(f"{model_type}: data.corpus = {data.corpus!r} is a language-modelling task")
        if data.corpus in PAIR_CORPORA:
            raise UsageError(f"{model_type} trains on a text stream: data.corpus = {data.corpus!r} is a parallel "
                             f"corpus; use one of {', '.join(TEXT_CORPORA)} or a text file")

    def tokenizer_texts(self, data):
        return [_text(data.corpus)[0]]

    def _ids(self, text: str, tokenizer) -> torch.Tensor:
        return torch.tensor(tokenizer.encode(text), dtype=torch.long)

    def _stream_args(self, data) -> dict:
        return dict(context=data.context, batch_size=data.batch_size, seed=data.seed, eval_batches=data.eval_batches)

    def _held_out(self, data, tokenizer, max_tokens: int | None) -> torch.Tensor:
        ids = self._ids(_text(data.corpus)[1], tokenizer)
        return ids[: max_tokens + 1] if max_tokens else ids


class LanguageModelKind(_TextKind):
    """Next-token prediction on a text corpus, or on a synthetic task (``data.corpus = "duplication"``:
    scored by the accuracy on the second copy)."""

    name, noun, command = "lm", "language model", "generate"

    def describe(self, data):
        if data.corpus in SYNTHETIC_CORPORA:
            return f"a language model of the {data.corpus} task"
        return f"a {_unit(data)}-level language model" if data.tokenizer in ("char", "byte") else "a language model"

    def check_data(self, model_type, data):
        super().check_data(model_type, data)
        if data.corpus in SYNTHETIC_CORPORA and data.tokenizer != "ids":
            raise UsageError(f"data.corpus = {data.corpus!r} is a synthetic task of token ids: set data.tokenizer "
                             f"= \"ids\" (with data.vocab_size symbols), got {data.tokenizer!r}")

    def tokenizer_texts(self, data):
        return [] if data.corpus in SYNTHETIC_CORPORA else super().tokenizer_texts(data)

    def resolve(self, config_cls, values, data, tokenizer):
        return {"max_len": data.context, **values, "vocab_size": tokenizer.vocab_size}

    def build_task(self, data, tokenizer):
        from ..train import DuplicationTask, LanguageModelingTask

        if data.corpus in SYNTHETIC_CORPORA:
            return DuplicationTask(length=data.context, vocab_size=data.vocab_size, batch_size=data.batch_size,
                                   seed=data.seed, eval_batches=data.eval_batches)
        train, valid = _text(data.corpus)
        return LanguageModelingTask(self._ids(train, tokenizer), self._ids(valid, tokenizer), **self._stream_args(data))

    def evaluate(self, model, tokenizer, data, *, max_tokens: int | None = None, n_hashes: int | None = None,
                 bucket_size: int | None = None, n_buckets: int | None = None, **_) -> Evaluation:
        """Bits per token on the held-out text (or, for a synthetic task, accuracy on its held-out
        sequences). ``n_hashes``, ``bucket_size``, ``n_buckets``: evaluate LSH layers with these."""
        from ..evaluation import bits_per_token
        from ..nn import lsh_settings

        lsh = dict(n_hashes=n_hashes, bucket_size=bucket_size, n_buckets=n_buckets)
        with lsh_settings(model, **lsh) as n_layers:
            if any(v is not None for v in lsh.values()) and n_layers == 0:
                raise UsageError("--n-hashes, --bucket-size and --n-buckets apply to LSH layers; this model has none")
            if data.corpus in SYNTHETIC_CORPORA:
                return self._accuracy(model, data, lsh)
            ids = self._held_out(data, tokenizer, max_tokens)
            bpt = bits_per_token(model, ids, min(data.context, model.config.max_len))
        unit = _unit(data)
        return Evaluation({"bits_per_token": bpt, "tokens": ids.numel() - 1},
                          [f"held-out {unit}s: {ids.numel() - 1:,}; bits per {unit}: {bpt:.3f}"])

    def _accuracy(self, model, data, lsh: dict) -> Evaluation:
        loss, correct, count = _scored_accuracy(model, self.build_task(data, None).eval_batches())
        acc = correct / max(count, 1)
        setting = ", ".join(f"{k} {v}" for k, v in lsh.items() if v is not None) or "as trained"
        return Evaluation(
            {"accuracy": acc, "loss": loss / max(count, 1), "tokens": count},
            [f"held-out {data.corpus} sequences: {count:,} scored tokens; accuracy {100 * acc:.2f}%; "
             f"loss {loss / max(count, 1):.4f} nats (attention: {setting})"],
        )


class MaskedLMKind(_TextKind):
    """BERT's objective; the [MASK] token is one id past the tokenizer's vocabulary."""

    name, noun, command = "mlm", "masked language model", None
    data_fields = {"vocab_size": "the tokenizer's vocabulary plus [MASK]"}

    def resolve(self, config_cls, values, data, tokenizer):
        return {"max_len": data.context, **values, "vocab_size": tokenizer.vocab_size + 1}

    def build_task(self, data, tokenizer):
        from ..train import MaskedLMTask

        train, valid = _text(data.corpus)
        vocab = tokenizer.vocab_size + 1
        return MaskedLMTask(self._ids(train, tokenizer), self._ids(valid, tokenizer), mask_id=vocab - 1,
                            vocab_size=vocab, p=data.mask_prob, **self._stream_args(data))

    def evaluate(self, model, tokenizer, data, *, max_tokens: int | None = None, **_) -> Evaluation:
        """Masked-token accuracy and loss over consecutive windows of the held-out text, masked with
        seeds fixed by the data seed (the same positions at every evaluation)."""
        from ..train import derive_seed, mask_tokens
        from ..train.tasks import EVAL_MASK_P

        ids = self._held_out(data, tokenizer, max_tokens)
        T, B, vocab = data.context, data.batch_size, model.config.vocab_size
        n_windows = ids.numel() // T
        if n_windows == 0:
            raise UsageError(f"the held-out text has {ids.numel()} tokens, fewer than data.context = {T}")
        windows = ids[: n_windows * T].view(n_windows, T)
        batches = (
            mask_tokens(windows[i : i + B], mask_id=vocab - 1, vocab_size=vocab, p=EVAL_MASK_P,
                        generator=torch.Generator().manual_seed(derive_seed(data.seed, "mlm-eval", i)))
            for i in range(0, n_windows, B)
        )
        loss, correct, count = _scored_accuracy(model, batches)
        acc, nats = correct / max(count, 1), loss / max(count, 1)
        return Evaluation(
            {"masked_accuracy": acc, "masked_loss": nats, "masked_tokens": count},
            [f"held-out masked {_unit(data)}s: {count:,}; accuracy {100 * acc:.1f}%; "
             f"loss {nats:.3f} nats ({nats / math.log(2):.3f} bits)"],
        )


class TranslationKind(TaskKind):
    name, noun, command = "seq2seq", "translation model", "translate"
    data_fields = {
        "src_vocab_size": "the tokenizer's vocabulary", "tgt_vocab_size": "the tokenizer's vocabulary",
        "vocab_size": "the tokenizer's vocabulary", "pad_id": "the tokenizer's <pad>",
    }

    def check_data(self, model_type, data):
        if data.corpus not in PAIR_CORPORA:
            raise UsageError(f"{model_type} is a sequence-to-sequence model: data.corpus must be a parallel corpus "
                             f"({', '.join(PAIR_CORPORA)}), got {data.corpus!r}")

    def tokenizer_texts(self, data):
        return [t for p in _pairs(data.corpus)["train"] for t in (p.de, p.en)]

    def resolve(self, config_cls, values, data, tokenizer):
        if getattr(tokenizer, "pad_id", None) is None:
            raise UsageError(f"translation needs a tokenizer with <pad>, <bos> and <eos>; data.tokenizer = "
                             f"{data.tokenizer!r} has none (use bpe, wordpiece, unigram or byte)")
        names = set(config_cls.__dataclass_fields__)
        fixed = {"src_vocab_size": tokenizer.vocab_size, "tgt_vocab_size": tokenizer.vocab_size,
                 "vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id}
        return {"max_len": data.max_len + 1, **values, **{k: v for k, v in fixed.items() if k in names}}

    def _encode(self, pairs, tokenizer):
        return [(tokenizer.encode(p.de), tokenizer.encode(p.en)) for p in pairs]

    def build_task(self, data, tokenizer):
        from ..train import Seq2SeqTask

        splits = _pairs(data.corpus)
        return Seq2SeqTask(
            self._encode(splits["train"], tokenizer), self._encode(splits["validation"], tokenizer),
            pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
            batch_size=data.batch_size, seed=data.seed, max_len=data.max_len,
            scorer=self._valid_scorer(splits["validation"], tokenizer, data.valid_bleu_sentences),
        )

    @staticmethod
    def _valid_scorer(pairs, tokenizer, n: int):
        """``model -> {"valid_bleu", "valid_chrf"}`` on the first ``n`` validation sources (greedy, all
        their references), or None for n = 0."""
        from ..data.translation import references_by_source
        from ..evaluation import bleu_chrf, translate

        if not n:
            return None
        refs = references_by_source(pairs)
        sources = list(refs)[:n]

        def score(model):
            scores = bleu_chrf(translate(model, tokenizer, sources), [refs[s] for s in sources])
            return {"valid_bleu": scores["bleu"], "valid_chrf": scores["chrf"]}

        return score

    def evaluate(self, model, tokenizer, data, *, beam_size: int = 4, limit: int | None = None, show: int = 5,
                 length_penalty: float = 1.0, test_corpus: str | None = None, split: str = "test",
                 **_) -> Evaluation:
        """sacreBLEU and chrF on the test pairs, each source translated once and scored against all its
        references; ``show`` examples spread evenly over the test set (every len/show-th source).
        ``test_corpus``: score on another parallel corpus's test set (a ``de-en-all`` model on ``de-en``
        and on ``de-en-descriptions``), with the run's tokenizer. ``split="validation"`` scores the
        validation pairs instead (to choose decoding settings without looking at the test set)."""
        from ..data.translation import references_by_source
        from ..evaluation import bleu_chrf, translate

        corpus = data.corpus if test_corpus is None else test_corpus
        if corpus not in PAIR_CORPORA:
            raise UsageError(f"test corpus {corpus!r} is not a parallel corpus ({', '.join(PAIR_CORPORA)})")
        if split not in ("test", "validation"):
            raise UsageError(f"split must be 'test' or 'validation', got {split!r}")
        refs = references_by_source(_pairs(corpus)[split])
        sources = list(refs)[: limit or None]
        hyps = translate(model, tokenizer, sources, beam_size=beam_size, length_penalty=length_penalty)
        scores = bleu_chrf(hyps, [refs[s] for s in sources])
        lines = [f"{corpus} {split} sentences: {len(sources)}; BLEU {scores['bleu']:.1f}; chrF {scores['chrf']:.1f}; "
                 f"length ratio {scores['length_ratio']:.2f} (sacreBLEU, beam {beam_size}, length penalty "
                 f"{length_penalty:g})"]
        step = max(1, len(sources) // max(show, 1))
        examples = [(sources[i], hyps[i], refs[sources[i]]) for i in range(0, len(sources), step)[:show]]
        for source, hyp, ref in examples:
            lines += [f"  {source}", f"    -> {hyp}", f"    reference: {ref[0]}"]
        return Evaluation({**scores, "sentences": len(sources)}, lines, examples)


# The kinds defined here; attnkit/runs/classify.py and text2text.py add theirs (and their model families)
# when attnkit.runs is imported.
KINDS: dict[str, TaskKind] = {k.name: k for k in (LanguageModelKind(), MaskedLMKind(), TranslationKind())}
