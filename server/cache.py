"""Decoded records kept in memory across requests, least recently used evicted past a byte budget."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import NamedTuple

from logitstore.dataset import Dataset
from logitstore.keyindex import KeyIndex
from logitstore.record import Record
from logitstore.wire import records_from_arrow, records_to_arrow


class Cached(NamedTuple):
    record: Record
    #: the record as a one-row Arrow IPC stream (what the service sends for it), or None
    arrow: bytes | None
    nbytes: int


def encoded(record: Record) -> tuple[Record, bytes]:
    """``record`` as a one-row Arrow IPC stream, and the same record decoded from it: its arrays are views of the
    stream, so keeping both costs the memory of one. The service then answers an Arrow request for a cached record
    with these bytes as they are (like a static file), and everything else with the record."""
    arrow = records_to_arrow([record])
    return records_from_arrow(arrow)[0], arrow


class RecordCache:
    """Thread-safe LRU of records by key, holding at most ``max_bytes`` of arrays (0 turns it off).

    Reading one record of a Parquet shard decodes its whole row group (8 sequences of 2,048 top-k 64 positions):
    without a cache a service answering random requests would decode a row group for every record it sends.
    The service's datasets put each record with its Arrow IPC stream (:func:`encoded`).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._records: OrderedDict[Hashable, Cached] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Record | None:
        found = self.entry(key)
        return None if found is None else found.record

    def entry(self, key: Hashable) -> Cached | None:
        """The cached record of ``key`` with its Arrow IPC stream (if it was put with one), or None."""
        with self._lock:
            found = self._records.get(key)
            if found is None:
                return None
            self._records.move_to_end(key)
            return found

    def put(self, key: Hashable, record: Record, arrow: bytes | None = None) -> None:
        """Keep ``record``; ``arrow`` is its one-row Arrow IPC stream when the record's arrays are views of it
        (:func:`encoded`), and then its size is what the record costs."""
        size = record.nbytes if arrow is None else len(arrow)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._records.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._records[key] = Cached(record, arrow, size)
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, evicted = self._records.popitem(last=False)
                self.nbytes -= evicted.nbytes

    def discard(self, prefix: Hashable) -> None:
        """Drop every entry whose key is a tuple starting with ``prefix`` (the records of a rebuilt dataset)."""
        with self._lock:
            for key in [k for k in self._records if isinstance(k, tuple) and k[:1] == (prefix,)]:
                self.nbytes -= self._records.pop(key).nbytes

    def __len__(self) -> int:
        return len(self._records)


class CachingDataset(Dataset):
    """A :class:`Dataset` whose ``ds[seq_id]`` goes through a :class:`RecordCache` shared with other datasets (keys
    start with ``prefix``): a miss reads the whole block ``seq_id`` belongs to (a Parquet row group, decoded anyway)
    and keeps every record of it, each with its Arrow IPC stream (:func:`encoded`). Like ``Dataset``, not thread-safe:
    the service reads it under its lock."""

    def __init__(
        self, location: str | os.PathLike[str], *, verify: bool = False, cache: RecordCache, prefix: tuple
    ) -> None:
        super().__init__(location, verify=verify)
        self.cache, self.prefix = cache, prefix

    def loaded_key_index(self) -> KeyIndex | None:
        """The key index if it has been read (an immutable in-memory view, safe to search without the lock)."""
        return self._key_index

    def __getitem__(self, seq_id: int) -> Record:
        record = self.cache.get((*self.prefix, seq_id))
        if record is not None:
            return record
        if self.cache.max_bytes == 0:
            return super().__getitem__(seq_id)
        start, stop = self.block(seq_id)
        block = [encoded(r) for r in self.read_range(start, stop)]
        for r, arrow in block:
            self.cache.put((*self.prefix, r.seq_id), r, arrow)
        return block[seq_id - start][0]
