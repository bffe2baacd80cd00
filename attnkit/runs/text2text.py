"""The T5 run kinds: ``span``, span-corruption pre-training on a text corpus, and ``text2text``, multi-task
text-to-text training on a mixture of :mod:`attnkit.data.text2text` (tasks named by a prefix on the
input); and :class:`T5RunConfig`, T5's config plus ``init_from``.

Vocabulary: the tokenizer's (one with <pad> and <eos>: bpe, wordpiece, unigram or byte) plus
:data:`~attnkit.train.text2text.SENTINELS` (100) sentinel ids above it, T5's extra ids (<extra_id_0>
is the top id), in both kinds, so that a text-to-text run can start from a pre-training run. The
decoder starts from <pad>, as T5's does, and stops at <eos>.

Starting from a pre-trained run (``[model] init_from = "runs/t5_span_english"``) reuses the classifiers'
mechanism (:mod:`attnkit.runs.classify`; the run operations call this kind's hooks
``pretrained_tokenizer`` and ``load_pretrained``):

- the tokenizer is the source run's (:func:`attnkit.runs.classify.pretrained_tokenizer`), so
  ``data.tokenizer`` must name its kind;
- the shape (every T5 field but ``dropout``) is the source's: the [model] values for them are replaced,
  so a preset fine-tunes any T5 run;
- when training starts (not on resume) every weight is copied from the source's newest checkpoint.

The source is a run of either T5 kind ("T5SpanCorruption" or "T5"). It must still be there when the run
is resumed or described; evaluating and using the trained run need only its own folder.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from ..data import CLASSIFICATION_CORPORA, TEXT2TEXT_CORPORA
from ..data.batching import pad_sequences
from ..data.text2text import TASKS, Example, mixing_rates, mixture_splits
from ..errors import UsageError
from ..models import T5, T5Config
from ..train import IGNORE, derive_seed
from ..train.classification import subsample
from ..train.text2text import SENTINELS, SpanCorruptionTask, TextToTextTask, n_spans
from .classify import HF_PREFIX, _encode, _source_run
from .kinds import KINDS, Evaluation, TaskKind, _text, _TextKind, _unit
from .registry import register_model

T5_TOKENIZERS = ("bpe", "wordpiece", "unigram", "byte")  # those with <pad> and <eos> of their own
DEFAULT_LIMIT = 200  # test sources scored per task when no limit is given (beam search on a CPU is slow)
_OWN_FIELDS = {"dropout"}  # T5 fields a run keeps its own when it starts from another


@dataclass
class T5RunConfig(T5Config):
    """:class:`~attnkit.models.T5Config` plus ``init_from``: the folder of a T5 run (span-corruption
    pre-training or text-to-text) whose weights and tokenizer a run starts from; ``None``: random
    initialisation. The run operations apply it when training starts; building the model never reads it."""

    init_from: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            raise ValueError(f"{type(self).__name__}.init_from must be None or a run folder's path, "
                             f"got {self.init_from!r}")


# ---- text in, text out ------------------------------------------------------------------------------

def decode_output(tokenizer, ids: list[int]) -> str:
    """Generated ids (after the decoder start) -> text: cut at <eos>, sentinel ids left out."""
    if tokenizer.eos_id in ids:
        ids = ids[: ids.index(tokenizer.eos_id)]
    return tokenizer.decode([i for i in ids if i < tokenizer.vocab_size]).strip()


def decode_with_sentinels(tokenizer, ids: list[int]) -> str:
    """Span-corruption ids -> text with the sentinels written ``<extra_id_k>`` (<pad> and <eos> left out)."""
    top = tokenizer.vocab_size + SENTINELS - 1
    out, run = [], []
    for i in [*ids, None]:
        if i is None or i >= tokenizer.vocab_size:
            out.append(tokenizer.decode(run).strip())
            run = []
            if i is not None:
                out.append(f"<extra_id_{top - i}>")
        elif i not in (tokenizer.pad_id, tokenizer.eos_id):
            run.append(i)
    return " ".join(piece for piece in out if piece)


@torch.no_grad()
def generate_texts(model, tokenizer, texts: list[str], *, max_len: int, beam_size: int = 1,
                   max_new_tokens: int | None = None, length_penalty: float = 1.0, batch_size: int = 64) -> list[str]:
    """T5's answer to each text: the input cut to ``max_len`` tokens with <eos> last, decoded greedily
    (``beam_size`` 1) or by beam search, for at most ``max_new_tokens`` (default ``max_len``) tokens."""
    model.eval()
    device = next(model.parameters()).device
    pad, eos = tokenizer.pad_id, tokenizer.eos_id
    encoded = [[*ids[: max_len - 1], eos] for ids in _encode(tokenizer, list(texts))]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths batch together
    out = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        src = pad_sequences([encoded[j] for j in rows], pad).to(device)  # (B, S)
        hyp = model.generate(src, max_new_tokens or max_len, src_key_mask=src != pad, beam_size=beam_size,
                             length_penalty=length_penalty)  # (B, 1 + n)
        for r, j in enumerate(rows):
            out[j] = decode_output(tokenizer, hyp[r, 1:].tolist())
    return out


# ---- what both kinds share: the vocabulary, and starting from a pre-trained run ----------------------

def source_shape(init_from: str) -> dict:
    """The shape fields (all of :class:`T5Config` but ``dropout``) of the T5 run ``init_from`` names."""
    from ..train import latest_checkpoint
    from ..train.checkpoint import read_config
    from .registry import MODELS

    run, config = _source_run(init_from)
    if not issubclass(MODELS[config.model_type].config, T5Config):
        raise UsageError(f"model.init_from = {init_from!r} is a {config.model_type} run; a T5 starts from a T5 "
                         "run (T5SpanCorruption or T5)")
    checkpoint = latest_checkpoint(run.path)
    if checkpoint is None:
        raise UsageError(f"model.init_from = {init_from!r} holds no checkpoint yet")
    values = read_config(checkpoint)
    return {f.name: values[f.name] for f in fields(T5Config) if f.name not in _OWN_FIELDS and f.name in values}


class _T5Kind(TaskKind):
    data_fields = {"vocab_size": f"the tokenizer's vocabulary plus {SENTINELS} sentinel ids",
                   "pad_id": "the tokenizer's <pad>", "decoder_start_id": "the tokenizer's <pad>, as in T5",
                   "eos_id": "the tokenizer's <eos>"}

    def _check_tokenizer(self, model_type: str, data) -> None:
        if data.tokenizer not in T5_TOKENIZERS:
            raise UsageError(f"{model_type} needs a tokenizer with <pad> and <eos>: data.tokenizer must be one of "
                             f"{', '.join(T5_TOKENIZERS)}, got {data.tokenizer!r}")

    def resolve(self, config_cls, values, data, tokenizer):
        values = dict(values)
        vocab = tokenizer.vocab_size + SENTINELS
        if values.get("init_from"):
            shape = source_shape(values["init_from"])
            if shape.get("vocab_size") != vocab:
                raise UsageError(f"model.init_from = {values['init_from']!r} has a vocabulary of "
                                 f"{shape.get('vocab_size')} ids; its tokenizer and {SENTINELS} sentinels make {vocab}")
            values.update({k: v for k, v in shape.items() if k not in self.data_fields})
        return {**values, "vocab_size": vocab, "pad_id": tokenizer.pad_id, "decoder_start_id": tokenizer.pad_id,
                "eos_id": tokenizer.eos_id}

    def pretrained_tokenizer(self, init_from: str, data):
        """The tokenizer of the T5 run ``init_from`` names (the run operations' hook)."""
        from .classify import pretrained_tokenizer

        if init_from.startswith(HF_PREFIX):
            raise UsageError(f"model.init_from = {init_from!r}: a T5 run starts from a T5 run folder; Hugging Face "
                             "T5 folders load in a program (attnkit.interop.load_t5), not as a run's start")
        source_shape(init_from)  # a T5 run with a checkpoint, or a message saying what it is
        return pretrained_tokenizer(init_from, data)

    def load_pretrained(self, model, init_from: str) -> None:
        """Copy every weight of the T5 run ``init_from`` names into ``model`` (the run operations' hook)."""
        from .classify import copy_weights
        from .ops import load_run

        copy_weights(load_run(init_from).model, model, init_from)


# ---- span corruption ---------------------------------------------------------------------------------

class SpanCorruptionKind(_T5Kind, _TextKind):
    """T5's pre-training objective on a text corpus (:class:`~attnkit.train.text2text.SpanCorruptionTask`);
    scored by the loss and the accuracy of the targets (the dropped spans) on held-out text."""

    name, noun, command = "span", "T5 pre-trained by span corruption", None
    data_fields = _T5Kind.data_fields
    reads_tokenizer_corpus = True

    def describe(self, data) -> str:
        return f"a T5 pre-trained by span corruption on {data.corpus}"

    def check_data(self, model_type, data):
        if data.corpus in TEXT2TEXT_CORPORA or data.corpus in CLASSIFICATION_CORPORA:
            raise UsageError(f"{model_type} pre-trains on a text stream: data.corpus = {data.corpus!r} is a task; "
                             f"train it with [model] type = \"T5\", or use a text corpus here")
        super().check_data(model_type, data)
        self._check_tokenizer(model_type, data)
        if data.context < 2:
            raise UsageError(f"data.context must be >= 2 tokens (one kept, one dropped), got {data.context}")
        if n_spans(data.context) > SENTINELS:
            longest = next(t for t in range(data.context, 1, -1) if n_spans(t) <= SENTINELS)
            raise UsageError(f"data.context = {data.context} makes {n_spans(data.context)} noise spans, more than "
                             f"the {SENTINELS} sentinel ids: set data.context <= {longest}")

    def tokenizer_texts(self, data):
        lines = [line for line in _text(data.corpus)[0].splitlines() if line.strip()]
        if not data.tokenizer_corpus:
            return lines
        if data.tokenizer_corpus not in TEXT2TEXT_CORPORA:
            raise UsageError(f"data.tokenizer_corpus must be a text-to-text mixture ({', '.join(TEXT2TEXT_CORPORA)}) "
                             f"or \"\", got {data.tokenizer_corpus!r}")
        mixture = replace(data, corpus=data.tokenizer_corpus, tokenizer_corpus="")
        return lines + KINDS["text2text"].tokenizer_texts(mixture)  # its sources and targets

    def _task(self, data, tokenizer, train, valid) -> SpanCorruptionTask:
        return SpanCorruptionTask(train, valid, context=data.context, batch_size=data.batch_size,
                                  first_sentinel_id=tokenizer.vocab_size + SENTINELS - 1, eos_id=tokenizer.eos_id,
                                  pad_id=tokenizer.pad_id, decoder_start_id=tokenizer.pad_id, seed=data.seed,
                                  eval_batches=data.eval_batches)

    def build_task(self, data, tokenizer) -> SpanCorruptionTask:
        train, valid = _text(data.corpus)
        return self._task(data, tokenizer, self._ids(train, tokenizer), self._ids(valid, tokenizer))

    @torch.no_grad()
    def evaluate(self, model, tokenizer, data, *, max_tokens: int | None = None, show: int = 2, **_) -> Evaluation:
        """Loss and argmax accuracy of the targets (sentinels, dropped tokens, eos) over consecutive windows
        of ``data.context`` held-out tokens (the first ``max_tokens``), corrupted with seeds fixed by the
        data seed (the windows the training run's evaluations score come first); ``show`` of them with
        the model's greedy answer."""
        ids = self._held_out(data, tokenizer, max_tokens)
        if ids.numel() <= data.context:
            raise UsageError(f"the held-out text has {ids.numel()} tokens; span corruption scores windows of "
                             f"data.context = {data.context}: give more (--max-tokens)")
        task = self._task(data, tokenizer, ids, ids)
        model.eval()
        device = next(model.parameters()).device
        loss, correct, count, shown = 0.0, 0, 0, []
        for src, tgt_in, tgt_out in task.held_out(ids):
            src, tgt_in, tgt_out = src.to(device), tgt_in.to(device), tgt_out.to(device)
            logits = model(src, tgt_in)  # (B, U, vocab)
            scored = tgt_out != IGNORE
            loss += float(F.cross_entropy(logits[scored].float(), tgt_out[scored], reduction="sum"))
            correct += int((logits[scored].argmax(-1) == tgt_out[scored]).sum())
            count += int(scored.sum())
            if len(shown) < show:
                k = show - len(shown)
                answer = model.generate(src[:k], tgt_out.shape[1])[:, 1:]  # greedy
                shown += zip(src[:k].tolist(), tgt_out[:k].tolist(), answer.tolist())
        acc, nats = correct / max(count, 1), loss / max(count, 1)
        lines = [f"held-out span-corruption targets: {count:,} tokens (of {ids.numel():,} held-out "
                 f"{_unit(data)}s); accuracy {100 * acc:.1f}%; loss {nats:.3f} nats ({nats / math.log(2):.3f} bits)"]
        examples = []
        for s, t, a in shown:
            text, target, answer = (decode_with_sentinels(tokenizer, x) for x in (s, t, a))
            examples.append((text, answer, [target]))
            lines += [f"  {text[:300]}", f"    -> {answer[:200]}", f"    reference: {target[:200]}"]
        return Evaluation({"target_accuracy": acc, "target_loss": nats, "target_tokens": count}, lines, examples)


# ---- text to text ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _mixture(corpus: str) -> dict:
    try:
        return mixture_splits(corpus)
    except FileNotFoundError as e:  # a source's files not installed (WordNet, the dictionaries)
        raise UsageError(f"data.corpus = {corpus!r}: {e}") from None


class TextToTextKind(_T5Kind):
    """Multi-task text-to-text training on a mixture (:data:`attnkit.data.TEXT2TEXT_CORPORA`), each task
    named by the prefix of its inputs; scored per task on its test examples (BLEU and chrF for
    translation, exact match for part of speech, chrF and BLEU for definitions). ``translate`` answers
    any text that starts with a task's prefix."""

    name, noun, command = "text2text", "text-to-text model", "translate"

    def describe(self, data) -> str:
        tasks = ", ".join(TEXT2TEXT_CORPORA.get(data.corpus, ()))
        return f"a text-to-text model of {data.corpus} ({tasks})"

    def check_data(self, model_type, data):
        if data.corpus not in TEXT2TEXT_CORPORA:
            raise UsageError(f"{model_type} is a text-to-text model: data.corpus must be a text-to-text mixture "
                             f"({', '.join(TEXT2TEXT_CORPORA)}), got {data.corpus!r} (span-corruption pre-training "
                             f"on a text corpus: [model] type = \"T5SpanCorruption\")")
        self._check_tokenizer(model_type, data)

    def training_examples(self, data) -> dict[str, list[Example]]:
        """{task: the training examples a run trains on}: all, or ``data.train_examples`` of each task (a
        seeded sample per task in which a smaller one is always part of a larger one)."""
        out = {}
        for task, splits in _mixture(data.corpus).items():
            train = splits["train"]
            keep = subsample(len(train), data.train_examples, derive_seed(data.seed, "text2text-subsample", task))
            out[task] = train if len(keep) == len(train) else [train[i] for i in keep]
        return out

    def tokenizer_texts(self, data):
        examples = [e for part in self.training_examples(data).values() for e in part]
        return [e.source for e in examples] + [e.target for e in examples]

    def build_task(self, data, tokenizer) -> TextToTextTask:
        def encode(examples):
            return list(zip(_encode(tokenizer, [e.source for e in examples]),
                            _encode(tokenizer, [e.target for e in examples])))

        n_valid = data.eval_batches * data.batch_size  # the most of one task that evaluation scores
        train = {task: encode(part) for task, part in self.training_examples(data).items()}
        valid = {task: encode(splits["validation"][:n_valid]) for task, splits in _mixture(data.corpus).items()}
        scorer = None
        if data.valid_bleu_sentences:
            def scorer(model):
                scores = self.score(model, tokenizer, data, split="validation", limit=data.valid_bleu_sentences,
                                    beam_size=1, show=0).metrics
                return {f"valid_{k}": v for k, v in scores.items() if not k.endswith("_examples")}
        return TextToTextTask(
            train, valid, rates=mixing_rates({t: len(v) for t, v in train.items()}, data.mixture_cap),
            pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id, decoder_start_id=tokenizer.pad_id,
            batch_size=data.batch_size, max_len=data.max_len, seed=data.seed, eval_batches=data.eval_batches,
            scorer=scorer,
        )

    def score(self, model, tokenizer, data, *, mixture: str | None = None, split: str = "test",
              limit: int | None = None, beam_size: int = 4, length_penalty: float = 1.0, show: int = 5) -> Evaluation:
        """Each task of ``mixture`` (default the run's) scored on ``limit`` sources of ``split`` (default
        :data:`DEFAULT_LIMIT`), spread evenly over it, each source answered once and scored against all
        its targets there. Metrics are named ``<task>_<metric>``."""
        mixture = data.corpus if mixture is None else mixture
        metrics, lines, examples = {}, [], []
        for name, splits in _mixture(mixture).items():
            task = TASKS[name]
            refs: dict[str, list[str]] = {}
            for e in splits[split]:
                refs.setdefault(e.source, []).append(e.target)
            sources = list(refs)
            n = min(limit or DEFAULT_LIMIT, len(sources))
            sources = [sources[i * len(sources) // n] for i in range(n)]
            hyps = generate_texts(model, tokenizer, sources, max_len=data.max_len, beam_size=beam_size,
                                  length_penalty=length_penalty)
            head = f"{name} ({task.prefix.strip()}) {split} {task.what}: {n:,};"
            if task.metric == "accuracy":
                majority = Counter(e.target for e in splits["train"]).most_common(1)[0][0]
                acc = sum(h in refs[s] for s, h in zip(sources, hyps)) / max(n, 1)
                base = sum(majority in refs[s] for s in sources) / max(n, 1)
                metrics.update({f"{name}_accuracy": acc, f"{name}_majority_accuracy": base})
                lines.append(f"{head} exact match {100 * acc:.1f}% (always {majority}: {100 * base:.1f}%)")
            else:
                from ..evaluation import bleu_chrf

                scores = bleu_chrf(hyps, [refs[s] for s in sources]) if n else {"bleu": 0.0, "chrf": 0.0}
                metrics.update({f"{name}_bleu": scores["bleu"], f"{name}_chrf": scores["chrf"]})
                setting = f"sacreBLEU, beam {beam_size}, length penalty {length_penalty:g}"
                lines.append(f"{head} BLEU {scores['bleu']:.1f}; chrF {scores['chrf']:.1f} ({setting})")
            metrics[f"{name}_examples"] = n
            step = max(1, n // max(show, 1))
            for i in list(range(0, n, step))[:show]:
                examples.append((sources[i], hyps[i], refs[sources[i]]))
                lines += [f"  {sources[i][:120]}", f"    -> {hyps[i][:200]}",
                          f"    reference: {refs[sources[i]][0][:200]}"]
        return Evaluation(metrics, lines, examples)

    def evaluate(self, model, tokenizer, data, *, beam_size: int = 4, limit: int | None = None, show: int = 5,
                 length_penalty: float = 1.0, test_corpus: str | None = None, **_) -> Evaluation:
        """Per task of the run's mixture (or of the mixture ``test_corpus``, e.g. a multi-task run on
        "t5-pos"): ``limit`` test sources (default :data:`DEFAULT_LIMIT`, 200) answered with beam search,
        each task scored with its metric, and ``show`` examples of each."""
        if test_corpus is not None and test_corpus not in TEXT2TEXT_CORPORA:
            raise UsageError(f"test corpus {test_corpus!r} is not a text-to-text mixture "
                             f"({', '.join(TEXT2TEXT_CORPORA)})")
        return self.score(model, tokenizer, data, mixture=test_corpus, limit=limit, beam_size=beam_size,
                          length_penalty=length_penalty, show=show)

    def translate(self, model, tokenizer, data, texts: list[str], *, beam_size: int = 4) -> list[str]:
        """Answer each text (the run operations' hook for ``translate``): a text must start with the prefix
        of one of the run's tasks, which a single-task run adds itself when it is missing."""
        tasks = TEXT2TEXT_CORPORA[data.corpus]
        prefixes = [TASKS[t].prefix for t in tasks]
        ready = []
        for text in texts:
            if not text.startswith(tuple(prefixes)):
                if len(prefixes) > 1:
                    raise UsageError(f"{text[:40]!r} names no task: this run does {', '.join(tasks)}; start each "
                                     f"text with its task's prefix ({', '.join(repr(p) for p in prefixes)}) or give "
                                     "--prefix")
                text = prefixes[0] + text
            ready.append(text)
        return generate_texts(model, tokenizer, ready, max_len=data.max_len, beam_size=beam_size)


# This module's kinds and model families, added to the registries when attnkit.runs is imported: one model,
# two types, since a type has one kind (pre-training by span corruption, and text to text).
KINDS.update({k.name: k for k in (SpanCorruptionKind(), TextToTextKind())})
register_model("T5", T5, T5RunConfig, "text2text")
register_model("T5SpanCorruption", T5, T5RunConfig, "span")
