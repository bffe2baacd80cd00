"""python tests/ddp_worker.py RUN_DIR [ddp|fsdp] [MINUTES] (1 process) or under torchrun --nproc_per_node 2.

With MINUTES > 0 the run has that time budget and rank 1 starts its clock a second after rank 0 (as a
slow rank would): the ranks must still stop on the same step. Each rank writes its last step to
RUN_DIR/last-step-RANK.txt.
"""

import sys
import time
from pathlib import Path

import torch

from attnkit.models import TransformerLM, TransformerLMConfig
from attnkit.train import LanguageModelingTask, TrainConfig, Trainer
from attnkit.train.distributed import cleanup, init_distributed, wrap_model

torch.set_num_threads(1)
rank, world, device = init_distributed()
torch.manual_seed(0)  # the same initial weights on every rank
text = torch.arange(3000).remainder(29) ^ (torch.arange(3000) // 5).remainder(7)
model = TransformerLM(TransformerLMConfig(vocab_size=32, d_model=32, n_heads=4, n_layers=2, d_ff=64,
                                          max_len=16, dropout=0.0))
task = LanguageModelingTask(text[:2500], text[2500:], context=16, batch_size=8, seed=2, eval_batches=2)
strategy = sys.argv[2] if len(sys.argv) > 2 else "ddp"
minutes = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
config = TrainConfig(max_steps=100_000 if minutes else 12, lr=3e-3, warmup_steps=2, eval_every=6,
                     checkpoint_every=6, progress=False, minutes=minutes)
wrapped = wrap_model(model, device, strategy)  # DDP's constructor synchronizes the ranks
if minutes and rank == 1:
    time.sleep(1.0)  # after the last collective before training: rank 1's clock starts a second late
summary = Trainer(wrapped, task, config, run_dir=sys.argv[1], model_config=model.config,
                  device=device).train(resume=False)
Path(sys.argv[1], f"last-step-{rank}.txt").write_text(f"{summary['step']} {summary['stop_reason']}")
cleanup()
