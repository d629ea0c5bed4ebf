"""The Parquet backend's entry layout: byte-plane blobs for the unsigned entry columns, list columns in older
shards, and both read back exactly."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from logitstore import LOSSLESS, DatasetWriter, Spec, open_dataset
from logitstore.formats import parquet as parquet_format
from tests.conftest import synthetic_record, teacher


def _write(root, spec: Spec, vocab: int, rng: np.random.Generator) -> list:
    records = [
        synthetic_record(spec, rng, seq_id=i, length=int(rng.integers(1, 60)), vocab_size=vocab, neg_inf=True)
        for i in range(25)
    ]
    with DatasetWriter(root, spec=spec, teacher=teacher(vocab), backend="parquet") as w:
        for r in records:
            w.write(r)
    return records


def _shard(root) -> pq.ParquetFile:
    manifest = json.loads((root / "manifest.json").read_text())
    return pq.ParquetFile(root / manifest["shards"][0]["path"])


@pytest.mark.parametrize(
    ("spec", "vocab", "planes"),
    [
        (Spec(method="topk", k=12), 500, {"ids": 2, "logprobs": 2}),  # ids below 2^16: two planes
        (Spec(method="sample", n=30), 200_000, {"ids": 3, "logprobs": 2, "counts": 2}),  # 18-bit ids: three
        (Spec(method="topp", p=0.9, k=40, encoding=LOSSLESS), 70_000, {"ids": 3}),  # float32 logprobs stay lists
        (Spec(method="topk", k=3), 200, {"ids": 1, "logprobs": 2}),
    ],
)
def test_unsigned_entry_columns_are_byte_planes_and_read_back_exactly(tmp_path, rng, spec, vocab, planes) -> None:
    records = _write(tmp_path / "ds", spec, vocab, rng)
    shard = _shard(tmp_path / "ds")
    assert json.loads(shard.schema_arrow.metadata[b"logitstore"])["entry_planes"] == planes
    for name in ("ids", "logprobs", "counts"):
        if name in shard.schema_arrow.names:
            kind = shard.schema_arrow.field(name).type
            assert (kind == pa.large_binary()) == (name in planes), name
    ds = open_dataset(tmp_path / "ds", verify=True)
    for r in records:
        assert ds[r.seq_id].equals(r, logprob_atol=spec.encoding.error_bound)


def test_shards_with_list_entry_columns_still_read(tmp_path, rng, monkeypatch) -> None:
    """Shards written before the byte-plane layout (list columns, no entry_planes metadata) read as before."""
    spec = Spec(method="sample", n=20)
    monkeypatch.setattr(parquet_format, "ENTRY_PLANES", False)
    records = _write(tmp_path / "ds", spec, 40_000, rng)
    shard = _shard(tmp_path / "ds")
    assert "entry_planes" not in json.loads(shard.schema_arrow.metadata[b"logitstore"])
    assert pa.types.is_large_list(shard.schema_arrow.field("ids").type)
    monkeypatch.setattr(parquet_format, "ENTRY_PLANES", True)  # today's reader
    ds = open_dataset(tmp_path / "ds", verify=True)
    assert all(ds[r.seq_id].equals(r, logprob_atol=spec.encoding.error_bound) for r in records)


@pytest.mark.parametrize("loop_min", [0, 10**9])  # the per-row loop and the vectorized gather
def test_planes_round_trip_empty_and_uneven_rows(monkeypatch, rng, loop_min: int) -> None:
    monkeypatch.setattr(parquet_format, "_LOOP_MIN_VALUES", loop_min)
    values = np.array([1, 70_000, 5, 0, 16_777_215, 2], dtype=np.uint32)
    offsets = np.array([0, 0, 2, 2, 6], dtype=np.int64)  # an empty first and third row
    blob = parquet_format._planes(values, 3, offsets)
    assert blob.to_pylist()[1] == bytes([1 & 255, 70_000 & 255, 0, 70_000 >> 8 & 255, 0, 70_000 >> 16])
    back, per_row = parquet_format._unplanes(blob, 3, np.uint32)
    assert back.tolist() == values.tolist() and per_row.tolist() == [0, 2, 0, 4]
    many = rng.integers(0, 2**16, size=5000).astype(np.uint16)
    cuts = np.concatenate([[0], np.sort(rng.integers(0, 5000, size=799)), [5000]]).astype(np.int64)
    back, per_row = parquet_format._unplanes(parquet_format._planes(many, 2, cuts), 2, np.uint16)
    assert np.array_equal(back, many) and np.array_equal(per_row, np.diff(cuts))
    empty = parquet_format._planes(np.zeros(0, np.uint16), 2, np.zeros(3, np.int64))
    back, per_row = parquet_format._unplanes(empty, 2, np.uint16)
    assert back.size == 0 and per_row.tolist() == [0, 0]


def test_local_shards_are_read_through_pyarrow_files_and_closed(tmp_path, rng) -> None:
    """A local shard is opened as pyarrow's own file, never a Python (fsspec) file object: pyarrow's decode threads
    release the Python buffers such a file hands out after the read returns, and one released during interpreter
    exit aborted the process ("terminate called without an active exception", exit 134) in about 1 of 4 runs of
    `bench/storage_ab.py`'s child. Closing the dataset closes the file."""
    spec = Spec(method="topk", k=6)
    records = _write(tmp_path / "ds", spec, 300, rng)
    ds = open_dataset(tmp_path / "ds")
    assert ds[records[3].seq_id].equals(records[3], logprob_atol=spec.encoding.error_bound)
    reader = ds.shard_reader(0)
    source = reader._source
    assert isinstance(source, pa.OSFile) and not source.closed
    ds.close()
    assert source.closed and reader._source is None


def test_a_shard_that_fails_its_open_checks_fails_every_read_and_keeps_no_file_open(tmp_path, rng) -> None:
    """A shard holding another number of rows than its manifest says is refused on every read, not only the first
    (the reader once kept the file it had opened, so a second read went ahead), and its file is closed."""
    import dataclasses

    from logitstore.errors import CorruptShardError
    from logitstore.formats import READERS

    spec = Spec(method="topk", k=4)
    _write(tmp_path / "ds", spec, 300, rng)
    ds = open_dataset(tmp_path / "ds")
    info = dataclasses.replace(ds.manifest.shards[0], num_sequences=ds.manifest.shards[0].num_sequences - 1)
    reader = READERS["parquet"](ds.fs, f"{ds.root}/{info.path}", info, spec, 300)
    for _ in range(2):
        with pytest.raises(CorruptShardError, match="rows, manifest says 24"):
            reader.read(0)
        assert reader._file is None and reader._source is None
