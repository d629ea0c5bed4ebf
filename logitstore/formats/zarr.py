"""Zarr v3 shards: one group per shard, one 1-D array per physical column.

Per-sequence arrays (``seq_ids``, ``keys``, ``lengths``, ``num_entries``, ``input_lengths``) locate each
sequence's slice of the flat input array (``input_ids``), per-position arrays (``lse``, ``nnz``,
``proposal_lse``, ``logit_mean``, ``logit_std``; ``label_logprob`` holds every position but each sequence's last)
and per-entry arrays (``ids``, ``logprobs``, ``counts``). Chunks are compressed with Blosc(zstd) in 1 MiB blocks
(byte shuffle; bit shuffle for rank-order q16 gaps), each array's ``zarr.json`` declaring its configuration.
The writer writes the store's files itself, as zarr-python would; zarr-python reads them. Random access reads
only the chunks a sequence's slices touch. Group attributes (``logitstore``) hold the spec and vocabulary size.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc

from logitstore.codec import Columns
from logitstore.formats.base import ShardReader, ShardWriter, shard_metadata
from logitstore.fs import is_local
from logitstore.spec import Spec

_SEQ_COLUMNS = ("seq_ids", "keys", "lengths", "num_entries", "input_lengths")
_INPUT_COLUMNS = ("input_ids",)
_TOKEN_COLUMNS = ("lse", "nnz", "proposal_lse", "logit_mean", "logit_std")
_LABEL_COLUMNS = ("label_logprob",)
_ENTRY_COLUMNS = ("ids", "logprobs", "counts")
_ALL_COLUMNS = (*_SEQ_COLUMNS, *_INPUT_COLUMNS, *_TOKEN_COLUMNS, *_LABEL_COLUMNS, *_ENTRY_COLUMNS)
_CHUNKS = {"seq": 1 << 12, "input": 1 << 16, "token": 1 << 16, "label": 1 << 16, "entry": 1 << 20}
BLOSC_LEVEL = 1
#: Blosc compresses in blocks of this many bytes (at most a chunk): ~1 MiB blocks compress an entry chunk ~30%
#: faster than Blosc's own choice for zstd level 1 (tens of KiB, each block a zstd frame), ~6% smaller, and
#: decompress 2x faster (docs/NOTES.md, "Storage"). Shards written before used 0 (Blosc's choice).
BLOSC_BLOCK_BYTES = 1 << 20


def _shuffle(name: str, spec: Spec) -> str:
    """Blosc's shuffle for column ``name``: bit shuffle for rank-order q16 gaps (small values in 16 bits: 12% fewer
    bytes and 45% less time than byte shuffle), byte shuffle for everything else (bit shuffle loses on sample
    counts and on float32 logprobs)."""
    gaps = name == "logprobs" and spec.entry_order == "rank" and not spec.encoding.lossless
    return "bitshuffle" if gaps else "shuffle"


def _kind(name: str) -> str:
    if name in _SEQ_COLUMNS:
        return "seq"
    if name in _INPUT_COLUMNS:
        return "input"
    if name in _LABEL_COLUMNS:
        return "label"
    return "token" if name in _TOKEN_COLUMNS else "entry"


class ZarrShardWriter(ShardWriter):
    """Writes the Zarr v3 store itself, the bytes zarr-python would write (tests compare them file by file): each
    column's whole chunks are Blosc-compressed and written as soon as they are complete, the partial last chunk
    and the ``zarr.json`` documents at :meth:`_close`. No chunk is ever read back. zarr-python's own array
    operations each go through its event loop (~2-3 ms; ~57 per shard were two thirds of an encode).

    Compression and file writes run on one background thread, beside the next flush's encoding; off the main
    thread, numcodecs' Blosc compresses single-threaded, which keeps the bytes deterministic (its multi-threaded
    mode orders a chunk's blocks as the threads finish)."""

    _arrays: dict[str, _ChunkedArray] | None = None
    _chunks: _ChunkWriter | None = None

    def _write_columns(self, cols: Columns) -> None:
        if self._arrays is None:
            self.tmp_path.mkdir()
            self._arrays, self._chunks = {}, _ChunkWriter()
        assert self._chunks is not None
        for name in _ALL_COLUMNS:
            values = getattr(cols, name)
            if values is None:
                continue
            if name not in self._arrays:
                chunk, shuffle = _CHUNKS[_kind(name)], _shuffle(name, self.spec)
                self._arrays[name] = _ChunkedArray(self.tmp_path / name, values, chunk, shuffle, self._chunks)
            self._arrays[name].append(values)

    def _close(self) -> None:
        arrays, chunks = self._arrays, self._chunks
        self._arrays = self._chunks = None
        if arrays is None or chunks is None:
            return
        try:
            for array in arrays.values():
                array.finish()
            group = {"attributes": {"logitstore": shard_metadata(self)}, "zarr_format": 3, "node_type": "group"}
            _write_json(self.tmp_path / "zarr.json", group)
        except BaseException:
            chunks.close(cancel=True)  # nothing may still write into a shard being removed; this error is reported
            raise
        chunks.close()  # every chunk is on disk before the shard is renamed; raises a chunk write's error

    def _discard(self) -> None:
        chunks = self._chunks
        self._arrays = self._chunks = None
        if chunks is not None:
            chunks.close(cancel=True)


#: Chunk writes queued at most (each holds its chunk's rows: an entry chunk is 2-4 MiB before compression).
_MAX_IN_FLIGHT = 16


class _ChunkWriter:
    """Runs chunk writes on one background thread, at most :data:`_MAX_IN_FLIGHT` queued. The first write that
    fails fails the writer: every later :meth:`submit` and :meth:`close` raises its error."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="logitstore-zarr")
        self._in_flight: deque[Future[None]] = deque()
        self._error: BaseException | None = None

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._raise_failed()
        while len(self._in_flight) >= _MAX_IN_FLIGHT:
            self._wait_oldest()
        self._in_flight.append(self._pool.submit(fn, *args))

    def close(self, *, cancel: bool = False) -> None:
        """Wait for every write and raise the first error (the writes after it are cancelled); with ``cancel``,
        only for the one running, and raise nothing."""
        try:
            if not cancel:
                while self._in_flight:
                    self._wait_oldest()
                self._raise_failed()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _wait_oldest(self) -> None:
        future = self._in_flight.popleft()
        self._raise_failed()  # an earlier write failed: its error is the one to report
        try:
            future.result()
        except BaseException as exc:
            self._error = exc
            raise

    def _raise_failed(self) -> None:
        if self._error is not None:
            raise self._error


class _ChunkedArray:
    """One 1-D (or ``[n, *inner]``) column of a Zarr v3 store being written, in chunks of ``chunk`` rows."""

    def __init__(self, path: Path, like: np.ndarray, chunk: int, shuffle: str, writer: _ChunkWriter) -> None:
        self.path, self.dtype, self.inner, self.chunk, self.writer = path, like.dtype, like.shape[1:], chunk, writer
        self.pending: list[np.ndarray] = []
        self.buffered = 0  # rows in pending
        self.written = 0  # rows handed to the writer, always whole chunks until finish
        self.blosc_config = {
            "typesize": self.dtype.itemsize,
            "cname": "zstd",
            "clevel": BLOSC_LEVEL,
            "shuffle": shuffle,
            "blocksize": min(BLOSC_BLOCK_BYTES, chunk * self.dtype.itemsize * int(np.prod(self.inner))),
        }
        self.blosc = Blosc(
            cname="zstd",
            clevel=BLOSC_LEVEL,
            shuffle=Blosc.BITSHUFFLE if shuffle == "bitshuffle" else Blosc.SHUFFLE,
            blocksize=self.blosc_config["blocksize"],
        )
        path.mkdir()

    def append(self, values: np.ndarray) -> None:
        self.pending.append(values)
        self.buffered += len(values)
        if self.buffered >= self.chunk:
            self._drain(final=False)

    def finish(self) -> None:
        """Write what is buffered (a last chunk padded with the fill value) and this array's ``zarr.json``."""
        self._drain(final=True)
        shape = [self.written, *self.inner]
        metadata = _array_metadata(self.dtype, shape, [self.chunk, *self.inner], self.blosc_config)
        _write_json(self.path / "zarr.json", metadata)

    def _drain(self, *, final: bool) -> None:
        data = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0] if self.pending else None
        if data is None:
            return
        n = len(data) if final else len(data) - len(data) % self.chunk
        for start in range(0, n, self.chunk):
            index = (self.written + start) // self.chunk
            self.writer.submit(self._write_chunk, index, data[start : start + self.chunk])
        self.written += n
        self.pending = [data[n:]] if n < len(data) else []
        self.buffered = len(data) - n

    def _write_chunk(self, index: int, rows: np.ndarray) -> None:
        if len(rows) < self.chunk:  # zarr stores whole chunks, the rows past the array's end as the fill value
            full = np.zeros((self.chunk, *self.inner), dtype=self.dtype)
            full[: len(rows)] = rows
            rows = full
        if not rows.any():  # zarr does not store a chunk that holds only the fill value (write_empty_chunks)
            return
        key = self.path / "c" / "/".join(map(str, [index, *[0] * len(self.inner)]))
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(self.blosc.encode(np.ascontiguousarray(rows)))


def _array_metadata(dtype: np.dtype, shape: list[int], chunks: list[int], blosc: dict[str, Any]) -> dict[str, Any]:
    """The ``zarr.json`` of a Zarr v3 array (key order and defaults as zarr-python writes them)."""
    return {
        "shape": shape,
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0 if dtype.kind == "f" else 0,
        "codecs": [
            {"name": "bytes", **({"configuration": {"endian": "little"}} if dtype.itemsize > 1 else {})},
            {"name": "blosc", "configuration": blosc},
        ],
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_bytes(json.dumps(doc, indent=2).encode())


class ZarrShardReader(ShardReader):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._group: Any = None
        self._arrays: dict[str, Any] = {}  # column name -> its array (None: not stored), filled by _array
        self._tok: np.ndarray | None = None
        self._ent: np.ndarray | None = None
        self._inp: np.ndarray | None = None

    def _open(self) -> Any:
        if self._group is None:
            if is_local(self.fs):
                store: Any = self.path
            else:
                store = zarr.storage.FsspecStore.from_url(
                    self.fs.unstrip_protocol(self.path),
                    storage_options=dict(getattr(self.fs, "storage_options", {}) or {}),  # e.g. auth headers
                    read_only=True,
                )
            group: Any = zarr.open_group(store, mode="r", zarr_format=3)
            self._group, self._arrays = group, {}
            try:
                lengths = np.asarray(self._array("lengths")[...])
                num_entries = np.asarray(self._array("num_entries")[...])
                input_lengths = np.asarray(self._array("input_lengths")[...])
            except BaseException:
                self.close()  # a later read tries again (and fails the same way on a corrupt shard)
                raise
            self._tok = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            self._ent = np.concatenate([[0], np.cumsum(num_entries)]).astype(np.int64)
            self._inp = np.concatenate([[0], np.cumsum(input_lengths)]).astype(np.int64)
        return self._group

    def _array(self, name: str) -> Any:
        """The shard's array for column ``name`` (None when the shard does not store it), opened on first use and
        kept: a lookup by name reads and parses its zarr.json through zarr's event loop (~1-3 ms here), which on
        every read was half the time of reading one record. Probed by name, never listed (an HTTP store cannot
        list)."""
        arrays = self._arrays
        if name not in arrays:
            try:
                arrays[name] = self._open()[name]
            except KeyError:
                arrays[name] = None
        return arrays[name]

    def _read_columns(self, start: int, stop: int) -> Columns:
        self._open()
        assert self._tok is not None and self._ent is not None and self._inp is not None
        ranges = {
            "seq": (start, stop),
            "input": (int(self._inp[start]), int(self._inp[stop])),
            "token": (int(self._tok[start]), int(self._tok[stop])),
            "label": (int(self._tok[start]) - start, int(self._tok[stop]) - stop),  # one fewer per sequence
            "entry": (int(self._ent[start]), int(self._ent[stop])),
        }
        out: dict[str, np.ndarray | None] = {}
        for name in _ALL_COLUMNS:
            array = self._array(name)
            lo, hi = ranges[_kind(name)]
            out[name] = None if array is None else array[lo:hi]
        return Columns(**out)  # type: ignore[arg-type]

    def _read_keys(self) -> np.ndarray:
        return np.asarray(self._array("keys")[:], dtype=np.uint8)

    def close(self) -> None:
        self._group = None
        self._arrays = {}
        self._tok = self._ent = self._inp = None
