"""Zarr v3 shards: one group per shard, one 1-D array per physical column.

Per-sequence arrays (``seq_ids``, ``keys``, ``lengths``, ``num_entries``, ``input_lengths``) locate each
sequence's slice of the flat input array (``input_ids``), per-position arrays (``lse``, ``nnz``,
``proposal_lse``, ``logit_mean``, ``logit_std``; ``label_logprob`` holds every position but each sequence's last)
and per-entry arrays (``ids``, ``logprobs``, ``counts``). Chunks are compressed with
Blosc(zstd, byte shuffle). Random access reads only the chunks a sequence's slices touch. Group attributes
(``logitstore``) hold the spec and vocabulary size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from logitstore.codec import Columns
from logitstore.formats.base import ShardReader, ShardWriter, shard_metadata
from logitstore.fs import is_local

_SEQ_COLUMNS = ("seq_ids", "keys", "lengths", "num_entries", "input_lengths")
_INPUT_COLUMNS = ("input_ids",)
_TOKEN_COLUMNS = ("lse", "nnz", "proposal_lse", "logit_mean", "logit_std")
_LABEL_COLUMNS = ("label_logprob",)
_ENTRY_COLUMNS = ("ids", "logprobs", "counts")
_ALL_COLUMNS = (*_SEQ_COLUMNS, *_INPUT_COLUMNS, *_TOKEN_COLUMNS, *_LABEL_COLUMNS, *_ENTRY_COLUMNS)
_CHUNKS = {"seq": 1 << 12, "input": 1 << 16, "token": 1 << 16, "label": 1 << 16, "entry": 1 << 20}
BLOSC_LEVEL = 1


def _kind(name: str) -> str:
    if name in _SEQ_COLUMNS:
        return "seq"
    if name in _INPUT_COLUMNS:
        return "input"
    if name in _LABEL_COLUMNS:
        return "label"
    return "token" if name in _TOKEN_COLUMNS else "entry"


class ZarrShardWriter(ShardWriter):
    """Buffers each column and writes only whole chunks until :meth:`_close`, so no chunk is ever read back,
    decompressed and rewritten (which ``Array.append`` does to a partial last chunk)."""

    _group: Any = None
    _buffers: dict[str, list[np.ndarray]]
    _written: dict[str, int]

    def _write_columns(self, cols: Columns) -> None:
        if self._group is None:
            self._group = zarr.open_group(str(self.tmp_path), mode="w", zarr_format=3)
            self._group.attrs["logitstore"] = shard_metadata(self)
            self._buffers, self._written = {}, {}
        for name in _ALL_COLUMNS:
            values = getattr(cols, name)
            if values is None:
                continue
            if name not in self._buffers:
                chunk = _CHUNKS[_kind(name)]
                self._group.create_array(
                    name,
                    shape=(0, *values.shape[1:]),
                    dtype=values.dtype,
                    chunks=(chunk, *values.shape[1:]),
                    compressors=[BloscCodec(cname="zstd", clevel=BLOSC_LEVEL, shuffle="shuffle")],
                    fill_value=0,
                )
                self._buffers[name], self._written[name] = [], 0
            self._buffers[name].append(values)
            self._drain(name, final=False)

    def _drain(self, name: str, *, final: bool) -> None:
        parts = self._buffers[name]
        buffered = sum(len(p) for p in parts)
        chunk = _CHUNKS[_kind(name)]
        n = buffered if final else buffered - buffered % chunk
        if n == 0:
            return
        data = np.concatenate(parts) if len(parts) > 1 else parts[0]
        array = self._group[name]
        start = self._written[name]
        array.resize((start + n, *data.shape[1:]))
        array[start : start + n] = data[:n]
        self._written[name] = start + n
        self._buffers[name] = [data[n:]] if n < len(data) else []

    def _close(self) -> None:
        if self._group is not None:
            for name in self._buffers:
                self._drain(name, final=True)
        self._group = None


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
