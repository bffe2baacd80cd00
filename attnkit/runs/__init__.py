"""Runs: what the ``attnkit`` command does, as plain functions.

- :class:`RunConfig` (``[model]``, ``[data]``, ``[train]``; presets ship in ``attnkit/configs/``);
- :data:`MODELS`: one :class:`ModelSpec` per model family (model, config, task kind);
- run operations: :func:`train_run`, :func:`resume_run`, :func:`evaluate_run`, :func:`sample_run`,
  :func:`translate_run`, :func:`describe`, :func:`attention_run`, over run folders
  (:class:`attnkit.train.RunFolder`).
"""

from . import classify, text2text  # noqa: F401 (they add their kinds and model families to the registries)
from .config import DataConfig, RunConfig, apply_override, config_path, presets
from .kinds import KINDS, Evaluation, TaskKind
from .ops import (
    Description,
    Run,
    TrainResult,
    attention_run,
    build_model,
    build_tokenizer,
    capture_text,
    count_parameters,
    describe,
    evaluate_run,
    load_run,
    read_run_config,
    resolve_model_config,
    resume_run,
    sample,
    sample_run,
    train_run,
    translate_run,
)
from .registry import MODELS, ModelSpec, register_model

__all__ = [
    "DataConfig", "Description", "Evaluation", "KINDS", "MODELS", "ModelSpec", "Run", "RunConfig", "TaskKind",
    "TrainResult", "apply_override", "attention_run", "build_model", "build_tokenizer", "capture_text", "config_path",
    "count_parameters", "describe", "evaluate_run", "load_run", "presets", "read_run_config", "register_model",
    "resolve_model_config", "resume_run", "sample", "sample_run", "train_run", "translate_run",
]
