"""Training: the trainer, schedules, atomic checkpoints, tasks."""

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint, verify_checkpoint
from .schedules import lr_at
from .tasks import LanguageModelingTask, MaskedLMTask, Seq2SeqTask
from .trainer import TrainConfig, Trainer, token_loss

__all__ = [
    "CheckpointError",
    "LanguageModelingTask",
    "MaskedLMTask",
    "Seq2SeqTask",
    "TrainConfig",
    "Trainer",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at",
    "save_checkpoint",
    "token_loss",
    "verify_checkpoint",
]
