"""The error raised for checkpoints attnkit cannot represent."""


class UnsupportedCheckpoint(ValueError):
    """A checkpoint (folder, config or GGUF file) uses something attnkit's models do not have; the
    message names what is missing or unsupported."""
