"""Records on the wire: Arrow IPC streams and JSON, shared by the service (encode) and the client (decode).

Both carry the logical record of ARCHITECTURE §2, decoded (ids int32, logprobs float32, counts int32), one row
per sequence with list columns, so a client gets exactly what ``open_dataset`` returns on disk. In JSON the key is
32 hex digits and ``-inf`` logprobs (masked teacher logits) are ``null``, since JSON has no infinities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from logitstore.errors import InvalidInputError
from logitstore.record import Record

ARROW_STREAM = "application/vnd.apache.arrow.stream"

_LISTS = {
    "input_ids": pa.int32(),
    "lse": pa.float32(),
    "nnz": pa.int32(),
    "ids": pa.int32(),
    "logprobs": pa.float32(),
    "counts": pa.int32(),
    "proposal_lse": pa.float32(),
}


def _list(values: list[np.ndarray], kind: pa.DataType) -> pa.Array:
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(values) if values else np.zeros(0)
    field = pa.field("element", kind, nullable=False)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, type=kind), type=pa.large_list(field))


def records_to_arrow(records: Sequence[Record]) -> bytes:
    """One Arrow IPC stream with a row per record (optional columns only when the records have them)."""
    arrays: dict[str, pa.Array] = {
        "seq_id": pa.array([r.seq_id for r in records], type=pa.int64()),
        "key": pa.array([r.key for r in records], type=pa.binary(16)),
    }
    for name, kind in _LISTS.items():
        values = [getattr(r, name) for r in records]
        if records and values[0] is not None:
            arrays[name] = _list(values, kind)
    table = pa.table(arrays)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def records_from_arrow(data: bytes) -> list[Record]:
    """Inverse of :func:`records_to_arrow` (numpy arrays are zero-copy views of the received buffer)."""
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except pa.ArrowInvalid as exc:
        raise InvalidInputError(f"not an Arrow IPC stream of records: {exc}") from None
    columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in _LISTS:
        if name in table.column_names:
            column = table.column(name)
            arr = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
            columns[name] = (arr.offsets.to_numpy(), arr.values.to_numpy(zero_copy_only=False))
    seq_ids = table.column("seq_id").to_pylist()
    keys = table.column("key").to_pylist()
    out = []
    for i, (seq_id, key) in enumerate(zip(seq_ids, keys, strict=True)):
        fields = {name: values[offsets[i] : offsets[i + 1]] for name, (offsets, values) in columns.items()}
        out.append(Record(seq_id=seq_id, key=key, **fields))
    return out


def record_to_json(record: Record) -> dict[str, Any]:
    """A JSON-serializable dict (``-inf`` logprobs become ``None``)."""
    logprobs = record.logprobs.astype(np.float64)
    return {
        "seq_id": record.seq_id,
        "key": record.key.hex(),
        "input_ids": record.input_ids.tolist(),
        "lse": record.lse.tolist(),
        "nnz": record.nnz.tolist(),
        "ids": record.ids.tolist(),
        "logprobs": [None if np.isneginf(v) else v for v in logprobs.tolist()],
        "counts": None if record.counts is None else record.counts.tolist(),
        "proposal_lse": None if record.proposal_lse is None else record.proposal_lse.tolist(),
    }


def record_from_json(data: dict[str, Any]) -> Record:
    """Inverse of :func:`record_to_json`."""
    try:
        logprobs = np.array([-np.inf if v is None else v for v in data["logprobs"]], dtype=np.float32)
        return Record(
            seq_id=int(data["seq_id"]),
            key=bytes.fromhex(data["key"]),
            input_ids=np.asarray(data["input_ids"], dtype=np.int32),
            lse=np.asarray(data["lse"], dtype=np.float32),
            nnz=np.asarray(data["nnz"], dtype=np.int32),
            ids=np.asarray(data["ids"], dtype=np.int32),
            logprobs=logprobs,
            counts=None if data.get("counts") is None else np.asarray(data["counts"], dtype=np.int32),
            proposal_lse=(
                None if data.get("proposal_lse") is None else np.asarray(data["proposal_lse"], dtype=np.float32)
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"not a JSON record: {type(exc).__name__}: {exc}") from None
