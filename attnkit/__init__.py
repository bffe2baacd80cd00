"""attnkit: attention and the Transformer family, from the formula to long-context Reformers (million-token
training on one GPU is the goal; see benchmarks/RESULTS.md, section 3, for what has been measured)."""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    # An OpenMP thread spinning while it waits for a descheduled sibling wastes its core on a busy
    # machine (3x slower CPU training under load was measured here); passive waiting costs ~nothing
    # when idle. Only a default: the environment wins, and it cannot apply once torch is loaded.
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import functional, interop, models, nn

__version__ = "0.1.0"
__all__ = ["functional", "interop", "models", "nn", "__version__"]
