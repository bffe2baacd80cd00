"""Learning-rate schedules as plain functions of the step (so resuming needs no scheduler state)."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "noam", "constant")


def lr_at(step: int, *, lr: float, warmup_steps: int, max_steps: int, schedule: str = "cosine",
          min_lr_ratio: float = 0.1, progress: float | None = None) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    - "cosine": linear warm-up to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at ``max_steps``.
    - "noam": linear warm-up, then decay as 1/sqrt(step) ("Attention Is All You Need", eq. 3, with
      the peak set to ``lr`` instead of d_model^-0.5 * warmup^-0.5).
    - "constant": linear warm-up, then constant.

    ``progress`` (0..1) overrides how far the cosine decay has gone: a run with a time budget passes the
    fraction of its budget used, so it decays fully whenever it stops.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    s = step + 1
    if warmup_steps > 0 and s <= warmup_steps:
        return lr * s / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "noam":
        return lr * math.sqrt(max(warmup_steps, 1) / s)
    if progress is None:
        progress = (s - warmup_steps) / max(1, max_steps - warmup_steps)
    progress = min(1.0, max(0.0, progress))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
