import os

import torch

# Tests run in pytest-xdist workers, one per core: one intra-op thread each avoids oversubscription,
# which on 2 busy cores makes tiny models 50x slower.
torch.set_num_threads(int(os.environ.get("ATTNKIT_TEST_THREADS", "1")))
