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
from attnkit.train import (
    IGNORE,
    CheckpointError,
    LanguageModelingTask,
    MaskedLMTask,
    Seq2SeqTask,
    TrainConfig,
    Trainer,
    load_checkpoint,
    lr_at,
    mask_tokens,
    save_checkpoint,
)

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
    # ... and the last process really started from a checkpoint, not from step 0 (a worker that
    # silently restarted would reproduce the same losses)
    resumed = (killed / "resumed_from.txt").read_text().split()
    assert int(resumed[-1]) > 19


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
    # 100 held-out tokens hold 6 non-overlapping windows of 16 inputs + 1 target: 4 + 2 rows
    assert [x.shape[0] for x, _ in task.eval_batches()] == [4, 2]
    pairs = [([1 + i % 5] * (1 + i % 4), [2] * (1 + i % 3)) for i in range(20)]
    s2s = Seq2SeqTask(pairs, pairs[:5], pad_id=0, bos_id=1, eos_id=3, batch_size=4)
    src, tgt_in, tgt_out = s2s.batch(7)
    assert tgt_in[0, 0] == 1 and torch.equal(s2s.batch(7)[0], src)
    assert ((tgt_out == 3).sum(1) == 1).all() and ((tgt_in[:, 1:] == 0) == (tgt_out[:, 1:] == IGNORE)).all()
    # every training pair appears in exactly one batch of an epoch
    seen = sorted(j for batch in s2s.train_batches for j in batch)
    assert seen == list(range(20))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(worker, *args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         str(worker), *map(str, args)], check=True, env=env, capture_output=True, timeout=timeout,
    )


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, strategy):
    worker = WORKER.with_name("ddp_worker.py")
    subprocess.run([sys.executable, str(worker), str(tmp_path / "one")], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    _torchrun(worker, tmp_path / "two", strategy)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 12
    assert list(one.values()) == pytest.approx(list(two.values()), rel=1e-5, abs=1e-6)
    records = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    ev1 = [r["eval_loss"] for r in records(tmp_path / "one") if "eval_loss" in r]
    ev2 = [r["eval_loss"] for r in records(tmp_path / "two") if "eval_loss" in r]
    assert ev1 == pytest.approx(ev2, rel=1e-5, abs=1e-6)
    # the gathered checkpoint of the sharded/replicated run loads into a plain model
    from attnkit.train import latest_checkpoint

    plain = TransformerLM(TransformerLMConfig(vocab_size=32, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=16))
    load_checkpoint(latest_checkpoint(tmp_path / "two"), plain)


def test_ranks_agree_on_the_last_step_of_a_time_budget(tmp_path):
    """Rank 1 starts its clock a second late; on its own clock it would train one or more steps after
    rank 0 stopped and wait for it forever. Rank 0's clock decides for both."""
    _torchrun(WORKER.with_name("ddp_worker.py"), tmp_path, "ddp", 0.05, timeout=120)
    last = {rank: (tmp_path / f"last-step-{rank}.txt").read_text() for rank in (0, 1)}
    assert last[0] == last[1] and last[0].endswith("time_budget"), last


def test_masked_lm_task_scores_only_chosen_positions():
    from attnkit.models import TransformerEncoderConfig, TransformerEncoderForMaskedLM

    stream = torch.arange(3000) % 20
    task = MaskedLMTask(stream[:2500], stream[2500:], mask_id=20, vocab_size=21, context=64, batch_size=8, seed=1)
    inputs, labels = task.batch(3)
    chosen = labels != IGNORE
    assert torch.equal(task.batch(3)[0], inputs) and 0.05 < chosen.float().mean() < 0.3
    original = LanguageModelingTask.batch(task, 3)[0]
    assert torch.equal(inputs[~chosen], original[~chosen]) and torch.equal(labels[chosen], original[chosen])
    model = TransformerEncoderForMaskedLM(TransformerEncoderConfig(vocab_size=21, d_model=32, n_heads=4, n_layers=1,
                                                                    d_ff=64, max_len=64)).eval()
    loss = task.loss(model, (inputs, labels))
    logits = model(inputs)
    expected = torch.nn.functional.cross_entropy(logits[chosen], labels[chosen], reduction="sum")
    assert int(loss.count) == int(chosen.sum()) and torch.allclose(loss.sum, expected)


def test_masked_lm_training_rate_is_settable_and_evaluation_stays_at_fifteen_percent():
    stream = torch.arange(60000) % 20
    task = MaskedLMTask(stream[:50000], stream[50000:], mask_id=20, vocab_size=21, context=128, batch_size=32,
                        seed=1, p=0.4)
    train_rate = sum(float((task.batch(i)[1] != IGNORE).float().mean()) for i in range(5)) / 5
    eval_labels = torch.cat([labels for _, labels in task.eval_batches()])
    assert abs(train_rate - 0.4) < 0.02, train_rate
    assert abs(float((eval_labels != IGNORE).float().mean()) - 0.15) < 0.02
    # the evaluation positions do not depend on the training rate
    same = MaskedLMTask(stream[:50000], stream[50000:], mask_id=20, vocab_size=21, context=128, batch_size=32, seed=1)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(task.eval_batches(), same.eval_batches()))


def test_mask_tokens_follows_berts_80_10_10_of_15_percent_and_never_touches_special_positions():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 1000, (64, 512), generator=g)
    special = torch.zeros_like(tokens, dtype=torch.bool)
    special[:, :8] = True  # e.g. padding or separators
    inputs, labels = mask_tokens(tokens, mask_id=1000, vocab_size=1001, special=special, generator=g)
    chosen = labels != IGNORE
    n = (~special).sum()
    assert abs(chosen.sum() / n - 0.15) < 0.005 and not chosen[special].any()
    masked = (inputs == 1000) & chosen
    kept = (inputs == tokens) & chosen
    swapped = chosen & ~masked & ~kept
    k = chosen.sum().item()
    assert abs(masked.sum() / k - 0.8) < 0.01
    # a random replacement equals the original 1 time in 1001: "kept" is 10% plus that sliver
    assert abs(kept.sum() / k - 0.1) < 0.01 and abs(swapped.sum() / k - 0.1) < 0.01
    assert torch.equal(inputs[~chosen], tokens[~chosen]) and torch.equal(labels[chosen], tokens[chosen])


def test_a_model_with_its_own_chunked_loss_is_trained_through_it(tmp_path):
    """ReformerLM computes its loss in slices (the logits are never held whole); the trainer must use
    it, with the same value as the plain cross-entropy of the full logits."""
    from attnkit.models import ReformerConfig, ReformerLM

    torch.manual_seed(0)
    stream = torch.arange(3000) % 23
    task = LanguageModelingTask(stream[:2500], stream[2500:], context=64, batch_size=2, seed=0, eval_batches=1)
    model = ReformerLM(ReformerConfig(vocab_size=23, d_model=32, n_heads=2, n_layers=1, d_ff=64, max_len=64,
                                      bucket_size=16, n_hashes=2, loss_chunks=4))
    calls = []
    forward = model.forward

    def spy(*args, **kwargs):
        calls.append(sorted(kwargs))
        return forward(*args, **kwargs)

    model.forward = spy
    x, y = task.batch(0)
    torch.manual_seed(1)  # the same hash rotations in both calls
    loss = task.loss(model, (x, y), label_smoothing=0.1)
    torch.manual_seed(1)
    full = torch.nn.functional.cross_entropy(forward(x).flatten(0, 1), y.flatten(), reduction="sum",
                                             label_smoothing=0.1)
    assert torch.allclose(loss.sum, full, rtol=1e-5) and int(loss.count) == y.numel()
    calls.clear()
    Trainer(model, task, TrainConfig(max_steps=2, eval_every=2, progress=False), run_dir=tmp_path).train()
    assert calls and all("targets" in kw for kw in calls)  # every training and evaluation forward


def test_bf16_autocast_accumulation_and_early_stopping(tmp_path):
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


def test_keep_best_keeps_the_checkpoint_of_the_lowest_held_out_loss(tmp_path, monkeypatch):
    from attnkit.train.checkpoint import read_checkpoint

    torch.manual_seed(0)
    stream = torch.arange(2000) % 17
    task = LanguageModelingTask(stream[:1500], stream[1500:], context=16, batch_size=4, seed=0, eval_batches=1)
    model = TransformerLM(TransformerLMConfig(vocab_size=17, d_model=32, n_heads=4, n_layers=1, d_ff=64, max_len=16))
    config = TrainConfig(max_steps=12, eval_every=2, checkpoint_every=2, keep_checkpoints=100, keep_best=True,
                         progress=False)
    trainer = Trainer(model, task, config, run_dir=tmp_path)
    scripted = iter([3.0, 2.0, 2.5, 1.5, 4.0, 1.8])  # evaluations at steps 2, 4, ..., 12: the best is step 8
    monkeypatch.setattr(trainer, "evaluate", lambda: {"eval_loss": next(scripted)})
    trainer.train()
    best, _, state = read_checkpoint(tmp_path / "best")
    assert state["step"] == 8 and state["optimizer"] is None
    at_8, _, _ = read_checkpoint(tmp_path / "step-0000008")
    at_12, _, _ = read_checkpoint(tmp_path / "step-0000012")
    assert all(torch.equal(best[k], at_8[k]) for k in at_8)
    assert not all(torch.equal(best[k], at_12[k]) for k in at_12)
    assert [p.name for p in sorted(tmp_path.glob("step-*"))][-1] == "step-0000012"  # resuming ignores best/


def test_masked_lm_scores_count_the_argmax_at_the_chosen_positions_of_the_full_logits():
    from attnkit.models import TransformerEncoderConfig, TransformerEncoderForMaskedLM

    torch.manual_seed(0)
    stream = torch.randint(0, 20, (4000,))
    task = MaskedLMTask(stream[:2000], stream[2000:], mask_id=20, vocab_size=21, context=32, batch_size=8, seed=1,
                        eval_batches=3)
    model = TransformerEncoderForMaskedLM(TransformerEncoderConfig(vocab_size=21, d_model=32, n_heads=4, n_layers=1,
                                                                    d_ff=64, max_len=32)).eval()
    correct = count = 0
    for inputs, labels in task.eval_batches():
        chosen = labels != IGNORE
        correct += int((model(inputs).argmax(-1)[chosen] == labels[chosen]).sum())
        count += int(chosen.sum())
    assert 0 < correct < count
    assert task.scores(model) == {"valid_masked_accuracy": correct / count}
    with pytest.raises(ValueError, match="positions must be a boolean tensor"):
        model(inputs, positions=chosen.long())


def test_a_time_budget_ends_with_an_evaluation_of_the_final_weights(tmp_path):
    stream = torch.arange(2000) % 17
    task = LanguageModelingTask(stream[:1500], stream[1500:], context=16, batch_size=4, seed=0, eval_batches=1)
    model = TransformerLM(TransformerLMConfig(vocab_size=17, d_model=32, n_heads=4, n_layers=1, d_ff=64, max_len=16))
    config = TrainConfig(max_steps=10**6, minutes=0.01, eval_every=10**5, checkpoint_every=10**5, progress=False)
    summary = Trainer(model, task, config, run_dir=tmp_path).train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    assert summary["stop_reason"] == "time_budget" and 0 < summary["step"] < 10**5
    assert [r["step"] for r in evals] == [summary["step"]] and summary["best_step"] == summary["step"]
