"""Parquet shards: one row per sequence, list columns, one row group per writer flush.

Entry columns hold the codec's small unsigned integers (see :mod:`logitstore.codec`), stored with Parquet's
BYTE_STREAM_SPLIT encoding and zstd so each byte plane is entropy-coded on its own. Random access reads and
decodes a single row group. The file's key-value metadata (``logitstore``) holds the spec and vocabulary size.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from logitstore.codec import Columns
from logitstore.errors import CorruptShardError
from logitstore.formats.base import ShardReader, ShardWriter, shard_metadata
from logitstore.fs import is_local

_TOKEN_COLUMNS = ("lse", "nnz", "proposal_lse", "logit_mean", "logit_std")
_ENTRY_COLUMNS = ("ids", "logprobs", "counts")
_KEY_TYPE = pa.binary(16)
ZSTD_LEVEL = 1


class ParquetShardWriter(ShardWriter):
    _writer: pq.ParquetWriter | None = None

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
        for name in _ENTRY_COLUMNS:
            values = getattr(cols, name)
            if values is not None:
                arrays[name] = _list(ent_off, values)
        if cols.label_logprob is not None:  # every position but the last of each sequence
            arrays["label_logprob"] = _list(_offsets(cols.lengths - 1, np.int64), cols.label_logprob)
        # Nothing is ever null: non-nullable fields spare Parquet a definition level per value (~15% faster reads).
        table = pa.table(arrays, schema=pa.schema([pa.field(n, a.type, nullable=False) for n, a in arrays.items()]))
        if self._writer is None:
            schema = table.schema.with_metadata({"logitstore": json.dumps(shard_metadata(self.spec, self.vocab_size))})
            # BYTE_STREAM_SPLIT is set per leaf column; a list column's leaf is "<name>.list.element".
            split = [f"{n}.list.element" for n in table.column_names if n not in ("seq_id", "key")]
            self._writer = pq.ParquetWriter(
                self.tmp_path,
                schema,
                compression="zstd",
                compression_level=ZSTD_LEVEL,
                use_dictionary=False,
                use_byte_stream_split=split,
                write_statistics=False,
            )
            table = table.replace_schema_metadata(schema.metadata)
        self._writer.write_table(table, row_group_size=len(cols))

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ParquetShardReader(ShardReader):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._file: pq.ParquetFile | None = None
        self._group_starts: np.ndarray | None = None
        self._read_group = lru_cache(maxsize=2)(self._read_group_uncached)

    def _open(self) -> pq.ParquetFile:
        if self._file is None:
            if is_local(self.fs):
                self._file = pq.ParquetFile(self.fs.open(self.path, "rb"))
            else:
                # Remote (the service's /files, object stores): no read-ahead cache, which fetches a block (5 MB
                # for HTTP) past every read that does not continue the last one, as row groups read in shuffled
                # order never do; pyarrow coalesces a row group's column chunks into one exact range read instead.
                self._file = pq.ParquetFile(self.fs.open(self.path, "rb", cache_type="none"), pre_buffer=True)
            md = self._file.metadata
            rows = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
            self._group_starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
            if int(self._group_starts[-1]) != len(self):
                raise CorruptShardError(
                    f"shard {self.info.path} holds {int(self._group_starts[-1])} rows, manifest says {len(self)}"
                )
        return self._file

    def _read_group_uncached(self, group: int) -> Columns:
        table = self._open().read_row_group(group)
        return _table_to_columns(table)

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
        if self._file is not None:
            self._file.close()
            self._file = None
        self._read_group.cache_clear()


def _list(offsets: np.ndarray, values: np.ndarray) -> pa.LargeListArray:
    """A large_list column with non-nullable elements (leaf path ``<name>.list.element``)."""
    flat = pa.array(values)
    kind = pa.large_list(pa.field("element", flat.type, nullable=False))
    return pa.LargeListArray.from_arrays(pa.array(offsets), flat, type=kind)


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


def _table_to_columns(table: pa.Table) -> Columns:
    keys = table.column("key").combine_chunks()
    key_bytes = np.frombuffer(keys.buffers()[1], dtype=np.uint8, count=16 * len(keys), offset=16 * keys.offset)
    input_ids, input_lengths = _list_values(table, "input_ids")
    lse, lengths = _list_values(table, "lse")
    logprobs, num_entries = _list_values(table, "logprobs")
    return Columns(
        seq_ids=table.column("seq_id").to_numpy(),
        keys=key_bytes.reshape(-1, 16),
        lengths=lengths,  # type: ignore[arg-type]
        num_entries=num_entries,  # type: ignore[arg-type]
        input_lengths=input_lengths,  # type: ignore[arg-type]
        input_ids=input_ids,  # type: ignore[arg-type]
        lse=lse,  # type: ignore[arg-type]
        nnz=_list_values(table, "nnz")[0],  # type: ignore[arg-type]
        ids=_list_values(table, "ids")[0],
        logprobs=logprobs,  # type: ignore[arg-type]
        counts=_list_values(table, "counts")[0],
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
