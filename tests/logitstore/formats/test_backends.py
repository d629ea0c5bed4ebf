"""One suite every backend must pass: exact round-trips of the logical record, random access, atomicity."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from logitstore import COMPACT, LOSSLESS, DatasetWriter, Record, Spec, open_dataset
from logitstore.errors import InvalidInputError
from logitstore.formats import WRITERS
from logitstore.formats import base as formats_base
from tests.conftest import synthetic_record, teacher

BACKENDS = ["parquet", "zarr"]


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    """A spec of any method and encoding, with or without each optional per-position field."""
    flags = {"label_logprob": draw(st.booleans()), "logit_stats": draw(st.booleans())}
    return dataclasses.replace(draw(method_specs()), **flags)


@st.composite
def method_specs(draw: st.DrawFn) -> Spec:
    method = draw(st.sampled_from(["topk", "topp", "sample", "dense"]))
    encoding = draw(
        st.sampled_from(
            [COMPACT, LOSSLESS, Spec(method="dense", encoding={"logprobs": "q16", "error_bound": 0.005}).encoding]
        )
    )
    seed = draw(st.integers(0, 2**64 - 1))
    if method == "topk":
        return Spec(method="topk", k=draw(st.integers(1, 200)), seed=seed, encoding=encoding)
    if method == "topp":
        k = draw(st.integers(1, 150))
        return Spec(
            method="topp",
            k=k,
            p=draw(st.floats(0.05, 1.0)),
            k_min=draw(st.integers(1, k)),
            seed=seed,
            encoding=encoding,
        )
    if method == "sample":
        return Spec(
            method="sample",
            n=draw(st.integers(1, 100)),
            seed=seed,
            encoding=encoding,
            proposal_temperature=draw(st.sampled_from([1.0, 0.7, 2.0])),
        )
    return Spec(method="dense", seed=seed, encoding=encoding)


@st.composite
def datasets(draw: st.DrawFn) -> tuple[Spec, int, list[int]]:
    """A spec, a vocabulary (often > 131,072) and sequence lengths with a bounded total entry count."""
    spec = draw(specs())
    if spec.method == "dense":
        vocab = draw(st.integers(2, 3000))
    else:
        vocab = draw(
            st.one_of(
                st.integers(max(2, spec.max_entries(10**9) if spec.method == "topk" else 2), 1000),
                st.integers(131_073, 300_000),
            )
        )
    per_pos = spec.max_entries(vocab)
    max_t = max(1, min(4096, 400_000 // per_pos))
    lengths = draw(st.lists(st.integers(1, max_t), min_size=1, max_size=4))
    return spec, vocab, lengths


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=datasets(), data_seed=st.integers(0, 2**32 - 1))
def test_round_trip_every_method(
    tmp_path_factory: pytest.TempPathFactory, backend: str, case: tuple[Spec, int, list[int]], data_seed: int
) -> None:
    spec, vocab, lengths = case
    rng = np.random.default_rng(data_seed)
    records = [
        synthetic_record(spec, rng, seq_id=i, length=t, vocab_size=vocab, neg_inf=True) for i, t in enumerate(lengths)
    ]
    root = tmp_path_factory.mktemp(backend) / "ds"
    with DatasetWriter(root, spec=spec, teacher=teacher(vocab), backend=backend, shard_entries=50_000) as w:
        for r in records:
            w.write(r)
    ds = open_dataset(root, verify=True)
    assert len(ds) == len(records)
    assert ds.manifest.num_tokens == sum(lengths)
    bound = spec.encoding.error_bound
    for r in records:
        got = ds[r.seq_id]
        assert got.equals(r, logprob_atol=bound), f"seq {r.seq_id} differs"
        assert got.lse.dtype == np.float32 and got.ids.dtype == np.int32 and got.nnz.dtype == np.int32
        assert (got.counts is None) == (spec.method != "sample")
        assert (got.label_logprob is None) != spec.label_logprob and (got.logit_std is None) != spec.logit_stats
        assert ds.get_by_key(r.key).equals(ds[ds.find_key(r.key)[0]])
    assert all(a.equals(b, logprob_atol=bound) for a, b in zip(ds.read_range(0, len(ds)), records, strict=True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_row_groups_and_shards(tmp_path, monkeypatch, rng, backend: str) -> None:
    """Records split over several shards and several flushes per shard still read back in order."""
    monkeypatch.setattr(formats_base, "FLUSH_ENTRIES", 300)
    from logitstore.formats import zarr as zarr_format

    # tiny Zarr chunks, so sequences span chunk boundaries and flushes end mid-chunk
    monkeypatch.setattr(zarr_format, "_CHUNKS", {"seq": 7, "input": 50, "token": 50, "entry": 400})
    spec = Spec(method="topk", k=16)
    records = [
        synthetic_record(spec, rng, seq_id=i, length=int(rng.integers(1, 40)), vocab_size=5000) for i in range(60)
    ]
    with DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(5000), backend=backend, shard_entries=2000) as w:
        for r in records:
            w.write(r)
    ds = open_dataset(tmp_path / "ds")
    assert len(ds.manifest.shards) > 3
    if backend == "zarr":
        first = tmp_path / "ds" / ds.manifest.shards[0].path
        assert len(list((first / "ids" / "c").iterdir())) > 1, "the entries should span several chunks"
    for i in rng.permutation(len(records)):
        assert ds[int(i)].equals(records[i], logprob_atol=spec.encoding.error_bound)
    assert [r.seq_id for r in ds] == list(range(60))
    assert [r.seq_id for r in ds.read_range(7, 45)] == list(range(7, 45))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compact_error_bound_is_tight_and_declared(tmp_path, rng, backend: str) -> None:
    """q16 stays inside the bound and actually uses it (a quantizer that is lossless would be mis-declared)."""
    spec = Spec(method="topk", k=64, encoding=COMPACT)
    records = [synthetic_record(spec, rng, seq_id=i, length=200, vocab_size=32000) for i in range(3)]
    with DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(32000), backend=backend) as w:
        for r in records:
            w.write(r)
    ds = open_dataset(tmp_path / "ds")
    err = max(float(np.max(np.abs(ds[r.seq_id].logprobs - r.logprobs))) for r in records)
    assert 0.5 * COMPACT.error_bound < err <= COMPACT.error_bound
    assert ds.manifest.spec.encoding.error_bound == COMPACT.error_bound


@pytest.mark.parametrize("backend", BACKENDS)
def test_shard_is_self_describing(tmp_path, rng, backend: str) -> None:
    """A lone shard names its spec and vocabulary, so it can be interpreted without the manifest."""
    import json

    import pyarrow.parquet as pq
    import zarr

    spec = Spec(method="sample", n=10, seed=5)
    with DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(777), backend=backend) as w:
        w.write(synthetic_record(spec, rng, seq_id=0, length=5, vocab_size=777))
    shard = tmp_path / "ds" / open_dataset(tmp_path / "ds").manifest.shards[0].path
    if backend == "parquet":
        meta = json.loads(pq.ParquetFile(shard).schema_arrow.metadata[b"logitstore"])
    else:
        meta = dict(zarr.open_group(str(shard), mode="r").attrs)["logitstore"]
    assert meta["vocab_size"] == 777 and Spec.from_dict(meta["spec"]) == spec


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_write_leaves_no_partial_shard_and_no_manifest(tmp_path, rng, backend: str) -> None:
    spec = Spec(method="topk", k=4)
    good = synthetic_record(spec, rng, seq_id=0, length=10, vocab_size=100)
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(100), backend=backend) as w:
            w.write(good)
            raise RuntimeError("boom")
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert list((tmp_path / "ds" / "shards").iterdir()) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_commit_that_fails_leaves_no_partial_shard_and_no_manifest(tmp_path, monkeypatch, rng, backend: str) -> None:
    """A shard whose commit fails (here: the fsync, as on a full or failing disk) is removed, also when the
    failure comes from the ``with`` block's own finish (it once left the ``.partial`` behind)."""

    def fail(path):  # type: ignore[no-untyped-def]
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(formats_base, "fsync_tree", fail)
    spec = Spec(method="topk", k=4)
    with pytest.raises(OSError, match="Input/output error"):
        with DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(100), backend=backend) as w:
            w.write(synthetic_record(spec, rng, seq_id=0, length=10, vocab_size=100))
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert list((tmp_path / "ds" / "shards").iterdir()) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_writer_whose_commit_failed_takes_nothing_more(tmp_path, monkeypatch, rng, backend: str) -> None:
    """After a failed commit a retry must not commit what was still pending as if it were the whole shard (the
    records flushed before the failure went with the temporary shard): the writers refuse, naming the shard."""
    monkeypatch.setattr(formats_base, "FLUSH_ENTRIES", 40)  # records flushed before the commit
    failures = iter([OSError(5, "Input/output error")])

    def fail_once(path):  # type: ignore[no-untyped-def]
        if (error := next(failures, None)) is not None:
            raise error

    monkeypatch.setattr(formats_base, "fsync_tree", fail_once)
    spec = Spec(method="topk", k=4)
    records = [synthetic_record(spec, rng, seq_id=i, length=10, vocab_size=100) for i in range(6)]
    writer = WRITERS[backend](tmp_path / "s", "shards/s", spec, 100, first_seq=0)
    for record in records[:5]:
        writer.write(record)
    with pytest.raises(OSError, match="Input/output error"):
        writer.commit()
    for retry in (lambda: writer.commit(), lambda: writer.write(records[5])):
        with pytest.raises(InvalidInputError, match="shard shards/s was already committed or aborted"):
            retry()
    assert list(tmp_path.iterdir()) == []

    failures = iter([OSError(5, "Input/output error")])
    with pytest.raises(InvalidInputError, match="failed to commit"):  # the with block's finish refuses too
        with DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(100), backend=backend, shard_entries=60) as w:
            w.write(records[0])
            with pytest.raises(OSError, match="Input/output error"):
                w.write(records[1])  # fills the first shard, whose commit fails
            for retry in (lambda: w.write(records[2]), w.finish):
                with pytest.raises(InvalidInputError, match=r"shard shards/00000\S* failed to commit \(OSError"):
                    retry()
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert list((tmp_path / "ds" / "shards").iterdir()) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_record_is_refused_when_written_and_loses_nothing(tmp_path, monkeypatch, rng, backend: str) -> None:
    """Records are validated as they arrive, not when a flush encodes them: a bad one is refused by its own write,
    naming it, and the writer takes the corrected record and finishes with everything written before."""
    monkeypatch.setattr(formats_base, "FLUSH_ENTRIES", 100)  # records pending across writes
    spec = Spec(method="topk", k=4)
    records = [synthetic_record(spec, rng, seq_id=i, length=10, vocab_size=100) for i in range(5)]

    def refuse_bad_versions_of(record: Record) -> None:
        where = f"seq_id={record.seq_id}"
        for bad, match in [
            (dataclasses.replace(record, ids=record.ids + 100), rf"{where}: token ids must be in \[0, 100\)"),
            (dataclasses.replace(record, nnz=record.nnz[:-1]), rf"{where}: nnz has shape \(9,\)"),
        ]:
            with pytest.raises(InvalidInputError, match=match):
                w.write(bad)

    # shards of two records: bad records arrive while a shard is open and right after one was committed
    with DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(100), backend=backend, shard_entries=80) as w:
        refuse_bad_versions_of(records[0])  # the very first record
        w.write(records[0])
        refuse_bad_versions_of(records[1])  # a shard is open
        w.write(records[1])
        refuse_bad_versions_of(records[2])  # the shard was just committed
        w.write(records[2])
        w.write(records[3])
        refuse_bad_versions_of(records[4])  # and then the dataset is finished without it
    ds = open_dataset(tmp_path / "ds", verify=True)
    assert [s.num_sequences for s in ds.manifest.shards] == [2, 2]
    assert all(ds[r.seq_id].equals(r, logprob_atol=spec.encoding.error_bound) for r in records[:4])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_writer_whose_flush_failed_half_way_takes_nothing_more(tmp_path, monkeypatch, rng, backend: str) -> None:
    """A flush inside write() that appended its columns and then failed must not leave those records pending: a
    later commit would append them again and commit a shard holding them twice under a valid checksum."""
    monkeypatch.setattr(formats_base, "FLUSH_ENTRIES", 40)  # each 10-token top-4 record flushes
    cls = WRITERS[backend]
    append, failures = cls._write_columns, iter([OSError(28, "No space left on device")])

    def append_then_fail(self, cols):  # type: ignore[no-untyped-def]
        append(self, cols)
        if (error := next(failures, None)) is not None:
            raise error

    monkeypatch.setattr(cls, "_write_columns", append_then_fail)
    spec = Spec(method="topk", k=4)
    records = [synthetic_record(spec, rng, seq_id=i, length=10, vocab_size=100) for i in range(3)]
    writer = cls(tmp_path / "s", "shards/s", spec, 100, first_seq=0)
    with pytest.raises(OSError, match="No space left"):
        writer.write(records[0])
    for retry in (lambda: writer.write(records[1]), writer.commit):
        with pytest.raises(InvalidInputError, match="shard shards/s was already committed or aborted"):
            retry()
    assert list(tmp_path.iterdir()) == []

    failures = iter([None, OSError(28, "No space left on device")])  # the second record's flush fails
    w = DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(100), backend=backend)
    w.write(records[0])
    with pytest.raises(OSError, match="No space left"):
        w.write(records[1])
    for retry in (lambda: w.write(records[2]), w.finish):
        with pytest.raises(InvalidInputError, match=r"shard shards/00000\S* failed to write seq_id 1 \(OSError"):
            retry()
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert list((tmp_path / "ds" / "shards").iterdir()) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_records_round_trip(tmp_path, rng, backend: str) -> None:
    """A sequence classifier stores one position (the class distribution) for a whole input sequence."""
    spec = Spec(method="dense", encoding=LOSSLESS)
    records = []
    for i in range(5):
        one = synthetic_record(spec, rng, seq_id=i, length=1, vocab_size=10)
        tokens = rng.integers(0, 1000, size=int(rng.integers(1, 30))).astype(np.int32)
        from logitstore import content_key

        records.append(type(one)(**{**one.__dict__, "input_ids": tokens, "key": content_key(tokens)}))
    with DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(10), backend=backend) as w:
        for r in records:
            w.write(r)
    ds = open_dataset(tmp_path / "ds", verify=True)
    for r in records:
        got = ds[r.seq_id]
        assert len(got) == 1 and got.equals(r)
    assert ds.get_by_tokens(records[3].input_ids).seq_id == 3
