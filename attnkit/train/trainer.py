"""A small trainer that never loses work: exact resume, atomic checkpoints, logs, progress bar.

The data position is the step: a task's ``batch(i)`` is a pure function of ``i`` (and its seed), so a
resumed run sees exactly the batches it would have seen, and with the RNG state restored from the
checkpoint (dropout) it reproduces the uninterrupted run's losses bitwise on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..config import Config, check_choice, check_positive
from .checkpoint import latest_checkpoint, read_checkpoint, save_checkpoint, set_rng_state
from .schedules import SCHEDULES, lr_at


class Task(Protocol):
    """What the trainer needs from a task: deterministic batches and (logits, targets) from a model."""

    def batch(self, index: int) -> Any: ...

    def forward(self, model: torch.nn.Module, batch: Any) -> tuple[Tensor, Tensor]: ...

    def eval_batches(self) -> Iterable[Any]: ...


@dataclass
class TrainConfig(Config):
    max_steps: int = 1000
    lr: float = 3e-4
    schedule: str = "cosine"  # cosine | noam | constant
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0  # 0 disables
    accumulate: int = 1  # micro-batches per optimizer step
    label_smoothing: float = 0.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 on CUDA only)
    eval_every: int = 200
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    patience: int = 0  # evaluations without improvement before stopping; 0 disables early stopping
    minutes: float = 0.0  # wall-clock budget (the cosine decay follows it); 0 = none
    seed: int = 0
    log_every: int = 10
    progress: bool = True

    def __post_init__(self):
        check_positive(self, "max_steps", "accumulate", "eval_every", "checkpoint_every", "log_every")
        check_choice(self, "schedule", SCHEDULES)
        check_choice(self, "precision", ("fp32", "bf16", "fp16"))
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")


def token_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """Cross-entropy over (B, T, V) logits and (B, T) targets; target -100 is ignored."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100,
        label_smoothing=label_smoothing, reduction=reduction,
    )


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Trains ``model`` on ``task``; checkpoints to ``run_dir`` and resumes from it.

    With ``torch.distributed`` initialized (``torchrun``), wrap the model in DDP or FSDP first: every
    rank computes the same global batch index and takes its share of the rows.
    """

    def __init__(self, model: torch.nn.Module, task: Task, config: TrainConfig, *, run_dir: str | Path,
                 model_config=None, device: str | torch.device = "cpu"):
        self.model, self.task, self.config = model, task, config
        self.model_config = model_config if model_config is not None else getattr(_unwrap(model), "config", None)
        self.run_dir, self.device = Path(run_dir), torch.device(device)
        self.rank, self.world = _rank_world()
        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=(config.beta1, config.beta2),
        )
        self.scaler = torch.amp.GradScaler(enabled=config.precision == "fp16" and self.device.type == "cuda")
        self.step = 0
        self.state: dict[str, Any] = {"best_eval_loss": math.inf, "evals_without_improvement": 0}

    # ---- pieces -------------------------------------------------------------------------------

    def _autocast(self):
        c = self.config
        if c.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if c.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _shard(self, batch):
        """This rank's rows of a global batch (tensors, or tuples/dicts of tensors)."""
        if self.world == 1:
            return batch
        if isinstance(batch, Tensor):
            return batch.chunk(self.world)[self.rank]
        if isinstance(batch, dict):
            return {k: self._shard(v) for k, v in batch.items()}
        return type(batch)(self._shard(b) for b in batch)

    def _log(self, record: dict) -> None:
        if self.rank != 0:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, record["step"])

    @property
    def _tensorboard(self):
        """A TensorBoard writer into run_dir/tensorboard when the tensorboard package is installed."""
        if not hasattr(self, "_tb"):
            self._tb = None
            if self.rank == 0:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
                except ImportError:
                    pass
        return self._tb

    def _truncate_log(self, step: int) -> None:
        """Drop records after ``step`` (written after the checkpoint a resumed run starts from)."""
        path = self.run_dir / "metrics.jsonl"
        if self.rank != 0 or not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the crash
                continue
            if record.get("step", 0) <= step:
                keep.append(line)
        tmp = path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)

    def _full_state(self):
        """Full (unsharded) model and optimizer state dicts keyed by parameter name; a collective
        call under FSDP, so every rank must make it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(_unwrap(self.model), self.optimizer,
                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save(self) -> Path | None:
        model_state, optimizer_state = self._full_state()
        if self.rank != 0:
            return None
        return save_checkpoint(
            self.run_dir, self.step, model_state, self.model_config, optimizer_state,
            {**self.state, "train_config": self.config.to_dict()}, keep=self.config.keep_checkpoints,
        )

    def resume(self) -> bool:
        """Continue from the newest checkpoint in run_dir, if any (every rank reads it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        path = latest_checkpoint(self.run_dir)
        if path is None:
            return False
        model_state, optimizer_state, state = read_checkpoint(path)
        set_state_dict(_unwrap(self.model), self.optimizer, model_state_dict=model_state,
                       optim_state_dict=optimizer_state, options=StateDictOptions(full_state_dict=True, strict=True))
        set_rng_state(state["_rng_tensors"], state["rng"])
        self.step = state["step"]
        self.state = {k: v for k, v in state["trainer"].items() if k != "train_config"}
        self._truncate_log(self.step)
        return True

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean per-token loss over the task's evaluation batches (bits per token too)."""
        model = self.model
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for batch in self.task.eval_batches():
            with self._autocast():
                logits, targets = self.task.forward(model, _to(self._shard(batch), self.device))
            total += token_loss(logits, targets, reduction="sum").item()
            count += int((targets != -100).sum())
        if self.world > 1:
            t = torch.tensor([total, count], dtype=torch.float64)
            dist.all_reduce(t)
            total, count = t.tolist()
        model.train(was_training)
        loss = total / max(count, 1)
        return {"eval_loss": loss, "eval_bits_per_token": loss / math.log(2), "eval_tokens": int(count)}

    # ---- the loop -----------------------------------------------------------------------------

    def train(self, resume: bool = True) -> dict[str, Any]:
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(c.seed)  # dropout; a resumed run restores the RNG state it had instead
        if resume:
            self.resume()
        model = self.model.to(self.device).train()
        start_time, last_log = time.time(), (time.time(), 0)
        bar = None
        if c.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=c.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        tokens_seen, loss_value, stop_reason = 0, float("nan"), "max_steps"
        elapsed_before = self.state.get("elapsed_s", 0.0)  # training time of the runs this one resumes
        while self.step < c.max_steps:
            elapsed = elapsed_before + time.time() - start_time
            self.state["elapsed_s"] = elapsed
            progress = None
            if c.minutes:  # decay over whichever ends first: the steps or the time budget
                steps_done = (self.step + 1 - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
                progress = max(steps_done, elapsed / (60 * c.minutes))
            lr = lr_at(self.step, lr=c.lr, warmup_steps=c.warmup_steps, max_steps=c.max_steps,
                       schedule=c.schedule, min_lr_ratio=c.min_lr_ratio, progress=progress)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(c.accumulate):
                batch = _to(self._shard(self.task.batch(self.step * c.accumulate + micro)), self.device)
                sync = micro == c.accumulate - 1 or not hasattr(model, "no_sync")
                with (contextlib.nullcontext() if sync else model.no_sync()), self._autocast():
                    logits, targets = self.task.forward(model, batch)
                    loss = token_loss(logits, targets, c.label_smoothing)
                self.scaler.scale(loss / c.accumulate).backward()
                loss_sum += loss.item()
                tokens_seen += int((targets != -100).sum()) * self.world
            if c.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            loss_value = loss_sum / c.accumulate
            if self.world > 1:  # log the loss of the global batch, not this rank's share
                t = torch.tensor([loss_value], dtype=torch.float64)
                dist.all_reduce(t)
                loss_value = t.item() / self.world
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"loss became {loss_value} at step {self.step}; lower TrainConfig.lr or enable grad_clip"
                )
            record = {"step": self.step, "loss": loss_value, "lr": lr}
            if self.step % c.log_every == 0 or self.step == c.max_steps:
                now = time.time()
                record["tokens_per_s"] = tokens_seen / max(now - last_log[0], 1e-9)
                last_log, tokens_seen = (now, self.step), 0
            self._log(record)
            if bar is not None:
                bar.update(1)
                postfix = {"loss": f"{loss_value:.3f}", "lr": f"{lr:.2e}"}
                if c.minutes:  # the run ends at the budget, before the bar's step count
                    left = max(0.0, 60 * c.minutes - elapsed)
                    postfix["time_left"] = f"{int(left // 60)}:{int(left % 60):02d}"
                if "tokens_per_s" in record:
                    bar.set_postfix(**postfix, tok_s=f"{record['tokens_per_s']:.0f}")
                elif c.minutes and self.step % c.log_every == 0:
                    bar.set_postfix(**postfix)
            stop = False
            if self.step % c.eval_every == 0 or self.step == c.max_steps:
                metrics = self.evaluate()
                self._log({"step": self.step, **metrics})
                if bar is not None:
                    bar.write(f"step {self.step}: eval loss {metrics['eval_loss']:.4f}")
                if metrics["eval_loss"] < self.state["best_eval_loss"]:
                    self.state.update(best_eval_loss=metrics["eval_loss"], evals_without_improvement=0)
                else:
                    self.state["evals_without_improvement"] += 1
                    if c.patience and self.state["evals_without_improvement"] >= c.patience:
                        stop, stop_reason = True, "early_stopping"
            if c.minutes and elapsed_before + time.time() - start_time > 60 * c.minutes:
                stop, stop_reason = True, "time_budget"
            if stop or self.step % c.checkpoint_every == 0 or self.step == c.max_steps:
                self.save()
            if stop:
                break
        if bar is not None:
            bar.close()
        return {"step": self.step, "loss": loss_value, "stop_reason": stop_reason, **self.state}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _to(batch, device):
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    return batch
