"""Text-to-text tasks and their mixtures (T5: Raffel et al. 2020): every task is text in, text out, the
task named by a prefix on the input.

The tasks (:data:`TASKS`), each with its source's own held-out split:

- ``"de-en"``: ``"translate German to English: " + German -> English``, corpus ``de-en-all`` (the Ding
  dictionary's sentences and the package descriptions; sha1 of the German sentence);
- ``"fr-en"``: ``"translate French to English: " + French -> English``, ``fr-en-descriptions`` (sha1 of
  the French sentence);
- ``"pos"``: ``"part of speech: " + gloss -> "noun" | "verb" | "adj" | "adv"``, the ``wordnet-pos``
  classification task as text (sha1 of the synset id);
- ``"define"``: ``"define: " + word -> definition``, one example per word of each WordNet synset
  (underscores as spaces), the target the synset's gloss without its quoted examples; the same sha1
  split by synset, so a test sense is never trained on (a polysemous word's other senses may be).

A held-out example whose (source, target) also occurs among the task's training examples (WordNet
repeats some glosses word for word) is dropped, so no test example of a task is trained on.

The mixtures (:data:`MIXTURES`, the names ``[data] corpus`` takes for a text-to-text run): ``"t5-mixture"``
holds all four tasks; ``"t5-de-en"``, ``"t5-fr-en"``, ``"t5-pos"`` and ``"t5-define"`` one each, with
the same prefixes and splits, for single-task baselines of the same size.

Mixing (:func:`mixing_rates`): examples-proportional with a cap (T5, section 3.5.2): task m is drawn
with rate ``min(e_m, K) / sum_n min(e_n, K)``, ``e_m`` its training examples, ``K`` the cap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

SPLITS = ("train", "validation", "test")
METRICS = ("translation", "accuracy", "definition")


class Example(NamedTuple):
    """One text-to-text example: the task's name, the input (with the task's prefix) and the target."""

    task: str
    source: str
    target: str


@dataclass(frozen=True)
class TextTask:
    """A text-to-text task: ``prefix`` starts every input; ``metric`` says how its test examples are
    scored ("translation": BLEU and chrF; "accuracy": exact match; "definition": chrF and BLEU);
    ``load()`` gives ``{"train", "validation", "test"}`` lists of (input without prefix, target)."""

    name: str
    prefix: str
    metric: str
    what: str  # the test examples, in words ("sentences", "glosses", "words")
    load: Callable[[], dict[str, list[tuple[str, str]]]]


def _pairs(corpus: str) -> dict[str, list[tuple[str, str]]]:
    """The splits of parallel corpus ``corpus`` ("de-en-all" or "fr-en-descriptions") as (source, English);
    loaded here, not through attnkit.data.corpora, which imports this module for its mixtures."""
    from .descriptions import load_de_en_all, load_descriptions

    splits = load_de_en_all() if corpus == "de-en-all" else load_descriptions(corpus.split("-")[0])
    return {name: [(p.de, p.en) for p in part] for name, part in splits.items()}


def _part_of_speech() -> dict[str, list[tuple[str, str]]]:
    from .wordnet import wordnet_pos_task

    return {name: [(text, part.label_names[label]) for text, label in zip(part.texts, part.labels)]
            for name, part in wordnet_pos_task().items()}


def definition(gloss: str) -> str:
    """A WordNet gloss without its quoted examples: 'open violently; "kick in the doors"' -> 'open violently'."""
    return gloss.split('; "')[0].strip().removesuffix(";").strip()


def _definitions() -> dict[str, list[tuple[str, str]]]:
    from .wordnet import load_wordnet, split_synsets

    return {name: [(word.replace("_", " "), definition(s.gloss)) for s in part for word in s.words
                   if definition(s.gloss) and not s.gloss.startswith('"')]
            for name, part in split_synsets(load_wordnet()).items()}


TASKS: dict[str, TextTask] = {
    "de-en": TextTask("de-en", "translate German to English: ", "translation", "sentences",
                      lambda: _pairs("de-en-all")),
    "fr-en": TextTask("fr-en", "translate French to English: ", "translation", "sentences",
                      lambda: _pairs("fr-en-descriptions")),
    "pos": TextTask("pos", "part of speech: ", "accuracy", "glosses", _part_of_speech),
    "define": TextTask("define", "define: ", "definition", "words", _definitions),
}
MIXTURES: dict[str, tuple[str, ...]] = {
    "t5-mixture": ("de-en", "fr-en", "pos", "define"),
    "t5-de-en": ("de-en",),
    "t5-fr-en": ("fr-en",),
    "t5-pos": ("pos",),
    "t5-define": ("define",),
}


def check_mixture(name: str) -> tuple[str, ...]:
    """The task names of mixture ``name``; a KeyError naming the mixtures when it is none."""
    if name not in MIXTURES:
        raise KeyError(f"{name!r} is not a text-to-text mixture ({', '.join(MIXTURES)})")
    unknown = [t for t in MIXTURES[name] if t not in TASKS]
    if unknown:
        raise KeyError(f"mixture {name!r} names tasks that do not exist: {unknown} (tasks: {', '.join(TASKS)})")
    return MIXTURES[name]


@functools.lru_cache(maxsize=8)
def task_splits(name: str) -> dict[str, list[Example]]:
    """{"train", "validation", "test"} examples of task ``name``, prefixed, each (source, target) once per
    split, and held-out examples that also occur in training dropped."""
    if name not in TASKS:
        raise KeyError(f"{name!r} is not a text-to-text task ({', '.join(TASKS)})")
    task = TASKS[name]
    raw = task.load()
    splits = {split: list(dict.fromkeys(Example(name, task.prefix + s, t) for s, t in raw[split]))
              for split in SPLITS}
    trained = set(splits["train"])
    for split in ("validation", "test"):
        splits[split] = [e for e in splits[split] if e not in trained]
    return splits


def mixture_splits(name: str) -> dict[str, dict[str, list[Example]]]:
    """{task: {"train", "validation", "test"}: examples} for each task of mixture ``name``."""
    return {task: task_splits(task) for task in check_mixture(name)}


def mixing_rates(sizes: dict[str, int], cap: int = 0) -> dict[str, float]:
    """Examples-proportional mixing with a cap (T5, section 3.5.2): ``{task: min(e, cap) / sum min(e', cap)}``
    for ``sizes = {task: e}`` training examples; ``cap = 0``: no cap (proportional to the sizes).

    Raises ValueError naming the argument for an empty ``sizes``, a size < 1 or a cap < 0."""
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        raise ValueError(f"cap must be an int >= 0 (0: no cap), got {cap!r}")
    if not sizes:
        raise ValueError("sizes is empty: a mixture needs at least one task")
    bad = {t: n for t, n in sizes.items() if isinstance(n, bool) or not isinstance(n, int) or n < 1}
    if bad:
        raise ValueError(f"sizes must be ints >= 1 (training examples per task), got {bad}")
    capped = {t: min(n, cap) if cap else n for t, n in sizes.items()}
    total = sum(capped.values())
    return {t: n / total for t, n in capped.items()}
