"""A small trainer that never loses work: exact resume, atomic checkpoints, logs, progress bar.

The data position is the step: a task's ``batch(i)`` is a pure function of ``i`` (and its seed), so a
resumed run sees exactly the batches it would have seen, and with the RNG state restored from the
checkpoint (dropout) it reproduces the uninterrupted run's losses bitwise on the CPU, provided its
learning-rate schedule follows the steps (``TrainConfig.minutes`` = 0).

With a time budget (``minutes`` > 0) the cosine decay follows the training time instead, so that it
ends whenever the budget does. A resumed run restores the training time of its checkpoint, so its
batches and dropout are the uninterrupted run's, but its learning rates follow its own clock: losses
after the resume differ slightly. Under ``torchrun`` rank 0's clock decides for every rank (the
learning rate and the last step are the same on all ranks).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..config import Config, check_choice, check_positive
from .checkpoint import read_checkpoint, set_rng_state
from .runfolder import RunFolder
from .schedules import SCHEDULES, lr_at
from .tasks import Task


@dataclass
class TrainConfig(Config):
    """How to train: optimizer (AdamW), schedule, precision, evaluation, checkpoints, budget.

    The run ends at ``max_steps``, at the ``minutes`` budget of training time (if > 0), or when the
    held-out loss has not improved for ``patience`` evaluations (if > 0), whichever comes first.
    ``accumulate`` micro-batches make one optimizer step; ``label_smoothing`` applies to training
    losses only (evaluation reports the plain cross-entropy).
    """

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
    keep_best: bool = False  # also keep the checkpoint of the lowest held-out loss as run_dir/best
    patience: int = 0  # evaluations without improvement before stopping; 0 disables early stopping
    minutes: float = 0.0  # wall-clock budget (the cosine decay follows it); 0 = none
    seed: int = 0
    log_every: int = 10
    progress: bool = True

    def __post_init__(self):
        check_positive(self, "max_steps", "accumulate", "eval_every", "checkpoint_every", "log_every")
        check_choice(self, "schedule", SCHEDULES)
        check_choice(self, "precision", ("fp32", "bf16", "fp16"))
        if not self.minutes >= 0 or not math.isfinite(self.minutes):
            raise ValueError(f"TrainConfig.minutes must be a finite number >= 0, got {self.minutes}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Trains ``model`` on ``task``; checkpoints to the run folder ``run_dir`` and resumes from it.

    With ``torch.distributed`` initialized (``torchrun``), wrap the model in DDP or FSDP first: every
    rank computes the same global batch index and takes its share of the rows.
    """

    def __init__(self, model: torch.nn.Module, task: Task, config: TrainConfig, *, run_dir: str | Path,
                 model_config=None, device: str | torch.device = "cpu"):
        self.model, self.task, self.config = model, task, config
        self.model_config = model_config if model_config is not None else getattr(_unwrap(model), "config", None)
        self.folder, self.device = RunFolder(run_dir), torch.device(device)
        self.rank, self.world = _rank_world()
        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=(config.beta1, config.beta2),
        )
        self.scaler = torch.amp.GradScaler(enabled=config.precision == "fp16" and self.device.type == "cuda")
        self.step = 0
        self.resumed_from: int | None = None  # the checkpoint step this process started from
        self.state: dict[str, Any] = {"best_eval_loss": math.inf, "evals_without_improvement": 0, "elapsed_s": 0.0}

    @property
    def run_dir(self) -> Path:
        return self.folder.path

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

    def _sum_over_ranks(self, *values: float) -> list[float]:
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def _from_rank0(self, *values: float) -> list[float]:
        """Rank 0's values on every rank: one clock decides the schedule and the last step for all."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.broadcast(t, src=0)
        return t.tolist()

    def _log(self, record: dict) -> None:
        if self.rank != 0:
            return
        self.folder.append_metrics(record)
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

    def _full_state(self):
        """Full (unsharded) model and optimizer state dicts keyed by parameter name; a collective
        call under FSDP, so every rank must make it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(_unwrap(self.model), self.optimizer,
                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save(self, name: str | None = None) -> Path | None:
        """Write a checkpoint of the current step, or with ``name`` (``"best"``: the model weights of the
        best evaluation so far, without the optimizer) (rank 0 writes; every rank must call it)."""
        model_state, optimizer_state = self._full_state()
        if self.rank != 0:
            return None
        return self.folder.save_checkpoint(
            self.step, model_state, self.model_config, None if name else optimizer_state,
            {**self.state, "train_config": self.config.to_dict()}, keep=self.config.keep_checkpoints, name=name,
        )

    def resume(self) -> bool:
        """Continue from the newest checkpoint in the run folder that verifies (every rank reads it);
        a corrupt newer one is skipped with a message naming it. False if there is none."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        def skipped(path, error):
            if self.rank == 0:
                print(f"attnkit: skipping checkpoint {path.name}: {error}", file=sys.stderr, flush=True)

        path = self.folder.newest_checkpoint(on_skip=skipped)
        if path is None:
            return False
        model_state, optimizer_state, state = read_checkpoint(path, verify=False)  # verified when found
        set_state_dict(_unwrap(self.model), self.optimizer, model_state_dict=model_state,
                       optim_state_dict=optimizer_state, options=StateDictOptions(full_state_dict=True, strict=True))
        set_rng_state(state["_rng_tensors"], state["rng"])
        self.step = self.resumed_from = state["step"]
        self.state.update({k: v for k, v in state["trainer"].items() if k != "train_config"})
        if self.rank == 0:
            self.folder.truncate_metrics(self.step)
        return True

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean per-token loss over the task's evaluation batches (bits per token too), and the task's
        own ``scores`` if it has them (in one process; skipped under ``torchrun``)."""
        model = self.model
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for batch in self.task.eval_batches():
            with self._autocast():
                loss = self.task.loss(model, _to(self._shard(batch), self.device))
            total += float(loss.sum)
            count += int(loss.count)
        total, count = self._sum_over_ranks(total, count)
        scores = self.task.scores(_unwrap(model)) if hasattr(self.task, "scores") and self.world == 1 else {}
        model.train(was_training)
        loss = total / max(count, 1)
        return {"eval_loss": loss, "eval_bits_per_token": loss / math.log(2), "eval_tokens": int(count), **scores}

    # ---- the loop -----------------------------------------------------------------------------

    def _lr(self, elapsed: float) -> float:
        c = self.config
        progress = None
        if c.minutes:  # decay over whichever ends first: the steps or the time budget
            steps_done = (self.step + 1 - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
            progress = max(steps_done, elapsed / (60 * c.minutes))
        return lr_at(self.step, lr=c.lr, warmup_steps=c.warmup_steps, max_steps=c.max_steps,
                     schedule=c.schedule, min_lr_ratio=c.min_lr_ratio, progress=progress)

    def _train_step(self, model, lr: float) -> tuple[float, int]:
        """One optimizer step over ``accumulate`` micro-batches -> (mean loss of the global batch, tokens)."""
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum, tokens = 0.0, 0
        for micro in range(c.accumulate):
            batch = _to(self._shard(self.task.batch(self.step * c.accumulate + micro)), self.device)
            sync = micro == c.accumulate - 1 or not hasattr(model, "no_sync")
            with (contextlib.nullcontext() if sync else model.no_sync()), self._autocast():
                out = self.task.loss(model, batch, label_smoothing=c.label_smoothing)
                loss = out.sum / out.count.clamp_min(1)
            self.scaler.scale(loss / c.accumulate).backward()
            loss_sum += loss.item()
            tokens += int(out.count)
        if c.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        loss_value, tokens = self._sum_over_ranks(loss_sum / c.accumulate, tokens)
        return loss_value / self.world, int(tokens)  # the global batch's loss, not this rank's share

    def _maybe_evaluate(self, bar, elapsed: float, last: bool = False) -> bool:
        """Evaluate when due, or at the ``last`` step of a time budget if that step had no evaluation yet
        (``elapsed``: the training time so far, logged with it); True when early stopping says to stop."""
        c = self.config
        due = self.step % c.eval_every == 0 or self.step == c.max_steps
        if last == due:  # not due; or the last step, evaluated already
            return False
        metrics = self.evaluate()
        self._log({"step": self.step, **metrics, "elapsed_s": elapsed})
        if bar is not None:
            bar.write(f"step {self.step}: eval loss {metrics['eval_loss']:.4f}")
        if metrics["eval_loss"] < self.state["best_eval_loss"]:
            self.state.update(best_eval_loss=metrics["eval_loss"], best_step=self.step, evals_without_improvement=0)
            if c.keep_best:
                self.save("best")
            return False
        self.state["evals_without_improvement"] += 1
        return bool(c.patience) and self.state["evals_without_improvement"] >= c.patience

    def train(self, resume: bool = True) -> dict[str, Any]:
        """Train until ``max_steps``, the time budget or early stopping; returns a summary with the
        final ``step``, ``loss``, ``stop_reason`` and ``resumed_from`` (None for a fresh start)."""
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(c.seed)  # dropout; a resumed run restores the RNG state it had instead
        if resume:
            self.resume()
        model = self.model.to(self.device).train()
        elapsed_before = self.state.get("elapsed_s", 0.0)  # training time of the runs this one resumes
        budget_s = 60 * c.minutes
        bar = _progress_bar(c, self.step, elapsed_before) if c.progress and self.rank == 0 else None
        loss_value, stop_reason, start = float("nan"), "max_steps", time.time()
        tokens_seen, last_log, elapsed = 0, start, elapsed_before
        while self.step < c.max_steps:
            if budget_s and elapsed >= budget_s:  # a resumed run whose budget was already spent
                stop_reason = "time_budget"
                break
            lr = self._lr(elapsed)  # the clock read (by rank 0) at the end of the previous step
            loss_value, tokens = self._train_step(model, lr)
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"loss became {loss_value} at step {self.step}; lower TrainConfig.lr or enable grad_clip"
                )
            record = {"step": self.step, "loss": loss_value, "lr": lr}
            tokens_seen += tokens
            if self.step % c.log_every == 0 or self.step == c.max_steps:
                now = time.time()
                record["tokens_per_s"] = tokens_seen / max(now - last_log, 1e-9)
                tokens_seen, last_log = 0, now
            self._log(record)
            stop = self._maybe_evaluate(bar, elapsed_before + time.time() - start)
            if stop:
                stop_reason = "early_stopping"
            (elapsed,) = self._from_rank0(elapsed_before + time.time() - start)
            self.state["elapsed_s"] = elapsed
            if budget_s and elapsed >= budget_s:
                stop, stop_reason = True, "time_budget"
                self._maybe_evaluate(bar, elapsed, last=True)  # the final weights are scored too
            if bar is not None:
                _update_bar(bar, c, self.step, elapsed, loss_value, lr, record.get("tokens_per_s"))
            if stop or self.step % c.checkpoint_every == 0 or self.step == c.max_steps:
                self.state["stop_reason"] = stop_reason if stop or self.step == c.max_steps else None
                self.save()
            if stop:
                break
        if bar is not None:
            bar.close()
        return {"step": self.step, "loss": loss_value, "stop_reason": stop_reason, "resumed_from": self.resumed_from,
                **{k: v for k, v in self.state.items() if k != "stop_reason"}}


def _progress_bar(c: TrainConfig, step: int, elapsed: float):
    """With a time budget the bar measures the budget (seconds of training time) and shows the step;
    without one it counts steps towards max_steps."""
    from tqdm.auto import tqdm

    if c.minutes:
        fmt = "{desc}: {percentage:3.0f}%|{bar}| {elapsed} run, {remaining} left of the budget{postfix}"
        return tqdm(total=round(60 * c.minutes), initial=min(round(elapsed), round(60 * c.minutes)), desc="train",
                    bar_format=fmt, dynamic_ncols=True)
    return tqdm(total=c.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)


def _update_bar(bar, c: TrainConfig, step: int, elapsed: float, loss: float, lr: float, tokens_per_s) -> None:
    if c.minutes:
        bar.update(max(0, min(round(elapsed), bar.total) - bar.n))
    else:
        bar.update(step - bar.n)
    if step % c.log_every == 0 or tokens_per_s is not None:
        postfix = {"step": step, "loss": f"{loss:.3f}", "lr": f"{lr:.2e}"}
        if tokens_per_s is not None:
            postfix["tok/s"] = f"{tokens_per_s:.0f}"
        bar.set_postfix(postfix, refresh=False)


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
