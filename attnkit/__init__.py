"""attnkit: attention and the Transformer family, from the formula to million-token Reformers."""

from . import functional, models, nn

__version__ = "0.1.0"
__all__ = ["functional", "models", "nn", "__version__"]
