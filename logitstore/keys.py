"""Content keys: the address of a sequence is the blake2b-128 digest of its little-endian int32 token ids."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from logitstore.errors import InvalidInputError

KEY_BYTES = 16


def content_key(input_ids: Sequence[int] | np.ndarray) -> bytes:
    """blake2b-128 of ``input_ids`` as little-endian int32: ``[T] -> 16 bytes``."""
    arr = np.asarray(input_ids)
    if arr.ndim != 1:
        raise InvalidInputError(f"input_ids must be one-dimensional, got shape {arr.shape}")
    if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 2**31 - 1):
        raise InvalidInputError("input_ids must be non-negative integers below 2**31")
    return hashlib.blake2b(arr.astype("<i4", copy=False).tobytes(), digest_size=KEY_BYTES).digest()


def parse_key(value: str | bytes) -> bytes:
    """A key given as 16 raw bytes or 32 hex characters -> 16 bytes."""
    if isinstance(value, bytes) and len(value) == KEY_BYTES:
        return value
    if isinstance(value, str):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = b""
        if len(raw) == KEY_BYTES:
            return raw
    raise InvalidInputError(
        f"a content key is 16 bytes or 32 hex characters, got {value!r}; compute one with logitstore.content_key"
    )
