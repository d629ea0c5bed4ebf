"""open_dataset / DatasetWriter behaviour a user notices: lookups, errors, overwrite protection, remote URLs."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest

from logitstore import DatasetWriter, Spec, content_key, open_dataset
from logitstore.errors import (
    DatasetExistsError,
    DatasetNotFoundError,
    InvalidInputError,
    SequenceNotFoundError,
)
from tests.conftest import synthetic_record, teacher

SPEC = Spec(method="sample", n=20, seed=9)


def _write(root, rng, n=6, backend="parquet", **kw):
    records = [synthetic_record(SPEC, rng, seq_id=i, length=12 + i, vocab_size=1000) for i in range(n)]
    with DatasetWriter(root, spec=SPEC, teacher=teacher(1000), backend=backend, **kw) as w:
        for r in records:
            w.write(r)
    return records


def test_lookup_by_key_and_tokens(tmp_path, rng) -> None:
    records = _write(tmp_path / "ds", rng)
    ds = open_dataset(tmp_path / "ds")
    r = records[4]
    assert ds.get_by_key(r.key).seq_id == 4
    assert ds.get_by_key(r.key.hex()).seq_id == 4
    assert ds.get_by_tokens(r.input_ids.tolist()).seq_id == 4
    missing = content_key([1, 2, 3])
    assert ds.find_key(missing) == []
    with pytest.raises(SequenceNotFoundError, match=f"no sequence with content key {missing.hex()}"):
        ds.get_by_key(missing)


def test_duplicate_sequences_are_all_indexed(tmp_path, rng) -> None:
    a = synthetic_record(SPEC, rng, seq_id=0, length=5, vocab_size=1000)
    b = synthetic_record(SPEC, rng, seq_id=1, length=5, vocab_size=1000)
    dup = type(a)(**{**a.__dict__, "seq_id": 2})
    with DatasetWriter(tmp_path / "ds", spec=SPEC, teacher=teacher(1000)) as w:
        for r in (a, b, dup):
            w.write(r)
    assert open_dataset(tmp_path / "ds").find_key(a.key) == [0, 2]


def test_bad_seq_ids(tmp_path, rng) -> None:
    _write(tmp_path / "ds", rng)
    ds = open_dataset(tmp_path / "ds")
    for bad in (-1, 6, 10**12):
        with pytest.raises(SequenceNotFoundError, match=r"outside 0\.\.5"):
            ds[bad]
    with pytest.raises(SequenceNotFoundError, match="must be an integer"):
        ds["3"]  # type: ignore[index]
    assert ds[np.int64(2)].seq_id == 2
    assert isinstance(SequenceNotFoundError("x"), (KeyError, IndexError))


def test_missing_or_incomplete_dataset(tmp_path, rng) -> None:
    with pytest.raises(DatasetNotFoundError, match="no complete dataset.*build it with"):
        open_dataset(tmp_path / "nothing")
    (tmp_path / "job" / "_job").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="has not finished here; re-run it to resume"):
        open_dataset(tmp_path / "job")


def test_complete_dataset_is_not_overwritten_without_the_flag(tmp_path, rng) -> None:
    _write(tmp_path / "ds", rng)
    before = (tmp_path / "ds" / "manifest.json").read_bytes()
    with pytest.raises(DatasetExistsError, match="already exists.*overwrite=True"):
        _write(tmp_path / "ds", rng)
    assert (tmp_path / "ds" / "manifest.json").read_bytes() == before
    records = _write(tmp_path / "ds", rng, n=2, overwrite=True)
    ds = open_dataset(tmp_path / "ds")
    assert len(ds) == 2 and ds[1].equals(records[1], logprob_atol=0.02)


def test_writer_rejects_bad_records_with_the_reason(tmp_path, rng) -> None:
    r = synthetic_record(SPEC, rng, seq_id=0, length=8, vocab_size=1000)
    cases = [
        ({"seq_id": 3}, "expected 0, got 3"),
        ({"key": bytes(16)}, "key is not blake2b-128"),
        ({"counts": r.counts * 2}, r"counts must be in \[1, n=20\]|sum to"),
        ({"ids": np.full_like(r.ids, 5000)}, r"token ids must be in \[0, 1000\)"),
        ({"lse": r.lse[:3]}, "lse has 3 positions for 8 input_ids"),
        ({"nnz": r.nnz[:3]}, r"nnz has shape \(3,\), expected \(8,\)"),
        ({"counts": None}, "counts are missing"),
    ]
    for i, (change, match) in enumerate(cases):
        bad = type(r)(**{**r.__dict__, **change})
        with pytest.raises(InvalidInputError, match=match):
            with DatasetWriter(tmp_path / f"ds{i}", spec=SPEC, teacher=teacher(1000)) as w:
                w.write(bad)
        assert not (tmp_path / f"ds{i}" / "manifest.json").exists()


def test_rank_order_is_enforced(tmp_path, rng) -> None:
    spec = Spec(method="topk", k=5)
    r = synthetic_record(spec, rng, seq_id=0, length=4, vocab_size=100)
    bad = type(r)(**{**r.__dict__, "logprobs": r.logprobs[::-1].copy()})
    with pytest.raises(InvalidInputError, match="rank order"):
        with DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(100)) as w:
            w.write(bad)


def test_writing_to_a_remote_url_is_refused(rng) -> None:
    with pytest.raises(InvalidInputError, match="writers need a local or mounted path"):
        DatasetWriter("memory://bucket/ds", spec=SPEC, teacher=teacher(1000))


@pytest.mark.parametrize("backend", ["parquet", "zarr"])
def test_read_through_fsspec_urls(tmp_path, rng, backend) -> None:
    records = _write(tmp_path / "ds", rng, backend=backend)
    via_file_url = open_dataset(f"file://{tmp_path / 'ds'}", verify=True)
    assert via_file_url[3].equals(records[3], logprob_atol=0.02)
    mem = fsspec.filesystem("memory")
    mem.put(str(tmp_path / "ds"), f"/copies/{backend}", recursive=True)
    remote = open_dataset(f"memory://copies/{backend}", verify=True)
    assert remote[5].equals(records[5], logprob_atol=0.02)
    assert remote.get_by_key(records[2].key).seq_id == 2


def _child_reads(ds, expected, seed, queue) -> None:
    rng = np.random.default_rng(seed)
    bad = 0
    for i in rng.integers(0, len(expected), size=150):
        try:
            ok = ds[int(i)].equals(expected[int(i)], logprob_atol=0.02)
        except Exception:  # noqa: BLE001 -- any failure in the child counts
            ok = False
        bad += not ok
    queue.put(bad)


@pytest.mark.parametrize("backend", ["parquet", "zarr"])
def test_forked_readers_do_not_share_file_state(tmp_path, rng, monkeypatch, backend) -> None:
    """DataLoader workers fork after the parent has read: each child must reopen its own handles."""
    import multiprocessing as mp

    from logitstore.formats import base

    monkeypatch.setattr(base, "FLUSH_ENTRIES", 500)  # many row groups / chunks, so reads seek around
    records = _write(tmp_path / "ds", rng, n=40, backend=backend)
    ds = open_dataset(tmp_path / "ds")
    assert ds[0].equals(records[0], logprob_atol=0.02)  # the parent opens the shard before forking
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_child_reads, args=(ds, records, s, queue)) for s in range(3)]
    for c in children:
        c.start()
    results = [queue.get(timeout=60) for _ in children]
    for c in children:
        c.join(timeout=60)
    assert results == [0, 0, 0]


def test_batch_validation_names_the_record_and_its_position(tmp_path, rng) -> None:
    records = [synthetic_record(SPEC, rng, seq_id=i, length=10, vocab_size=1000) for i in range(4)]
    bad = records[2]
    lp = bad.logprobs.copy()
    lp[-1] = 0.0  # the last position now holds more than all the mass
    records[2] = type(bad)(**{**bad.__dict__, "logprobs": lp})
    with pytest.raises(InvalidInputError, match=r"record seq_id=2: the stored probabilities of position 9 sum to"):
        with DatasetWriter(tmp_path / "ds", spec=SPEC, teacher=teacher(1000)) as w:
            for r in records:
                w.write(r)


def test_rewriting_after_a_crashed_writer_leaves_no_stale_shards(tmp_path, rng) -> None:
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "ds", spec=SPEC, teacher=teacher(1000), shard_entries=100) as w:
            for i in range(6):
                w.write(synthetic_record(SPEC, rng, seq_id=i, length=12, vocab_size=1000))
            raise RuntimeError("crash")
    assert len(list((tmp_path / "ds" / "shards").iterdir())) >= 2
    _write(tmp_path / "ds", rng, n=1)
    from logitstore.verify import verify_dataset

    assert verify_dataset(tmp_path / "ds").ok


def test_unknown_url_protocol_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="cannot open 'nosuchproto://x'"):
        open_dataset("nosuchproto://x")


@pytest.mark.parametrize("backend", ["parquet", "zarr"])
def test_block_is_what_a_read_decodes_anyway(tmp_path, rng, monkeypatch, backend) -> None:
    import pyarrow.parquet as pq

    monkeypatch.setattr("logitstore.formats.base.FLUSH_ENTRIES", 300)  # a row group every few sequences
    _write(tmp_path / "ds", rng, n=12, backend=backend, shard_entries=1200)
    ds = open_dataset(tmp_path / "ds")
    assert len(ds.manifest.shards) > 1
    for shard in ds.manifest.shards:
        if backend == "parquet":
            metadata = pq.ParquetFile(tmp_path / "ds" / shard.path).metadata
            rows = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
            assert len(rows) > 1
            bounds = shard.first_seq + np.concatenate([[0], np.cumsum(rows)])
        else:  # zarr reads by chunk: a block is the one sequence
            bounds = np.arange(shard.first_seq, shard.first_seq + shard.num_sequences + 1)
        for seq_id in range(shard.first_seq, shard.first_seq + shard.num_sequences):
            g = int(np.searchsorted(bounds, seq_id, side="right")) - 1
            assert ds.block(seq_id) == (bounds[g], bounds[g + 1])
            assert ds.read_range(*ds.block(seq_id))[seq_id - bounds[g]].equals(ds[seq_id])
    with pytest.raises(SequenceNotFoundError, match="seq_id 12 is outside 0..11"):
        ds.block(12)
