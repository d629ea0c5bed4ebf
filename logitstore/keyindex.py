"""The content-key index (``keys.idx``): sorted 16-byte keys -> seq_id, so a lookup never scans shards.

Layout (little-endian): ``b"LSKEYS01"``, uint64 ``n``, then ``n`` keys of 16 bytes in ascending byte order,
then ``n`` int64 seq_ids (ties in ascending seq_id). A lookup binary-searches the first 8 key bytes.
"""

from __future__ import annotations

import numpy as np

from logitstore.errors import CorruptShardError

MAGIC = b"LSKEYS01"


def build(keys: np.ndarray, seq_ids: np.ndarray) -> bytes:
    """``keys [n, 16] uint8`` and ``seq_ids [n] int64`` -> index file bytes."""
    keys = np.ascontiguousarray(keys, dtype=np.uint8).reshape(-1, 16)
    hi, lo = _halves(keys)
    order = np.lexsort((seq_ids, lo, hi))
    n = np.array([len(order)], dtype="<u8")
    return MAGIC + n.tobytes() + keys[order].tobytes() + np.asarray(seq_ids, dtype="<i8")[order].tobytes()


class KeyIndex:
    """In-memory view of an index file: 24 bytes per sequence."""

    def __init__(self, data: bytes, *, name: str = "keys.idx"):
        if len(data) < 16 or data[:8] != MAGIC:
            raise CorruptShardError(f"{name} is not a logitstore key index (bad magic)")
        n = int(np.frombuffer(data, dtype="<u8", count=1, offset=8)[0])
        if len(data) != 16 + 24 * n:
            raise CorruptShardError(f"{name} is truncated: {len(data)} bytes for {n} keys")
        self.keys = np.frombuffer(data, dtype=np.uint8, count=16 * n, offset=16).reshape(n, 16)
        self.seq_ids = np.frombuffer(data, dtype="<i8", count=n, offset=16 + 16 * n)
        self._hi, self._lo = _halves(self.keys)

    def __len__(self) -> int:
        return int(self.seq_ids.shape[0])

    def find(self, key: bytes) -> list[int]:
        """All seq_ids whose content key is ``key`` (ascending; empty if none)."""
        k = np.frombuffer(key, dtype=np.uint8).reshape(1, 16)
        hi, lo = _halves(k)
        a = int(np.searchsorted(self._hi, hi[0], side="left"))
        b = int(np.searchsorted(self._hi, hi[0], side="right"))
        return [int(s) for s in self.seq_ids[a:b][self._lo[a:b] == lo[0]]]


def _halves(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Big-endian uint64 views of key bytes 0..7 and 8..15, whose order is the bytes' lexicographic order."""
    k = np.ascontiguousarray(keys)
    hi = k[:, :8].copy().view(">u8").reshape(-1).astype(np.uint64)
    lo = k[:, 8:].copy().view(">u8").reshape(-1).astype(np.uint64)
    return hi, lo
