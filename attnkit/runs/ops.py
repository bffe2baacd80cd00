"""The run operations, shared by the ``attnkit`` command and the examples: train, resume, evaluate,
sample, translate, describe. Each is a plain function over a :class:`RunConfig` or a run folder.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..train import RunFolder, TrainConfig, Trainer
from ..train.checkpoint import load_checkpoint, read_config, read_state
from .config import RunConfig, _build
from .kinds import Evaluation
from .registry import MODELS, ModelSpec

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- building ---------------------------------------------------------------------------------

def build_tokenizer(config: RunConfig):
    """The tokenizer a fresh run of ``config`` trains with (learned from its training text where it learns;
    with ``model.init_from``, the pre-trained model's own, so that token ids agree)."""
    from ..data import TOKENIZERS

    data = config.data
    kind = MODELS[config.model_type].kind
    kind.check_data(config.model_type, data)
    if data.tokenizer_corpus and (not kind.reads_tokenizer_corpus or config.model.get("init_from")):
        raise UsageError(f"data.tokenizer_corpus = {data.tokenizer_corpus!r}: only span-corruption pre-training "
                         "trains its tokenizer on a further corpus (a run with model.init_from takes its tokenizer)")
    if config.model.get("init_from"):
        return kind.pretrained_tokenizer(config.model["init_from"], data)
    try:
        return TOKENIZERS[data.tokenizer].build(kind.tokenizer_texts(data), data.vocab_size)
    except FileNotFoundError as e:  # files a tokenizer needs (GPT-2's) are not installed
        raise UsageError(f"data.tokenizer = {data.tokenizer!r}: {e}") from None


def resolve_model_config(config: RunConfig, tokenizer):
    """The model config a run of ``config`` builds: the [model] values plus what the tokenizer and the
    data fix (vocabulary sizes, lengths, padding id)."""
    spec = MODELS[config.model_type]
    spec.kind.check_data(config.model_type, config.data)
    values = {k: v for k, v in config.model.items() if k != "type"}
    return _build("model", spec.config, spec.kind.resolve(spec.config, values, config.data, tokenizer))


def build_model(config: RunConfig, model_config, *, pretrained: bool = True) -> torch.nn.Module:
    """The model with its initial weights (drawn from ``train.seed``); with ``model.init_from`` and
    ``pretrained``, the weights its kind copies from the pre-trained model that names (a classifier's
    backbone, :mod:`.classify`; every weight of a T5, :mod:`.text2text`)."""
    torch.manual_seed(config.train.seed)
    model = MODELS[config.model_type].model(model_config)
    if pretrained and getattr(model_config, "init_from", None):
        MODELS[config.model_type].kind.load_pretrained(model, model_config.init_from)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable numbers, a tensor shared by several modules (tied embeddings) counted once."""
    return sum(p.numel() for p in model.parameters())


# ---- a trained run ----------------------------------------------------------------------------

@dataclass
class Run:
    """A run folder loaded for use: its config, tokenizer and the model of its newest valid checkpoint."""

    folder: RunFolder
    config: RunConfig
    tokenizer: Any
    model: torch.nn.Module
    checkpoint: Path

    @property
    def spec(self) -> ModelSpec:
        return MODELS[self.config.model_type]

    def describe(self) -> str:
        """e.g. "runs/x is a character-level language model"."""
        return f"{self.folder.path} is {self.spec.kind.describe(self.config.data)}"


def _skip_message(log: Log):
    return lambda path, error: log(f"attnkit: skipping checkpoint {path.name}: {error}")


def _run_folder(path: str | Path) -> tuple[RunFolder, Path | None]:
    """A run folder, or a checkpoint folder inside one (then that checkpoint)."""
    path = Path(path)
    if (path / "manifest.json").is_file() and (path.parent / "run.json").is_file():
        return RunFolder(path.parent), path
    return RunFolder(path), None


def read_run_config(path: str | Path) -> RunConfig:
    return RunConfig.from_dict(_run_folder(path)[0].read_config())


def load_tokenizer(folder: RunFolder, config: RunConfig):
    from ..data import TOKENIZERS

    if not folder.tokenizer_path.is_file():
        raise UsageError(f"{folder.path} has no {folder.tokenizer_path.name}: the run folder is incomplete")
    return TOKENIZERS[config.data.tokenizer].load(folder.tokenizer_path)


def load_run(path: str | Path, *, log: Log = _stderr) -> Run:
    """Load a run folder (its newest checkpoint that verifies; a corrupt newer one is skipped with a
    message), or a given checkpoint folder of a run."""
    folder, checkpoint = _run_folder(path)
    config = RunConfig.from_dict(folder.read_config())
    tokenizer = load_tokenizer(folder, config)
    verified = checkpoint is None  # the newest valid one is verified while it is looked for
    if checkpoint is None:
        checkpoint = folder.newest_checkpoint(on_skip=_skip_message(log))
        if checkpoint is None:
            raise UsageError(f"{folder.path} holds no checkpoint yet: `attnkit train` writes one every "
                             f"{config.train.checkpoint_every} steps")
    spec = MODELS[config.model_type]
    values = read_config(checkpoint)
    values.pop("type", None)
    try:
        model_config = spec.config.from_dict(values)
    except ValueError as e:  # written by another version of attnkit, or edited by hand
        raise UsageError(f"{checkpoint / 'config.json'} does not describe a {config.model_type}: {e}") from None
    model = spec.model(model_config)
    load_checkpoint(checkpoint, model, verify=not verified)
    return Run(folder, config, tokenizer, model.eval(), checkpoint)


def _as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else load_run(run)


# ---- train and resume -------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What a training process did: the run folder, the Trainer's summary, the model's size."""

    folder: RunFolder
    summary: dict[str, Any]
    n_parameters: int
    rank: int = 0


def _prepare_folder(folder: RunFolder, overwrite: bool, rank: int) -> None:
    path = folder.path
    if folder.checkpoints() and not overwrite:
        raise UsageError(f"{path} already holds checkpoints: `attnkit resume {path}` continues it, "
                         "--overwrite starts again, --run-dir picks another folder")
    if path.exists() and not path.is_dir():
        raise UsageError(f"run folder {path} is a file")
    if overwrite and path.is_dir() and any(path.iterdir()):
        if not (folder.is_run() or folder.checkpoints() or folder.metrics_path.exists()):
            raise UsageError(f"--overwrite: {path} is not an attnkit run folder; refusing to delete it")
        if rank == 0:
            shutil.rmtree(path)


def train_run(config: RunConfig, run_dir: str | Path, *, overwrite: bool = False, strategy: str = "ddp",
              log: Log = print) -> TrainResult:
    """Train a fresh run of ``config`` into ``run_dir``; under ``torchrun`` every rank calls this.

    Rank 0 alone clears the folder (``overwrite``), builds the tokenizer and writes ``run.json`` and
    ``tokenizer.json``; the other ranks read them.
    """
    from ..train.distributed import barrier, init_distributed

    rank, world, device = init_distributed()
    folder = RunFolder(run_dir)
    _prepare_folder(folder, overwrite, rank)
    barrier()
    if rank == 0:
        tokenizer = build_tokenizer(config)
        resolve_model_config(config, tokenizer)  # every value checked before the folder is written
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.write_config(config.to_dict())
        tokenizer.save(folder.tokenizer_path)
    barrier()
    if rank != 0:
        tokenizer = load_tokenizer(folder, config)
    return _train(config, folder, tokenizer, resume=False, strategy=strategy, log=log)


def resume_run(run_dir: str | Path, *, minutes: float | None = None, max_steps: int | None = None,
               strategy: str = "ddp", log: Log = print) -> TrainResult:
    """Continue a run from its newest valid checkpoint.

    ``minutes`` trains that many more minutes (the time budget becomes the training time so far plus
    ``minutes``; the cosine decay then follows the new budget); ``max_steps`` sets a new step limit.
    A run that already ended (budget, steps, early stopping) is only continued when extended.
    """
    from ..train.distributed import barrier, init_distributed

    rank, world, device = init_distributed()
    folder = RunFolder(run_dir)
    config = RunConfig.from_dict(folder.read_config())
    checkpoint = folder.newest_checkpoint(on_skip=_skip_message(log) if rank == 0 else None)
    if checkpoint is None:
        raise UsageError(f"{folder.path} holds no checkpoint yet: start it again with `attnkit train --overwrite`")
    state = read_state(checkpoint)  # verified just above
    trainer_state = state.get("trainer", {})
    elapsed_min = trainer_state.get("elapsed_s", 0.0) / 60
    train = config.train.to_dict()
    if minutes is not None:
        if not (minutes > 0 and math.isfinite(minutes)):
            raise UsageError(f"--minutes must be a positive number, got {minutes}")
        train["minutes"] = elapsed_min + minutes
    if max_steps is not None:
        if max_steps <= state["step"]:
            raise UsageError(f"--max-steps {max_steps} is not beyond the checkpoint's step {state['step']}")
        train["max_steps"] = max_steps
    config.train = TrainConfig.from_dict(train)
    ended = trainer_state.get("stop_reason")
    if ended and minutes is None and max_steps is None:
        why = {
            "time_budget": f"reached its {config.train.minutes:g}-minute budget",
            "max_steps": f"reached max_steps = {config.train.max_steps}",
            "early_stopping": f"stopped early (no better held-out loss in {config.train.patience} evaluations)",
        }.get(ended, f"ended ({ended})")
        raise UsageError(f"{folder.path} {why} at step {state['step']}: `attnkit resume {folder.path} --minutes N` "
                         "trains N minutes more, `--max-steps N` up to step N")
    if ended == "early_stopping":
        config.train.patience = 0
    if rank == 0 and (minutes is not None or max_steps is not None):
        folder.write_config(config.to_dict())
        log(f"attnkit: continuing {folder.path} from step {state['step']} "
            f"(budget {config.train.minutes:g} minutes, max_steps {config.train.max_steps})")
    barrier()
    return _train(config, folder, load_tokenizer(folder, config), resume=True, strategy=strategy, log=log)


def _train(config: RunConfig, folder: RunFolder, tokenizer, *, resume: bool, strategy: str, log: Log) -> TrainResult:
    from ..train.distributed import cleanup, init_distributed, wrap_model

    rank, world, device = init_distributed()
    model_config = resolve_model_config(config, tokenizer)
    model = build_model(config, model_config, pretrained=not resume)  # a resumed run has its checkpoint
    task = MODELS[config.model_type].kind.build_task(config.data, tokenizer)
    n = count_parameters(model)
    if rank == 0 and not resume:
        log(f"attnkit: {config.model_type} with {n:,} parameters ({n / 1e6:.2f}M), vocabulary "
            f"{tokenizer.vocab_size} ({config.data.tokenizer}), run folder {folder.path}")
    trainer = Trainer(wrap_model(model, device, strategy), task, config.train, run_dir=folder.path,
                      model_config=model_config, device=device)
    summary = trainer.train(resume=resume)
    cleanup()
    return TrainResult(folder, summary, n, rank)


# ---- using a run ------------------------------------------------------------------------------

def _require_kind(run: Run, command: str) -> None:
    if run.spec.kind.command != command:
        fits = f"use `attnkit {run.spec.kind.command}`; " if run.spec.kind.command else "use `attnkit eval`; "
        need = {"generate": "a language-model run", "translate": "a translation run"}[command]
        raise UsageError(f"{run.describe()}: {fits}`{command}` needs {need}")


def evaluate_run(run: Run | str | Path, **options) -> Evaluation:
    """Score a run on held-out data, as its kind does: bits per token (language models), masked-token
    accuracy and loss (masked LMs), BLEU and chrF on the test pairs (translation), accuracy and
    macro-F1 on the test texts (classifiers), each task's score (text to text), the targets' loss and
    accuracy (span corruption).

    ``options``: ``max_tokens`` (text kinds: score only the first N held-out tokens), ``beam_size``,
    ``limit`` and ``show`` (translation; classifiers: ``limit`` and ``show``).
    """
    run = _as_run(run)
    return run.spec.kind.evaluate(run.model, run.tokenizer, run.config.data, **options)


def encode_input(tokenizer, text: str, what: str, longest: int) -> list[int]:
    """``text`` as token ids for a model; a user error (naming ``what``, e.g. "the prompt") when it is
    empty, holds characters the tokenizer never saw or that it cannot read, or is over ``longest`` tokens."""
    if not text:
        raise UsageError(f"{what} is empty: give the text to use")
    try:
        ids = tokenizer.encode(text)
    except ValueError as e:  # text the tokenizer cannot read (token ids expected, ...)
        raise UsageError(f"{what}: {e}") from None
    unk = getattr(tokenizer, "unk_id", None)
    if unk is not None and unk in ids:
        unseen = "".join(sorted({c for c, i in zip(text, ids) if i == unk}))
        raise UsageError(f"{what} holds characters the model never saw: {unseen!r}")
    if len(ids) > longest:
        raise UsageError(f"{what} is {len(ids)} tokens; the model's context allows {longest}: shorten it")
    return ids


def sample(model, tokenizer, prompt: str, *, max_new_tokens: int = 200, temperature: float = 0.8,
           top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
           beam_size: int = 1, seed: int = 0, on_text: Callable[[str], None] | None = None) -> str:
    """Continue ``prompt`` with a language model -> the new text. ``on_text`` receives the text as it
    is generated (not with beam search, which decides at the end)."""
    ids = encode_input(tokenizer, prompt, "the prompt", model.config.max_len - 1)
    max_len = model.config.max_len
    n = min(max_new_tokens, max_len - len(ids))
    streamed: list[int] = list(ids)

    def on_token(token):  # decode prompt and tail together, so pieces join (bytes, separators)
        before = tokenizer.decode(streamed)
        streamed.append(int(token[0]))
        on_text(tokenizer.decode(streamed)[len(before):])

    options = dict(on_token=on_token) if on_text is not None and beam_size == 1 else {}
    out = model.generate(torch.tensor([ids]), n, temperature=temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty, generator=torch.Generator().manual_seed(seed),
                         beam_size=beam_size, eos_id=getattr(tokenizer, "stop_ids", None) or None, **options)
    return tokenizer.decode(out[0].tolist())[len(tokenizer.decode(ids)):]


def sample_run(run: Run | str | Path, prompt: str, **sampling) -> str:
    """Continue ``prompt`` with a language-model run (see :func:`sample` for the options)."""
    run = _as_run(run)
    _require_kind(run, "generate")
    return sample(run.model, run.tokenizer, prompt, **sampling)


def translate_run(run: Run | str | Path, texts: list[str], *, beam_size: int = 4, prefix: str = "") -> list[str]:
    """Translate ``texts`` with a translation run (beam search with length penalty 1), or answer them with
    a text-to-text run, each text starting with a task's prefix (or after ``prefix``, e.g.
    "translate German to English: ", which only text-to-text runs take)."""
    from ..evaluation import translate

    run = _as_run(run)
    _require_kind(run, "translate")
    if not texts or not all(t.strip() for t in texts):
        raise UsageError("nothing to translate: give non-empty sentences")
    own = getattr(run.spec.kind, "translate", None)  # a kind's own decoding (text to text)
    if own is None:
        if prefix:
            raise UsageError(f"{run.describe()}: --prefix names the task of a text-to-text run")
        return translate(run.model, run.tokenizer, texts, beam_size=beam_size)
    return own(run.model, run.tokenizer, run.config.data, [prefix + t for t in texts], beam_size=beam_size)


@dataclass
class Description:
    """What a run config or run folder builds: the kind, the parameter count and the resolved config."""

    what: str
    model_type: str
    n_parameters: int
    config: dict[str, Any]

    def report(self) -> str:
        import json

        n = self.n_parameters
        return (f"{self.what}: {self.model_type} with {n:,} parameters ({n / 1e6:.2f}M; tied weights counted once)\n"
                + json.dumps(self.config, indent=2))


def describe(config: RunConfig | None = None, run_dir: str | Path | None = None) -> Description:
    """Describe the model a config would build (its tokenizer trained as training would) or that a run
    folder built (its own tokenizer): the resolved model config and the exact parameter count."""
    if (config is None) == (run_dir is None):
        raise ValueError("give exactly one of config and run_dir")
    if run_dir is not None:
        folder = _run_folder(run_dir)[0]
        config = RunConfig.from_dict(folder.read_config())
        tokenizer = load_tokenizer(folder, config)
    else:
        tokenizer = build_tokenizer(config)
    model_config = resolve_model_config(config, tokenizer)
    model = MODELS[config.model_type].model(model_config)
    resolved = {"model": {"type": config.model_type, **model_config.to_dict()}, "data": config.data.to_dict(),
                "train": config.train.to_dict()}
    what = MODELS[config.model_type].kind.describe(config.data)
    return Description(what, config.model_type, count_parameters(model), resolved)


# ---- attention ----------------------------------------------------------------------------------

def capture_text(model, tokenizer, text: str, *, kind: str, beam_size: int = 4,
                 layers: list[int | str] | None = None, heads: list[int] | None = None):
    """The attention maps of ``model`` for ``text`` (see :func:`attnkit.inspect.capture_attention`).

    ``kind`` "lm" or "mlm" (also a pretrained encoder): ``text`` is the input. "seq2seq": ``text`` is
    the source; it is translated first (beam search), and the maps are those of the forward pass over
    the translation, its rows labelled by the token each decoder position produced.
    """
    from ..inspect import capture_attention, token_labels

    ids = encode_input(tokenizer, text, "the text", model.config.max_len)
    options = dict(layers=layers, heads=heads)
    try:
        if kind != "seq2seq":
            return capture_attention(model, torch.tensor([ids]), tokens=token_labels(tokenizer, ids), **options)
        src = torch.tensor([ids])
        out = model.generate(src, 100, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, beam_size=beam_size)
        produced = out[0, 1:].tolist()
        if tokenizer.eos_id in produced:
            produced = produced[: produced.index(tokenizer.eos_id) + 1]
        tgt_in = torch.tensor([[tokenizer.bos_id, *produced[:-1]]]) if produced else out[:, :1]
        rows = [("</s>" if i == tokenizer.eos_id else tokenizer.decode([i])) for i in produced] or ["</s>"]
        return capture_attention(model, src, tgt_in, tokens=rows, source_tokens=token_labels(tokenizer, ids),
                                 **options)
    except ValueError as e:  # a layer or head the model does not have
        if str(e).startswith(("layers:", "heads:")):
            raise UsageError(f"--{e}") from None
        raise


ATTENTION_KINDS = ("lm", "mlm", "seq2seq")  # the kinds capture_text reads


def attention_run(run: Run | str | Path, text: str, **options):
    """The attention maps of a run's model for ``text`` (see :func:`capture_text`)."""
    run = _as_run(run)
    if run.spec.kind.name not in ATTENTION_KINDS:
        raise UsageError(f"{run.describe()}: `attnkit attention` shows the attention of language models, masked "
                         f"language models and translation models")
    return capture_text(run.model, run.tokenizer, text, kind=run.spec.kind.name, **options)
