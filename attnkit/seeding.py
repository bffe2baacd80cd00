"""Seeds derived from parts, for every random stream that must be reproducible: a training task's batches,
a held-out masking, an LSH layer's dropout in one slice of one round of one head (redrawn in backward)."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts (a task's seed, a batch index, a purpose): distinct parts give
    independent streams, and the same parts always the same one."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
