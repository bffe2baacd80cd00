"""Training: the trainer, schedules, atomic checkpoints, the run folder, tasks."""

from .checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    newest_valid_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from .runfolder import RunFolder
from .schedules import lr_at
from .tasks import (
    IGNORE,
    DuplicationTask,
    LanguageModelingTask,
    MaskedLMTask,
    Seq2SeqTask,
    Task,
    derive_seed,
    mask_tokens,
    token_loss,
)
from .trainer import TrainConfig, Trainer

__all__ = [
    "CheckpointError",
    "DuplicationTask",
    "IGNORE",
    "LanguageModelingTask",
    "MaskedLMTask",
    "RunFolder",
    "Seq2SeqTask",
    "Task",
    "TrainConfig",
    "Trainer",
    "derive_seed",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at",
    "mask_tokens",
    "newest_valid_checkpoint",
    "save_checkpoint",
    "token_loss",
    "verify_checkpoint",
]
