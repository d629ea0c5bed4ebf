"""The Parquet backend's entry layout: byte-plane blobs for the unsigned entry columns (rank-order ids' low plane
raw, q16 gaps as nibbles), the older layouts, and all read back exactly."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from logitstore import LOSSLESS, DatasetWriter, Spec, open_dataset
from logitstore.errors import CorruptShardError
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
    ("spec", "vocab", "layout"),
    [
        # rank order: the ids' low plane raw in ids_raw, the q16 gaps as nibbles
        (
            Spec(method="topk", k=12),
            500,
            {"entry_planes": {"ids": 2}, "raw_planes": {"ids": 1}, "nibbles": ["logprobs"]},
        ),
        # id order: every plane compressed, codes (not gaps) as planes
        (Spec(method="sample", n=30), 200_000, {"entry_planes": {"ids": 3, "logprobs": 2, "counts": 2}}),
        # float32 logprobs stay lists
        (
            Spec(method="topp", p=0.9, k=40, encoding=LOSSLESS),
            70_000,
            {"entry_planes": {"ids": 3}, "raw_planes": {"ids": 1}},
        ),
        # one id plane: nothing to split off
        (Spec(method="topk", k=3), 200, {"entry_planes": {"ids": 1}, "nibbles": ["logprobs"]}),
        (
            Spec(method="topp", p=0.8, k=30),
            300_000,
            {"entry_planes": {"ids": 3}, "raw_planes": {"ids": 1}, "nibbles": ["logprobs"]},
        ),
    ],
)
def test_entry_columns_are_stored_in_the_declared_layout_and_read_back_exactly(
    tmp_path, rng, spec, vocab, layout
) -> None:
    records = _write(tmp_path / "ds", spec, vocab, rng)
    shard = _shard(tmp_path / "ds")
    meta = json.loads(shard.schema_arrow.metadata[b"logitstore"])
    assert {k: meta[k] for k in ("entry_planes", "raw_planes", "nibbles") if k in meta} == layout
    # version 2 only where format_version 1 readers would misread the shards (a raw plane, nibbles)
    version = 2 if "raw_planes" in layout or "nibbles" in layout else 1
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["format_version"] == version
    assert meta["format_version"] == version
    names = shard.schema_arrow.names
    for name in ("ids", "logprobs", "counts"):
        if name in names:
            kind = shard.schema_arrow.field(name).type
            blob = name in layout["entry_planes"] or name in layout.get("nibbles", [])
            assert (kind == pa.large_binary()) == blob, name
    assert ("ids_raw" in names) == ("raw_planes" in layout)
    assert ("logprobs_escapes" in names) == ("nibbles" in layout)
    compression = {c.path_in_schema: c.compression for c in map(shard.metadata.row_group(0).column, range(len(names)))}
    assert {n for n, c in compression.items() if c != "ZSTD"} == ({"ids_raw"} if "raw_planes" in layout else set())
    ds = open_dataset(tmp_path / "ds", verify=True)
    for r in records:
        assert ds[r.seq_id].equals(r, logprob_atol=spec.encoding.error_bound)


@pytest.mark.parametrize(
    "older",
    [
        {"RAW_LOW_PLANE": False, "NIBBLE_GAPS": False},  # byte planes only (2026-12-02)
        {"ENTRY_PLANES": False},  # list columns (before)
    ],
)
def test_shards_in_older_layouts_still_read(tmp_path, rng, monkeypatch, older: dict) -> None:
    """Shards written before today's layout (no raw_planes / nibbles, or no entry_planes at all) read as before:
    the reader follows each shard's own metadata."""
    spec = Spec(method="topk", k=9)
    for name, value in older.items():
        monkeypatch.setattr(parquet_format, name, value)
    records = _write(tmp_path / "ds", spec, 40_000, rng)
    names = _shard(tmp_path / "ds").schema_arrow.names
    assert "ids_raw" not in names and "logprobs_escapes" not in names
    monkeypatch.undo()  # today's reader
    ds = open_dataset(tmp_path / "ds", verify=True)
    assert all(ds[r.seq_id].equals(r, logprob_atol=spec.encoding.error_bound) for r in records)


@pytest.mark.parametrize("odd", [False, True])
def test_nibbles_round_trip_escapes_empty_and_odd_rows(rng, odd: bool) -> None:
    sizes = np.array([0, 6, 2, 0, 8] if not odd else [3, 0, 1, 6, 5], dtype=np.int64)
    values = rng.integers(0, 20, size=int(sizes.sum())).astype(np.uint16)
    values[[1, -1]] = [65535, 15]  # the largest value (a -inf code) and the smallest escaped one
    offsets = parquet_format._offsets(sizes, np.int64)
    nibbles, escapes = parquet_format._nibbles(values, offsets)
    assert [len(b) for b in nibbles.to_pylist()] == ((sizes + 1) // 2).tolist()
    assert sum(len(b) for b in escapes.to_pylist()) == 2 * int((values >= 15).sum())
    assert nibbles.to_pylist()[1 if not odd else 0][0] == min(int(values[0]), 15) | min(int(values[1]), 15) << 4
    back = parquet_format._unnibbles(nibbles, escapes, sizes)
    assert back.dtype == np.uint16 and back.tolist() == values.tolist()
    many = rng.geometric(0.3, size=4001).astype(np.uint16)
    cuts = np.concatenate([[0], np.sort(rng.integers(0, 4001, size=300)), [4001]]).astype(np.int64)
    nibbles, escapes = parquet_format._nibbles(many, cuts)
    assert np.array_equal(parquet_format._unnibbles(nibbles, escapes, np.diff(cuts)), many)


def test_a_nibble_column_whose_escapes_disagree_is_corrupt() -> None:
    values = np.array([3, 40, 2, 90], dtype=np.uint16)
    offsets = np.array([0, 4], dtype=np.int64)
    nibbles, _ = parquet_format._nibbles(values, offsets)
    _, fewer = parquet_format._nibbles(values[:2], np.array([0, 2], dtype=np.int64))
    with pytest.raises(CorruptShardError, match="2 escapes but its escape column 1"):
        parquet_format._unnibbles(nibbles, fewer, np.array([4]))
    with pytest.raises(CorruptShardError, match="holds 2 bytes where its rows' 5 values need 3"):
        parquet_format._unnibbles(nibbles, fewer, np.array([5]))
    layout = parquet_format._EntryLayout({}, {}, ("logprobs",))
    table = pa.table({"logprobs": nibbles, "logprobs_escapes": fewer})
    with pytest.raises(CorruptShardError, match="nibble column 'logprobs' has no ids column"):
        layout.read(table, "logprobs", None)


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
    # a low plane apart (ids_raw) and the others from byte 1 on, or-ed into it
    low, _ = parquet_format._unplanes(parquet_format._planes(values, 1, offsets), 1, np.uint32)
    high = parquet_format._planes(values, 2, offsets, first=1)
    back, per_row = parquet_format._unplanes(high, 2, np.uint32, first=1, out=low)
    assert back.tolist() == values.tolist() and per_row.tolist() == [0, 2, 0, 4]
    # without them, the bytes below ``first`` are zeros (the loop once left them uninitialized)
    many32 = rng.integers(0, 2**32, size=5000, dtype=np.uint32)
    back, _ = parquet_format._unplanes(parquet_format._planes(many32, 3, cuts, first=1), 3, np.uint32, first=1)
    assert np.array_equal(back, many32 & np.uint32(0xFFFFFF00))
    with pytest.raises(CorruptShardError, match="byte planes hold 6 values where the shard's other planes hold 5"):
        parquet_format._unplanes(high, 2, np.uint32, first=1, out=low[:5])
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


@pytest.mark.parametrize(
    "meta",
    [
        {"entry_planes": {"ids": 5}},  # wider than the values
        {"entry_planes": {"labels": 2}},  # not an entry column
        {"entry_planes": {"ids": 2}, "raw_planes": {"ids": 2}},  # no plane left for the ids column
        {"entry_planes": {"ids": 2}, "raw_planes": {"logprobs": 1}},  # raw planes of a column without planes
        {"entry_planes": {"ids": 2, "logprobs": 2}, "nibbles": ["logprobs"]},  # both planes and nibbles
        {"nibbles": ["ids"]},  # ids are never nibbles
        {"entry_planes": {"ids": "two"}},
        {"entry_planes": ["ids"]},
    ],
)
def test_an_impossible_layout_in_a_shards_metadata_is_corrupt(meta: dict) -> None:
    with pytest.raises(CorruptShardError, match="layout"):
        parquet_format._EntryLayout.from_metadata(meta)


def test_a_shard_whose_columns_disagree_is_reported_with_its_name(tmp_path, rng) -> None:
    """A decode error deep in the layout (here: a nibble column whose escapes went missing) names the shard."""
    spec = Spec(method="topk", k=40)
    _write(tmp_path / "ds", spec, 300, rng)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    shard = tmp_path / "ds" / manifest["shards"][0]["path"]
    table = pq.read_table(shard)
    index = table.column_names.index("logprobs_escapes")
    empty = pa.array([b""] * len(table), type=pa.large_binary())
    pq.write_table(
        table.set_column(index, pa.field("logprobs_escapes", pa.large_binary(), nullable=False), empty), shard
    )
    ds = open_dataset(tmp_path / "ds")
    with pytest.raises(CorruptShardError, match=f"shard {manifest['shards'][0]['path']}: nibble column holds"):
        ds[0]
