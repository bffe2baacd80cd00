"""The run folder: the one writer and reader of its format.

    run.json            the run's configuration ([model], [data], [train]) as given, resolved by the reader
    tokenizer.json      the tokenizer the run trained with
    metrics.jsonl       one JSON record per line: {"step", "loss", "lr", ...} and {"step", "eval_loss", ...}
    step-0000120/       checkpoints (see attnkit.train.checkpoint), the newest few kept

Everything is written atomically (a crash leaves the old file or the new one); metrics records after
the checkpoint a resumed run starts from are dropped, so the log always matches the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..io import atomic_write_text
from .checkpoint import list_checkpoints, newest_valid_checkpoint, save_checkpoint

RUN_CONFIG, TOKENIZER, METRICS = "run.json", "tokenizer.json", "metrics.jsonl"


class RunFolder:
    """A run folder at ``path`` (created on the first write)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- configuration and tokenizer --------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / RUN_CONFIG

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def write_config(self, values: dict[str, Any]) -> None:
        atomic_write_text(self.config_path, json.dumps(values, indent=2), fsync=True)

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            what = "does not exist" if not self.path.exists() else f"has no {RUN_CONFIG}"
            raise UsageError(f"{self.path} {what}: it is not an attnkit run folder "
                             "(attnkit train --config ... makes one)")
        try:
            return json.loads(self.config_path.read_text())
        except json.JSONDecodeError as e:
            raise UsageError(f"{self.config_path} is not valid JSON: {e}") from None

    # ---- metrics ----------------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def append_metrics(self, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete record (a last line cut short by a crash is left out)."""
        if not self.metrics_path.is_file():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate_metrics(self, step: int) -> None:
        """Drop the records after ``step`` (written after the checkpoint a resumed run starts from)."""
        if not self.metrics_path.is_file():
            return
        keep = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        tmp = self.metrics_path.with_name(f".{METRICS}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.metrics_path)

    # ---- checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(self, step: int, model_state, model_config, optimizer_state, trainer_state,
                        keep: int, name: str | None = None) -> Path:
        """Write checkpoint ``step`` atomically, keeping the newest ``keep``, or as ``name`` (e.g. "best")
        (see attnkit.train.checkpoint)."""
        return save_checkpoint(self.path, step, model_state, model_config, optimizer_state, trainer_state, keep=keep,
                               name=name)

    @property
    def best_checkpoint(self) -> Path:
        """Where a run with ``train.keep_best`` keeps the checkpoint of its lowest held-out loss."""
        return self.path / "best"

    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.path)

    def newest_checkpoint(self, on_skip=None) -> Path | None:
        """The newest checkpoint that verifies (older ones are tried when a newer one is corrupt)."""
        return newest_valid_checkpoint(self.path, on_skip=on_skip)
