"""Decoded records kept in memory across requests, least recently used evicted past a byte budget."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable

from logitstore.dataset import Dataset
from logitstore.record import Record


def record_nbytes(record: Record) -> int:
    arrays = (record.input_ids, record.lse, record.nnz, record.ids, record.logprobs, record.counts, record.proposal_lse)
    return sum(a.nbytes for a in arrays if a is not None)


class RecordCache:
    """Thread-safe LRU of records by key, holding at most ``max_bytes`` of arrays (0 turns it off).

    Reading one record of a Parquet shard decodes its whole row group (8 sequences of 2,048 top-k 64 positions):
    without a cache a service answering random requests would decode a row group for every record it sends.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._records: OrderedDict[Hashable, tuple[Record, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Record | None:
        with self._lock:
            found = self._records.get(key)
            if found is None:
                return None
            self._records.move_to_end(key)
            return found[0]

    def put(self, key: Hashable, record: Record) -> None:
        size = record_nbytes(record)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._records.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            self._records[key] = (record, size)
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, (_, evicted) = self._records.popitem(last=False)
                self.nbytes -= evicted

    def discard(self, prefix: Hashable) -> None:
        """Drop every entry whose key is a tuple starting with ``prefix`` (the records of a rebuilt dataset)."""
        with self._lock:
            for key in [k for k in self._records if isinstance(k, tuple) and k[:1] == (prefix,)]:
                self.nbytes -= self._records.pop(key)[1]

    def __len__(self) -> int:
        return len(self._records)


class CachingDataset(Dataset):
    """A :class:`Dataset` whose ``ds[seq_id]`` goes through a :class:`RecordCache` shared with other datasets (keys
    start with ``prefix``): a miss reads the whole block ``seq_id`` belongs to (a Parquet row group, decoded anyway)
    and keeps every record of it. Like ``Dataset``, not thread-safe: the service reads it under its lock."""

    def __init__(
        self, location: str | os.PathLike[str], *, verify: bool = False, cache: RecordCache, prefix: tuple
    ) -> None:
        super().__init__(location, verify=verify)
        self.cache, self.prefix = cache, prefix

    def __getitem__(self, seq_id: int) -> Record:
        record = self.cache.get((*self.prefix, seq_id))
        if record is not None:
            return record
        if self.cache.max_bytes == 0:
            return super().__getitem__(seq_id)
        start, stop = self.block(seq_id)
        block = self.read_range(start, stop)
        for r in block:
            self.cache.put((*self.prefix, r.seq_id), r)
        return block[seq_id - start]
