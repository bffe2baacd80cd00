"""python tests/ddp_worker.py RUN_DIR [ddp|fsdp] (1 process) or under torchrun --nproc_per_node 2."""

import sys

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
config = TrainConfig(max_steps=12, lr=3e-3, warmup_steps=2, eval_every=6, checkpoint_every=6, progress=False)
strategy = sys.argv[2] if len(sys.argv) > 2 else "ddp"
Trainer(wrap_model(model, device, strategy), task, config, run_dir=sys.argv[1], model_config=model.config,
        device=device).train(resume=False)
cleanup()
