"""Records on the wire: Arrow IPC streams and JSON, shared by the service (encode) and the client (decode).

Both carry the logical record of ARCHITECTURE §2, decoded (ids int32, logprobs float32, counts int32), one row
per sequence with list columns, so a client gets exactly what ``open_dataset`` returns on disk. In JSON the key is
32 hex digits and ``-inf`` logprobs (masked teacher logits) are ``null``, since JSON has no infinities; so is
``label_logprob`` at a sequence's last position (NaN: no token follows it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    "label_logprob": pa.float32(),
    "logit_mean": pa.float32(),
    "logit_std": pa.float32(),
}


#: records are grouped into Arrow record batches of about this many bytes: large enough that the per-batch framing
#: costs nothing, small enough that a service can encode a large response one batch at a time as it sends it
BATCH_BYTES = 1 << 20
#: the end-of-stream marker of the Arrow IPC stream format (continuation token, zero metadata length)
ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def _list(values: list[np.ndarray], kind: pa.DataType) -> pa.Array:
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = values[0] if len(values) == 1 else np.concatenate(values)  # one record: no copy before serializing
    field = pa.field("element", kind, nullable=False)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, type=kind), type=pa.large_list(field))


def _schema(records: Sequence[Record]) -> pa.Schema:
    fields = [pa.field("seq_id", pa.int64()), pa.field("key", pa.binary(16))]
    for name, kind in _LISTS.items():
        if records and getattr(records[0], name) is not None:
            fields.append(pa.field(name, pa.large_list(pa.field("element", kind, nullable=False))))
    return pa.schema(fields)


def _batch(records: Sequence[Record], schema: pa.Schema) -> pa.RecordBatch:
    arrays = [
        pa.array([r.seq_id for r in records], type=pa.int64()),
        pa.array([r.key for r in records], type=pa.binary(16)),
    ]
    for name in schema.names[2:]:
        arrays.append(_list([getattr(r, name) for r in records], _LISTS[name]))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def records_to_arrow_batches(records: Sequence[Record]) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """The schema and record batches of :func:`records_to_arrow`: consecutive records grouped into batches of about
    :data:`BATCH_BYTES`; a record that large is a batch of its own, whose arrays are wrapped, not copied."""
    schema = _schema(records)
    batches = []
    group: list[Record] = []
    size = 0
    for record in records:
        group.append(record)
        size += record.nbytes
        if size >= BATCH_BYTES:
            batches.append(_batch(group, schema))
            group, size = [], 0
    if group:
        batches.append(_batch(group, schema))
    return schema, batches


def records_to_arrow_messages(records: Sequence[Record]) -> list[pa.Buffer]:
    """The Arrow IPC stream of :func:`records_to_arrow` as its messages (schema, record batches, end of stream),
    whose concatenation is the stream."""
    schema, batches = records_to_arrow_batches(records)
    return [schema.serialize(), *(batch.serialize() for batch in batches), pa.py_buffer(ARROW_EOS)]


def records_to_arrow(records: Sequence[Record]) -> bytes:
    """One Arrow IPC stream with a row per record (optional columns only when the records have them)."""
    return b"".join(records_to_arrow_messages(records))


def records_from_arrow(data: bytes) -> list[Record]:
    """Inverse of :func:`records_to_arrow`, for a stream of any number of record batches (numpy arrays are
    zero-copy views of the received buffer)."""
    try:
        batches = list(pa.ipc.open_stream(pa.py_buffer(data)))
    except pa.ArrowInvalid as exc:
        raise InvalidInputError(f"not an Arrow IPC stream of records: {exc}") from None
    out: list[Record] = []
    for batch in batches:
        columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in _LISTS:
            if name in batch.schema.names:
                arr = batch.column(name)
                columns[name] = (arr.offsets.to_numpy(), arr.values.to_numpy(zero_copy_only=False))
        seq_ids = batch.column("seq_id").to_pylist()
        keys = batch.column("key").to_pylist()
        for i, (seq_id, key) in enumerate(zip(seq_ids, keys, strict=True)):
            fields = {name: values[offsets[i] : offsets[i + 1]] for name, (offsets, values) in columns.items()}
            out.append(Record(seq_id=seq_id, key=key, **fields))
    return out


def _nullable(values: np.ndarray) -> list[float | None]:
    """Floats as a JSON list, non-finite values (``-inf``, NaN) as ``None``."""
    out: list[float | None] = values.astype(np.float64).tolist()
    for i in np.flatnonzero(~np.isfinite(values)).tolist():
        out[i] = None
    return out


def _optional(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else values.tolist()


def _contiguous(values: np.ndarray | None) -> np.ndarray | None:
    return None if values is None else np.ascontiguousarray(values)


def record_to_json(record: Record, *, arrays: bool = False) -> dict[str, Any]:
    """A JSON-serializable dict (``-inf`` logprobs and the last position's NaN label_logprob become ``None``).

    With ``arrays=True`` the values are the record's numpy arrays (C-contiguous) instead of lists, for an encoder
    that writes numpy arrays itself and non-finite floats as ``null``: ``orjson.dumps(..., option=
    orjson.OPT_SERIALIZE_NUMPY)``, what the service sends, is the same JSON values ~20x faster (float32 in their
    shortest repr, which parses back to the same float32)."""
    plain: Callable[[np.ndarray], Any] = np.ascontiguousarray if arrays else np.ndarray.tolist
    nullable: Callable[[np.ndarray], Any] = np.ascontiguousarray if arrays else _nullable
    optional: Callable[[np.ndarray | None], Any] = _contiguous if arrays else _optional
    return {
        "seq_id": record.seq_id,
        "key": record.key.hex(),
        "input_ids": plain(record.input_ids),
        "lse": plain(record.lse),
        "nnz": plain(record.nnz),
        "ids": plain(record.ids),
        "logprobs": nullable(record.logprobs),
        "counts": optional(record.counts),
        "proposal_lse": optional(record.proposal_lse),
        "label_logprob": None if record.label_logprob is None else nullable(record.label_logprob),
        "logit_mean": optional(record.logit_mean),
        "logit_std": optional(record.logit_std),
    }


def record_from_json(data: dict[str, Any]) -> Record:
    """Inverse of :func:`record_to_json`."""

    def floats(name: str) -> np.ndarray | None:
        return None if data.get(name) is None else np.asarray(data[name], dtype=np.float32)

    try:
        logprobs = np.array([-np.inf if v is None else v for v in data["logprobs"]], dtype=np.float32)
        label = data.get("label_logprob")
        if label is not None:  # null is NaN at the last position (no label), -inf elsewhere
            last = len(label) - 1
            label = [(np.nan if i == last else -np.inf) if v is None else v for i, v in enumerate(label)]
        return Record(
            seq_id=int(data["seq_id"]),
            key=bytes.fromhex(data["key"]),
            input_ids=np.asarray(data["input_ids"], dtype=np.int32),
            lse=np.asarray(data["lse"], dtype=np.float32),
            nnz=np.asarray(data["nnz"], dtype=np.int32),
            ids=np.asarray(data["ids"], dtype=np.int32),
            logprobs=logprobs,
            counts=None if data.get("counts") is None else np.asarray(data["counts"], dtype=np.int32),
            proposal_lse=floats("proposal_lse"),
            label_logprob=None if label is None else np.asarray(label, dtype=np.float32),
            logit_mean=floats("logit_mean"),
            logit_std=floats("logit_std"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"not a JSON record: {type(exc).__name__}: {exc}") from None
