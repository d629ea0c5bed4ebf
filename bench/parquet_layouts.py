"""Parquet layouts for the entry columns: what writing them costs, before any logitstore code (issue 2's encode target).

Run from the repository root::

    .venv/bin/python bench/parquet_layouts.py            # 32,768 tokens of top-k 64 at V = 32,000
    .venv/bin/python bench/parquet_layouts.py --quick

The codec's physical columns of top-k 64 compact records (synthetic teacher, ``bench/teacher_like.py``) are written
to an in-memory Parquet file in two layouts, and the time of each (one core, best of ``--repeats``) and its bytes
are compared in the same run, so the ratio holds on a slow host too:

- **lists** (shards before 2026-12-02): one list<uint32> ``ids`` and one list<uint16> ``logprobs`` row per
  sequence, each with BYTE_STREAM_SPLIT and zstd 1 (Parquet widens both to INT32: 4 byte planes per value);
- **blobs** (today's shards since 2026-12-02, ``logitstore.formats.parquet``): one binary value per sequence per
  column holding the values' byte planes one after another (ids in ``ceil(log2(V) / 8)`` planes, codes in 2),
  split by numpy, compressed by the same zstd 1 inside Parquet. The time includes the numpy split.

Only the two entry columns are written: they are ~97% of a top-k shard's bytes and of the writer's time.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from teacher_like import TeacherLike  # noqa: E402

import logitstore  # noqa: E402
from logitstore.codec import encode  # noqa: E402
from logitstore.formats.parquet import _planes, _unplanes  # noqa: E402  (the layout shards now use)
from logitstore.sparsify import sparsify  # noqa: E402

VOCAB = 32_000


def columns(num_seqs: int, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids [E] uint32, codes [E] uint16, entries per sequence [n]) of top-k 64 compact records."""
    spec = logitstore.Spec(method="topk", k=64)
    teacher = TeacherLike(VOCAB, seed=0, calibration_positions=128)
    records = []
    for i in range(num_seqs):
        out = sparsify(teacher.logits(i, seq_len), spec).numpy()
        input_ids = np.random.default_rng(i).integers(0, VOCAB, size=seq_len, dtype=np.int32)
        records.append(logitstore.Record(seq_id=i, key=logitstore.content_key(input_ids), input_ids=input_ids, **out))
    cols = encode(records, spec, VOCAB)
    assert cols.ids is not None
    return cols.ids, cols.logprobs, cols.num_entries


def write_lists(ids: np.ndarray, codes: np.ndarray, entries: np.ndarray) -> bytes:
    off = pa.array(np.concatenate([[0], np.cumsum(entries)]).astype(np.int64))

    def lst(values: np.ndarray) -> pa.Array:
        arr = pa.array(values)
        return pa.LargeListArray.from_arrays(off, arr, type=pa.large_list(pa.field("element", arr.type, False)))

    table = pa.table({"ids": lst(ids), "logprobs": lst(codes)})
    buf = io.BytesIO()
    with pq.ParquetWriter(
        buf,
        table.schema,
        compression="zstd",
        compression_level=1,
        use_dictionary=False,
        use_byte_stream_split=["ids.list.element", "logprobs.list.element"],
        write_statistics=False,
    ) as w:
        w.write_table(table, row_group_size=len(table))
    return buf.getvalue()


def read_lists(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(io.BytesIO(data))
    return tuple(table.column(n).combine_chunks().values.to_numpy() for n in ("ids", "logprobs"))  # type: ignore[return-value]


def write_blobs(ids: np.ndarray, codes: np.ndarray, entries: np.ndarray, id_bytes: int) -> bytes:
    offsets = np.concatenate([[0], np.cumsum(entries)]).astype(np.int64)
    table = pa.table({"ids": _planes(ids, id_bytes, offsets), "logprobs": _planes(codes, 2, offsets)})
    buf = io.BytesIO()
    with pq.ParquetWriter(
        buf, table.schema, compression="zstd", compression_level=1, use_dictionary=False, write_statistics=False
    ) as w:
        w.write_table(table, row_group_size=len(table))
    return buf.getvalue()


def read_blobs(data: bytes, id_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(io.BytesIO(data))
    ids, codes = (table.column(n).combine_chunks() for n in ("ids", "logprobs"))
    return _unplanes(ids, id_bytes, np.uint32)[0], _unplanes(codes, 2, np.uint16)[0]


def best(fn, repeats: int):  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(repeats):
        t = time.process_time()
        result = fn()
        times.append(time.process_time() - t)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    num_seqs, seq_len = (2, 1024) if args.quick else (16, 2048)
    ids, codes, entries = columns(num_seqs, seq_len)
    tokens = num_seqs * seq_len
    id_bytes = (int(VOCAB - 1).bit_length() + 7) // 8
    lists_s, lists_data = best(lambda: write_lists(ids, codes, entries), args.repeats)
    blobs_s, blobs_data = best(lambda: write_blobs(ids, codes, entries, id_bytes), args.repeats)
    lists_b, blobs_b = len(lists_data), len(blobs_data)
    lists_r, lists_back = best(lambda: read_lists(lists_data), args.repeats)
    blobs_r, blobs_back = best(lambda: read_blobs(blobs_data, id_bytes), args.repeats)
    for back in (lists_back, blobs_back):  # both layouts give the columns back exactly
        assert np.array_equal(back[0], ids) and np.array_equal(back[1], codes)
    lines = [
        "# Parquet layouts for the entry columns (top-k 64 compact, V = 32,000)",
        "",
        f"- command: `.venv/bin/python bench/parquet_layouts.py{' --quick' if args.quick else ''}`; {tokens:,} tokens, "
        f"{len(ids):,} entries; one core, CPU time, best of {args.repeats}",
        "",
        "| layout | write ms | write tokens/s | read ms | read tokens/s | bytes/token |",
        "|---|---:|---:|---:|---:|---:|",
        f"| lists (before) | {lists_s * 1e3:.1f} | {tokens / lists_s / 1e6:.2f}M | {lists_r * 1e3:.1f} | "
        f"{tokens / lists_r / 1e6:.2f}M | {lists_b / tokens:.1f} |",
        f"| blobs ({id_bytes} id planes + 2 code planes) | {blobs_s * 1e3:.1f} | {tokens / blobs_s / 1e6:.2f}M | "
        f"{blobs_r * 1e3:.1f} | {tokens / blobs_r / 1e6:.2f}M | {blobs_b / tokens:.1f} |",
        "",
        f"blobs / lists: write time {blobs_s / lists_s:.2f}x, read time {blobs_r / lists_r:.2f}x, "
        f"bytes {blobs_b / lists_b:.3f}x (these two columns only; token rates count no other work)",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
