"""A tiny training run for the resume tests: python tests/train_worker.py RUN_DIR MAX_STEPS [--fresh].

Appends the step it resumed from ("none" for a fresh start) to RUN_DIR/resumed_from.txt when it ends.
"""

import sys
from pathlib import Path

import torch

from attnkit.models import TransformerLM, TransformerLMConfig
from attnkit.train import LanguageModelingTask, TrainConfig, Trainer

torch.set_num_threads(1)
run_dir, max_steps = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
text = torch.arange(4000).remainder(37) ^ (torch.arange(4000) // 7).remainder(5)  # a learnable stream
config = TransformerLMConfig(vocab_size=64, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=32, dropout=0.1)
model = TransformerLM(config)
task = LanguageModelingTask(text[:3000], text[3000:], context=32, batch_size=8, seed=1, eval_batches=2)
train = TrainConfig(max_steps=max_steps, lr=3e-3, warmup_steps=5, eval_every=10, checkpoint_every=3,
                    keep_checkpoints=2, progress=False)
summary = Trainer(model, task, train, run_dir=run_dir).train(resume="--fresh" not in sys.argv)
with open(Path(run_dir) / "resumed_from.txt", "a") as f:
    f.write(f"{summary['resumed_from']}\n")
