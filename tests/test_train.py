"""Trainer: schedules, atomic checkpoints, exact resume after SIGKILL, corrupt files."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnkit.models import TransformerLM, TransformerLMConfig
from attnkit.train import CheckpointError, LanguageModelingTask, Seq2SeqTask, load_checkpoint, lr_at, save_checkpoint

WORKER = Path(__file__).with_name("train_worker.py")


def losses(run_dir):
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def losses_or_empty(run_dir):
    try:
        return losses(run_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def run_worker(run_dir, steps, *extra):
    return subprocess.Popen([sys.executable, str(WORKER), str(run_dir), str(steps), *extra])


def test_schedules():
    kw = dict(lr=1.0, warmup_steps=10, max_steps=110)
    assert lr_at(0, **kw) == pytest.approx(0.1) and lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(109, **kw, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(59, **kw, min_lr_ratio=0.0) == pytest.approx(0.5)
    assert lr_at(39, **kw, schedule="noam") == pytest.approx((10 / 40) ** 0.5)
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, **kw, schedule="linear")


def test_resume_after_sigkill_reproduces_losses_bitwise(tmp_path):
    steps = 30
    reference = tmp_path / "reference"
    assert run_worker(reference, steps, "--fresh").wait() == 0
    expected = losses(reference)
    assert len(expected) == steps

    killed = tmp_path / "killed"
    rng = random.Random(0)
    for target in (4, 11, 19, 26):  # kill at random moments after these steps, also mid-checkpoint
        p = run_worker(killed, steps)
        while p.poll() is None and len(losses_or_empty(killed)) < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert len(losses_or_empty(killed)) < steps, "the run finished before it was killed"
    assert run_worker(killed, steps).wait() == 0
    got = losses(killed)
    assert got == expected  # every step, bitwise


def test_checkpoints_are_verified_and_corruption_is_named(tmp_path):
    config = TransformerLMConfig(vocab_size=16, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=8)
    model = TransformerLM(config)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    for step in (7, 8, 9):
        save_checkpoint(tmp_path, step, model.state_dict(), config, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000008", "step-0000009"]
    path = tmp_path / "step-0000009"
    fresh = TransformerLM(config)
    load_checkpoint(path, fresh)
    for (name, a), b in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), name
    assert fresh.lm_head.weight is fresh.embed.token.weight  # the tie survives loading
    # truncate the weights: the error names the file
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt or truncated"):
        load_checkpoint(path, fresh)
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        load_checkpoint(tmp_path / "step-0000001", fresh)


def test_tasks_are_deterministic_by_index():
    stream = torch.arange(500) % 13
    task = LanguageModelingTask(stream[:400], stream[400:], context=16, batch_size=4, seed=3)
    a, b = task.batch(5), task.batch(5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[0][:, 1:], a[1][:, :-1])
    assert not torch.equal(task.batch(6)[0], a[0])
    assert sum(x.shape[0] for x, _ in task.eval_batches()) == 99 // 16
    pairs = [([1 + i % 5] * (1 + i % 4), [2] * (1 + i % 3)) for i in range(20)]
    s2s = Seq2SeqTask(pairs, pairs[:5], pad_id=0, bos_id=1, eos_id=3, batch_size=4)
    src, tgt_in, tgt_out = s2s.batch(7)
    assert tgt_in[0, 0] == 1 and torch.equal(s2s.batch(7)[0], src)
    assert ((tgt_out == 3).sum(1) == 1).all() and ((tgt_in[:, 1:] == 0) == (tgt_out[:, 1:] == -100)).all()


@pytest.mark.parametrize("strategy,port", [("ddp", 29517), ("fsdp", 29518)])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, strategy, port):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = str(WORKER.with_name("ddp_worker.py"))
    subprocess.run([sys.executable, worker, str(tmp_path / "one")], check=True, env=env)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         worker, str(tmp_path / "two"), strategy],
        check=True, env=env, capture_output=True,
    )
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 12
    assert list(one.values()) == pytest.approx(list(two.values()), rel=1e-5, abs=1e-6)
    records = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    ev1 = [r["eval_loss"] for r in records(tmp_path / "one") if "eval_loss" in r]
    ev2 = [r["eval_loss"] for r in records(tmp_path / "two") if "eval_loss" in r]
    assert ev1 == pytest.approx(ev2, rel=1e-5, abs=1e-6)
    # the gathered checkpoint of the sharded/replicated run loads into a plain model
    from attnkit.recipes import load_model

    load_model(tmp_path / "two")


def test_masked_lm_task_scores_only_chosen_positions():
    from attnkit.models import TransformerEncoderConfig, TransformerEncoderForMaskedLM
    from attnkit.train import MaskedLMTask

    stream = torch.arange(3000) % 20
    task = MaskedLMTask(stream[:2500], stream[2500:], mask_id=20, vocab_size=21, context=64, batch_size=8, seed=1)
    inputs, labels = task.batch(3)
    chosen = labels != -100
    assert torch.equal(task.batch(3)[0], inputs) and 0.05 < chosen.float().mean() < 0.3
    original = LanguageModelingTask.batch(task, 3)[0]
    assert torch.equal(inputs[~chosen], original[~chosen]) and torch.equal(labels[chosen], original[chosen])
    assert (inputs == 20).sum() > 0 and (inputs[chosen] == 20).float().mean() > 0.6
    model = TransformerEncoderForMaskedLM(TransformerEncoderConfig(vocab_size=21, d_model=32, n_heads=4, n_layers=1,
                                                                    d_ff=64, max_len=64))
    logits, targets = task.forward(model, (inputs, labels))
    assert logits.shape == (8, 64, 21) and torch.equal(targets, labels)


def test_bf16_autocast_accumulation_and_early_stopping(tmp_path):
    from attnkit.train import TrainConfig, Trainer

    torch.manual_seed(0)
    stream = torch.arange(2000) % 17
    task = LanguageModelingTask(stream[:1500], stream[1500:], context=16, batch_size=4, seed=0, eval_batches=1)
    model = TransformerLM(TransformerLMConfig(vocab_size=17, d_model=32, n_heads=4, n_layers=1, d_ff=64, max_len=16))
    config = TrainConfig(max_steps=40, lr=1e-9, warmup_steps=0, precision="bf16", accumulate=2, eval_every=2,
                         patience=2, progress=False)
    summary = Trainer(model, task, config, run_dir=tmp_path).train()
    # with a learning rate of 1e-9 the eval loss cannot improve: training stops after `patience` evals
    assert summary["stop_reason"] == "early_stopping" and summary["step"] < 40
    assert all(torch.isfinite(p).all() for p in model.parameters())
