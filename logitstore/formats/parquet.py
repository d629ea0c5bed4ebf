"""Parquet shards: one row per sequence, one row group per writer flush.

Per-position columns are lists stored with Parquet's BYTE_STREAM_SPLIT encoding and zstd, so each byte plane is
entropy-coded on its own. The entry columns that hold the codec's small unsigned integers (ids, q16 codes, counts;
see :mod:`logitstore.codec`) are instead one binary value per sequence holding the values' own byte planes, plane
0 first (``ENTRY_PLANES``: 2 planes for ids below 65,536 and for 16-bit codes), under the same zstd: Parquet would
widen them to 4-byte INT32 planes, and writing and reading them costs about twice as much that way
(``bench/parquet_layouts.py``). Shards written before this layout (list entry columns) read as before: the
column's type says which it is. Random access reads and decodes a single row group. The file's key-value metadata
(``logitstore``) holds the spec, the vocabulary size and the plane widths.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from logitstore.codec import Columns
from logitstore.errors import CorruptShardError
from logitstore.formats.base import ShardReader, ShardWriter, shard_metadata
from logitstore.fs import open_input
from logitstore.spec import Spec

_TOKEN_COLUMNS = ("lse", "nnz", "proposal_lse", "logit_mean", "logit_std")
_ENTRY_COLUMNS = ("ids", "logprobs", "counts")
_KEY_TYPE = pa.binary(16)
ZSTD_LEVEL = 1
#: Write the unsigned entry columns as byte-plane blobs (False: list columns, the layout of older shards).
ENTRY_PLANES = True
#: Rank-order ids (topk, topp) store their lowest byte plane uncompressed in a column of its own, ``ids_raw``: it
#: is close to uniform noise that zstd cannot shrink, and compressing it took ~5% of a top-k 64 encode for nothing.
RAW_LOW_PLANE = True
#: q16 gaps (rank order, compact) are stored as 4-bit nibbles, two to a byte; a nibble of 15 says "15 + the next
#: value of ``logprobs_escapes``". ~96% of gaps are below 15: zstd then reads half the bytes (a third of the time)
#: and writes ~12% fewer.
NIBBLE_GAPS = True
#: The largest value a nibble holds itself; it also marks an escape.
_NIBBLE_ESCAPE = 15


class ParquetShardWriter(ShardWriter):
    _writer: pq.ParquetWriter | None = None

    @classmethod
    def format_version_for(cls, spec: Spec, vocab_size: int) -> int:
        """2 when the shards keep a raw low plane or nibble gaps (format_version 1 readers would misread them)."""
        layout = _EntryLayout.for_spec(spec, vocab_size)
        return 2 if layout.raw or layout.nibbles else 1

    def _write_columns(self, cols: Columns) -> None:
        tok_off = _offsets(cols.lengths, np.int64)  # int64 offsets: a flush may exceed 2^31 values
        ent_off = _offsets(cols.num_entries, np.int64)
        arrays = {
            "seq_id": pa.array(cols.seq_ids),
            "key": pa.FixedSizeBinaryArray.from_buffers(_KEY_TYPE, len(cols), [None, pa.py_buffer(cols.keys)]),
            "input_ids": _list(_offsets(cols.input_lengths, np.int64), cols.input_ids),
        }
        for name in _TOKEN_COLUMNS:
            values = getattr(cols, name)
            if values is not None:
                arrays[name] = _list(tok_off, values)
        layout = _EntryLayout.for_spec(self.spec, self.vocab_size)
        for name in _ENTRY_COLUMNS:
            values = getattr(cols, name)
            if values is not None:
                arrays.update(layout.write(name, values, ent_off))
        if cols.label_logprob is not None:  # every position but the last of each sequence
            arrays["label_logprob"] = _list(_offsets(cols.lengths - 1, np.int64), cols.label_logprob)
        # Nothing is ever null: non-nullable fields spare Parquet a definition level per value (~15% faster reads).
        table = pa.table(arrays, schema=pa.schema([pa.field(n, a.type, nullable=False) for n, a in arrays.items()]))
        if self._writer is None:
            meta = {**shard_metadata(self), **layout.to_metadata()}
            schema = table.schema.with_metadata({"logitstore": json.dumps(meta)})
            # Options are set per leaf column; a list column's leaf is "<name>.list.element".
            leaves = [f"{n}.list.element" if pa.types.is_large_list(a.type) else n for n, a in arrays.items()]
            raw = {f"{n}_raw" for n in layout.raw}
            self._writer = pq.ParquetWriter(
                self.tmp_path,
                schema,
                compression={leaf: "none" if leaf in raw else "zstd" for leaf in leaves},
                compression_level={leaf: ZSTD_LEVEL for leaf in leaves if leaf not in raw},
                use_dictionary=False,
                use_byte_stream_split=[leaf for leaf in leaves if leaf.endswith(".list.element")],
                write_statistics=False,
            )
            table = table.replace_schema_metadata(schema.metadata)
        self._writer.write_table(table, row_group_size=len(cols))

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


#: Physical columns that hold part of an entry field (format_version 2), by suffix.
_PART_SUFFIXES = ("_raw", "_escapes")


def field_of(column: str) -> str:
    """The record field a physical column of a shard holds: ``ids_raw`` -> ``ids``, ``logprobs_escapes`` ->
    ``logprobs``, anything else itself."""
    for suffix in _PART_SUFFIXES:
        base = column.removesuffix(suffix)
        if base != column and base in _ENTRY_COLUMNS:
            return base
    return column


_PLANE_DTYPES = {"ids": np.uint32, "logprobs": np.uint16, "counts": np.uint16}


@dataclass(frozen=True)
class _EntryLayout:
    """The physical layout of a shard's entry columns, named in its metadata (absent keys: the older layouts).

    - ``planes`` (``entry_planes``): column -> bytes per value ``w``, stored as byte planes (:func:`_planes`);
      columns in neither map are list columns (float32 logprobs; every entry column in the oldest shards).
    - ``raw`` (``raw_planes``): column -> how many of its lowest planes live, uncompressed, in ``<column>_raw``;
      ``<column>`` holds the other ``w - raw`` planes.
    - ``nibbles``: columns of uint16 values stored as nibbles, escapes in ``<column>_escapes`` (:func:`_nibbles`).
    """

    planes: dict[str, int] = field(default_factory=dict)
    raw: dict[str, int] = field(default_factory=dict)
    nibbles: tuple[str, ...] = ()

    @classmethod
    def for_spec(cls, spec: Spec, vocab_size: int) -> _EntryLayout:
        """How a shard of ``spec`` over ``vocab_size`` ids stores its entry columns (what the writer uses)."""
        if not ENTRY_PLANES:
            return cls()
        planes = {"ids": max(1, (max(vocab_size - 1, 1).bit_length() + 7) // 8)} if spec.method != "dense" else {}
        if not spec.encoding.lossless:
            planes["logprobs"] = 2  # q16 codes
        if spec.has_counts:
            planes["counts"] = 2
        rank = spec.entry_order == "rank"
        raw = {"ids": 1} if RAW_LOW_PLANE and rank and planes.get("ids", 0) >= 2 else {}
        nibbles = ("logprobs",) if NIBBLE_GAPS and rank and "logprobs" in planes else ()
        return cls({n: w for n, w in planes.items() if n not in nibbles}, raw, nibbles)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> _EntryLayout:
        """The layout a shard's metadata declares; a declaration no reader could follow is a CorruptShardError."""
        try:
            planes = {str(n): int(w) for n, w in meta.get("entry_planes", {}).items()}
            raw = {str(n): int(r) for n, r in meta.get("raw_planes", {}).items()}
            nibbles = tuple(str(n) for n in meta.get("nibbles", ()))
        except (AttributeError, TypeError, ValueError) as e:
            raise CorruptShardError(f"unreadable entry layout in the shard's metadata ({e})") from None
        bad = (
            [n for n, w in planes.items() if n not in _PLANE_DTYPES or not 1 <= w <= _PLANE_DTYPES[n]().itemsize]
            + [n for n, r in raw.items() if not 1 <= r < planes.get(n, 0)]
            + [n for n in nibbles if n != "logprobs" or n in planes]
        )
        if bad:
            raise CorruptShardError(
                f"the shard's metadata declares an impossible layout for {sorted(set(bad))}: entry_planes={planes}, "
                f"raw_planes={raw}, nibbles={list(nibbles)}"
            )
        return cls(planes, raw, nibbles)

    def to_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"entry_planes": self.planes} if self.planes else {}
        if self.raw:
            out["raw_planes"] = self.raw
        if self.nibbles:
            out["nibbles"] = list(self.nibbles)
        return out

    def write(self, name: str, values: np.ndarray, offsets: np.ndarray) -> dict[str, pa.Array]:
        """The Parquet column(s) that hold entry column ``name`` (``values [E]``, ``offsets [n + 1]`` per row)."""
        if name in self.nibbles:
            nibbles, escapes = _nibbles(values, offsets)
            return {name: nibbles, f"{name}_escapes": escapes}
        if name not in self.planes:
            return {name: _list(offsets, values)}
        raw, width = self.raw.get(name, 0), self.planes[name]
        out = {f"{name}_raw": _planes(values, raw, offsets)} if raw else {}
        out[name] = _planes(values, width - raw, offsets, first=raw)
        return out

    def read(
        self, table: pa.Table, name: str, sizes: np.ndarray | None = None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Flat values and per-row counts of entry column ``name`` (``sizes [n]``, the rows' entry counts, is
        needed for nibble columns, whose rows are padded to whole bytes)."""
        if name not in table.column_names:
            return None, None
        if name in self.nibbles:
            if sizes is None:  # rank order always stores ids, which give the rows' sizes
                raise CorruptShardError(f"nibble column {name!r} has no ids column to give its rows' sizes")
            return _unnibbles(_one_chunk(table, name), _one_chunk(table, f"{name}_escapes"), sizes), sizes
        if name not in self.planes:
            return _list_values(table, name)
        raw, width, dtype = self.raw.get(name, 0), self.planes[name], _PLANE_DTYPES[name]
        low = _unplanes(_one_chunk(table, f"{name}_raw"), raw, dtype)[0] if raw else None
        return _unplanes(_one_chunk(table, name), width - raw, dtype, first=raw, out=low)


class ParquetShardReader(ShardReader):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._file: pq.ParquetFile | None = None
        self._source: Any = None  # the shard's file (fs.open_input)
        self._group_starts: np.ndarray | None = None
        self._layout = _EntryLayout()  # set by _open
        self._read_group = lru_cache(maxsize=2)(self._read_group_uncached)

    def _open(self) -> pq.ParquetFile:
        if self._file is None:
            # Remote (the service's /files, object stores): no read-ahead cache, which fetches a block (5 MB for
            # HTTP) past every read that does not continue the last one, as row groups read in shuffled order never
            # do; pyarrow coalesces a row group's column chunks into one exact range read (pre_buffer) instead.
            try:
                self._source = open_input(self.fs, self.path, cache_type="none")
                self._file = pq.ParquetFile(self._source, pre_buffer=True)
                md = self._file.metadata
                rows = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
                self._group_starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
                if int(self._group_starts[-1]) != len(self):
                    raise CorruptShardError(
                        f"shard {self.info.path} holds {int(self._group_starts[-1])} rows, manifest says {len(self)}"
                    )
                meta = json.loads((self._file.schema_arrow.metadata or {}).get(b"logitstore", b"{}"))
                self._layout = _EntryLayout.from_metadata(meta)
            except BaseException:
                self.close()  # no half-open file: the next read opens and checks the shard again
                raise
        return self._file

    def _read_group_uncached(self, group: int) -> Columns:
        table = self._open().read_row_group(group)
        return _table_to_columns(table, self._layout)

    def _read_columns(self, start: int, stop: int) -> Columns:
        self._open()
        starts = self._group_starts
        assert starts is not None
        first = int(np.searchsorted(starts, start, side="right") - 1)
        last = int(np.searchsorted(starts, stop - 1, side="right") - 1)
        parts = []
        for g in range(first, last + 1):
            cols = self._read_group(g)
            g0 = int(starts[g])
            parts.append(cols.slice(max(start, g0) - g0, min(stop, int(starts[g + 1])) - g0))
        return parts[0] if len(parts) == 1 else _concat_columns(parts)

    def _block(self, index: int) -> tuple[int, int]:
        self._open()
        starts = self._group_starts
        assert starts is not None
        g = int(np.searchsorted(starts, index, side="right") - 1)
        return int(starts[g]), int(starts[g + 1])

    def _read_keys(self) -> np.ndarray:
        col = self._open().read(columns=["key"]).column("key").combine_chunks()
        return np.frombuffer(col.buffers()[1], dtype=np.uint8, count=16 * len(col), offset=16 * col.offset).reshape(
            -1, 16
        )

    def close(self) -> None:
        self._file = None  # a ParquetFile given a file leaves closing it to the giver
        if self._source is not None:
            self._source.close()
            self._source = None
        self._read_group.cache_clear()


def _list(offsets: np.ndarray, values: np.ndarray) -> pa.LargeListArray:
    """A large_list column with non-nullable elements (leaf path ``<name>.list.element``)."""
    flat = pa.array(values)
    kind = pa.large_list(pa.field("element", flat.type, nullable=False))
    return pa.LargeListArray.from_arrays(pa.array(offsets), flat, type=kind)


#: Below this many values per row on average, byte planes are (un)split by one vectorized gather over all rows
#: (what a classifier's one-position records need); above it, a loop over rows moves contiguous slices (faster).
_LOOP_MIN_VALUES = 256


def _planes(values: np.ndarray, width: int, offsets: np.ndarray, first: int = 0) -> pa.LargeBinaryArray:
    """One binary value per sequence (``offsets [n + 1]`` into ``values``): bytes ``first..first+width-1`` of its
    values as byte planes, the lowest (byte ``first`` of every value) first."""
    raw = values.view(np.uint8).reshape(-1, values.dtype.itemsize)[:, first : first + width]  # little-endian
    data = np.empty(len(values) * width, dtype=np.uint8)
    rows = len(offsets) - 1
    if len(values) < _LOOP_MIN_VALUES * rows:
        sizes = np.diff(offsets)
        pos, stride = _plane_index(offsets[:-1] * width, sizes)
        for p in range(width):
            data[pos + p * stride] = raw[:, p]
    else:
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            data[a * width : b * width].reshape(width, b - a)[...] = raw[a:b].T
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), rows, [None, pa.py_buffer(offsets * width), pa.py_buffer(data)]
    )


def _unplanes(
    arr: pa.LargeBinaryArray, width: int, dtype: type, first: int = 0, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_planes`: the flat values and the values per row, read in place from the data buffer.
    The planes are bytes ``first..`` of the values; given ``out`` (the values' other bytes), they are or-ed in."""
    starts = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=len(arr) + 1, offset=8 * arr.offset)
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    sizes = (starts[1:] - starts[:-1]) // width
    total = int(sizes.sum())
    if out is not None and len(out) != total:
        raise CorruptShardError(f"byte planes hold {total} values where the shard's other planes hold {len(out)}")
    if total < _LOOP_MIN_VALUES * len(arr):
        pos, stride = _plane_index(starts[:-1], sizes)
        if out is None:
            out = np.zeros(total, dtype=dtype)
        for p in range(width):
            out |= data[pos + p * stride].astype(dtype) << (8 * (first + p))
        return out, sizes.astype(np.int64)
    fresh = out is None
    if out is None:  # plane 0 is copied, not or-ed, into fresh memory; planes above it need zeros below them
        out = np.empty(total, dtype=dtype) if first == 0 else np.zeros(total, dtype=dtype)
    at = 0
    for start, n in zip(starts[:-1].tolist(), sizes.tolist(), strict=True):
        planes = data[start : start + width * n].reshape(width, n)
        dest = out[at : at + n]
        for p in range(width):
            if fresh and first == p == 0:
                np.copyto(dest, planes[0])
            else:
                dest |= planes[p].astype(dtype) << (8 * (first + p))
        at += n
    return out, sizes.astype(np.int64)


def _plane_index(first: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every value, rows in order: the byte position of its plane-0 byte (``first [n]``: each row's first
    byte) and its row's size, the distance between its planes."""
    row = np.repeat(np.arange(len(sizes)), sizes)
    j = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return first[row] + j, sizes[row]


def _offsets(lengths: np.ndarray, dtype: type) -> np.ndarray:
    out: np.ndarray = np.zeros(len(lengths) + 1, dtype=dtype)
    np.cumsum(lengths, out=out[1:])
    return out


def _list_values(table: pa.Table, name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Flat values and per-row lengths of a list column (zero-copy where Arrow allows)."""
    if name not in table.column_names:
        return None, None
    column = table.column(name)
    arr = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return values, np.diff(offsets).astype(np.int64)


def _one_chunk(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _nibbles(values: np.ndarray, offsets: np.ndarray) -> tuple[pa.LargeBinaryArray, pa.LargeBinaryArray]:
    """uint16 ``values [E]`` (rows at ``offsets [n + 1]``) as two binary columns: per row, its values as 4-bit
    nibbles (value ``i`` of the row in byte ``i // 2``, even ``i`` in its low half, odd in its high; a row of odd
    length ends with a 0 nibble),
    where 15 stands for ``15 + e``, and the ``e`` of its escaped values, in order, as 2 byte planes."""
    sizes = np.diff(offsets)
    odd = (sizes & 1).astype(bool)
    padded = np.insert(values, offsets[1:][odd], 0) if odd.any() else values
    clipped = np.minimum(padded, np.uint16(_NIBBLE_ESCAPE))
    pairs = clipped.view(np.uint32)  # little-endian: value 2i in the low 16 bits, 2i + 1 in the high
    packed = (pairs | (pairs >> 12)).astype(np.uint8)  # low byte: nibble 2i, then nibble 2i + 1 << 4
    nibble_off = _offsets((sizes + odd) // 2, np.int64)
    nibbles = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(sizes), [None, pa.py_buffer(nibble_off), pa.py_buffer(packed)]
    )
    at = np.flatnonzero(values >= _NIBBLE_ESCAPE)
    escaped = values[at] - np.uint16(_NIBBLE_ESCAPE)
    return nibbles, _planes(escaped, 2, np.searchsorted(at, offsets).astype(np.int64))


def _unnibbles(nibbles: pa.LargeBinaryArray, escapes: pa.LargeBinaryArray, sizes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_nibbles`: the flat uint16 values of rows of ``sizes [n]`` values."""
    starts = np.frombuffer(nibbles.buffers()[1], dtype=np.int64, count=len(nibbles) + 1, offset=8 * nibbles.offset)
    data = nibbles.buffers()[2]
    packed = np.frombuffer(data, dtype=np.uint8)[starts[0] : starts[-1]] if data is not None else np.zeros(0, np.uint8)
    odd = (sizes & 1).astype(bool)
    if len(packed) != int(((sizes + odd) // 2).sum()):
        raise CorruptShardError(
            f"nibble column holds {len(packed)} bytes where its rows' {int(sizes.sum())} values need "
            f"{int(((sizes + odd) // 2).sum())}"
        )
    wide = packed.astype(np.uint16)
    values = ((wide & 15) | ((wide >> 4) << 8)).view(np.uint8)  # little-endian: each byte's low nibble first
    if odd.any():  # drop the pad nibble that ends each odd row
        values = np.delete(values, (np.cumsum(sizes + odd) - 1)[odd])
    out = values.astype(np.uint16)
    escaped = np.flatnonzero(values == _NIBBLE_ESCAPE)
    extra, _ = _unplanes(escapes, 2, np.uint16)
    if len(extra) != len(escaped):
        raise CorruptShardError(f"nibble column holds {len(escaped)} escapes but its escape column {len(extra)}")
    out[escaped] += extra
    return out


def _table_to_columns(table: pa.Table, layout: _EntryLayout | None = None) -> Columns:
    layout = layout or _EntryLayout()
    keys = table.column("key").combine_chunks()
    key_bytes = np.frombuffer(keys.buffers()[1], dtype=np.uint8, count=16 * len(keys), offset=16 * keys.offset)
    input_ids, input_lengths = _list_values(table, "input_ids")
    lse, lengths = _list_values(table, "lse")
    ids, id_sizes = layout.read(table, "ids")
    logprobs, num_entries = layout.read(table, "logprobs", id_sizes)
    return Columns(
        seq_ids=table.column("seq_id").to_numpy(),
        keys=key_bytes.reshape(-1, 16),
        lengths=lengths,  # type: ignore[arg-type]
        num_entries=num_entries,  # type: ignore[arg-type]
        input_lengths=input_lengths,  # type: ignore[arg-type]
        input_ids=input_ids,  # type: ignore[arg-type]
        lse=lse,  # type: ignore[arg-type]
        nnz=_list_values(table, "nnz")[0],  # type: ignore[arg-type]
        ids=ids,
        logprobs=logprobs,  # type: ignore[arg-type]
        counts=layout.read(table, "counts")[0],
        proposal_lse=_list_values(table, "proposal_lse")[0],
        label_logprob=_list_values(table, "label_logprob")[0],
        logit_mean=_list_values(table, "logit_mean")[0],
        logit_std=_list_values(table, "logit_std")[0],
    )


def _concat_columns(parts: list[Columns]) -> Columns:
    def cat(name: str) -> np.ndarray | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else np.concatenate(values)

    arrays = [name for name in Columns.__dataclass_fields__ if name != "kept_mass_sum"]
    return Columns(**{name: cat(name) for name in arrays})  # type: ignore[arg-type]
