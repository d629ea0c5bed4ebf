"""The Zarr backend writes the store's files itself: they must be the files zarr-python writes for the same arrays,
byte for byte (zarr-python is the reader, and the oracle here), and deterministic."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from logitstore import DatasetWriter, Spec, open_dataset
from logitstore.errors import CorruptShardError
from logitstore.formats import zarr as zarr_format
from tests.conftest import synthetic_record, teacher


def _zarr_python_copy(shard: Path, out: Path, spec: Spec) -> None:
    """The store zarr-python writes for ``shard``'s arrays, chunking and attributes, with the Blosc configuration
    the format documents (docs/FORMAT.md), built here rather than read from the shard."""
    source = zarr.open_group(str(shard), mode="r", zarr_format=3)
    group = zarr.open_group(str(out), mode="w", zarr_format=3)
    group.attrs.update(dict(source.attrs))
    gaps = spec.entry_order == "rank" and not spec.encoding.lossless
    for name, array in source.arrays():
        chunk_bytes = array.chunks[0] * array.dtype.itemsize * int(np.prod(array.shape[1:]))
        blosc = BloscCodec(
            typesize=array.dtype.itemsize,
            cname="zstd",
            clevel=1,
            shuffle="bitshuffle" if gaps and name == "logprobs" else "shuffle",
            blocksize=min(1 << 20, chunk_bytes),
        )
        copy = group.create_array(
            name, shape=array.shape, dtype=array.dtype, chunks=array.chunks, compressors=[blosc], fill_value=0
        )
        copy[...] = array[...]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "spec",
    [
        Spec(method="topk", k=16, label_logprob=True, logit_stats=True),
        Spec(method="sample", n=12),
        dataclasses.replace(Spec(method="topp", p=0.9, k=30), encoding=Spec(method="dense").encoding),
    ],
)
def test_shards_are_the_files_zarr_python_writes(tmp_path, monkeypatch, rng, spec: Spec) -> None:
    """Whole chunks, a partial last chunk (padded), 2-D keys (``c/i/0``), every dtype, metadata documents."""
    monkeypatch.setattr(zarr_format, "_CHUNKS", {"seq": 7, "input": 50, "token": 50, "label": 45, "entry": 400})
    records = [
        synthetic_record(spec, rng, seq_id=i, length=int(rng.integers(1, 40)), vocab_size=5000) for i in range(30)
    ]
    with DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(5000), backend="zarr") as w:
        for r in records:
            w.write(r)
    ds = open_dataset(tmp_path / "ds", verify=True)
    shard = tmp_path / "ds" / ds.manifest.shards[0].path
    assert len(list((shard / "ids" / "c").iterdir())) > 2 and (shard / "keys" / "c" / "0" / "0").is_file()
    _zarr_python_copy(shard, tmp_path / "oracle", spec)
    ours, theirs = _files(shard), _files(tmp_path / "oracle")
    blosc = {n: json.loads(ours[f"{n}/zarr.json"])["codecs"][-1]["configuration"] for n in ("ids", "logprobs")}
    gaps = spec.entry_order == "rank" and not spec.encoding.lossless  # bit shuffle for q16 gaps only
    assert (
        blosc["logprobs"]["shuffle"] == ("bitshuffle" if gaps else "shuffle") and blosc["ids"]["shuffle"] == "shuffle"
    )
    assert blosc["ids"]["blocksize"] == 400 * 4  # a whole (tiny) chunk: below BLOSC_BLOCK_BYTES
    assert sorted(ours) == sorted(theirs)
    for name in ours:  # metadata as documents (zarr-python may add keys in later releases), chunks as bytes
        if name.endswith("zarr.json"):
            assert json.loads(ours[name]) == json.loads(theirs[name]), name
        else:
            assert ours[name] == theirs[name], name
    assert all(ds[r.seq_id].equals(r, logprob_atol=spec.encoding.error_bound) for r in records)


def test_shards_written_with_blosc_own_blocks_and_byte_shuffle_still_read(tmp_path, monkeypatch, rng) -> None:
    """Shards written before 2026-12-04 declare ``blocksize: 0`` and byte shuffle for every array; the reader
    takes each array's codec configuration from its ``zarr.json``."""
    spec = Spec(method="topk", k=16)
    monkeypatch.setattr(zarr_format, "BLOSC_BLOCK_BYTES", 0)
    monkeypatch.setattr(zarr_format, "_shuffle", lambda name, spec: "shuffle")
    records = [synthetic_record(spec, rng, seq_id=i, length=30, vocab_size=5000) for i in range(5)]
    with DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(5000), backend="zarr") as w:
        for r in records:
            w.write(r)
    monkeypatch.undo()
    ds = open_dataset(tmp_path / "ds", verify=True)
    logprobs = json.loads((tmp_path / "ds" / ds.manifest.shards[0].path / "logprobs" / "zarr.json").read_text())
    assert logprobs["codecs"][-1]["configuration"] == {  # q16 gaps: uint16
        "typesize": 2,
        "cname": "zstd",
        "clevel": zarr_format.BLOSC_LEVEL,
        "shuffle": "shuffle",
        "blocksize": 0,
    }
    assert all(ds[r.seq_id].equals(r, logprob_atol=spec.encoding.error_bound) for r in records)


def test_chunks_of_fill_values_are_not_stored_and_big_chunks_are_deterministic(tmp_path) -> None:
    """As zarr-python: a chunk of zeros is not stored (reads give the fill value). A chunk of many Blosc blocks
    is the same bytes on every write (Blosc's own threads would order the blocks as they finish)."""
    values = np.arange(3 << 20, dtype=np.uint32) * np.uint32(2654435761)  # ~4 MB chunks, many Blosc blocks
    values[1 << 20 : 2 << 20] = 0
    written = []
    for attempt in range(2):
        writer = zarr_format._ChunkWriter()
        array = zarr_format._ChunkedArray(tmp_path / f"a{attempt}", values[:1], 1 << 20, "shuffle", writer)
        array.append(values[: 5 << 18])
        array.append(values[5 << 18 :])
        array.finish()
        writer.close()
        written.append(_files(tmp_path / f"a{attempt}"))
    assert written[0] == written[1] and sorted(written[0]) == ["c/0", "c/2", "zarr.json"]
    back = zarr.open_array(str(tmp_path / "a0"), mode="r")
    assert np.array_equal(back[...], values)
    blosc = BloscCodec(cname="zstd", clevel=zarr_format.BLOSC_LEVEL, shuffle="shuffle", blocksize=1 << 20)
    oracle = zarr.create_array(
        str(tmp_path / "oracle"),
        shape=values.shape,
        dtype=values.dtype,
        chunks=(1 << 20,),
        compressors=[blosc],
        fill_value=0,
    )
    oracle[...] = values
    theirs = _files(tmp_path / "oracle")
    assert {k: v for k, v in written[0].items() if k != "zarr.json"} == {
        k: v for k, v in theirs.items() if k != "zarr.json"
    }


def test_a_failed_chunk_write_fails_the_shard_and_leaves_no_shard(tmp_path, monkeypatch, rng) -> None:
    """A chunk write fails on the background thread: the error reaches the caller and the shard is removed."""
    spec = Spec(method="topk", k=4)

    def fail(self, index, rows):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zarr_format._ChunkedArray, "_write_chunk", fail)
    with pytest.raises(OSError, match="No space left"):
        with DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(300), backend="zarr") as w:
            w.write(synthetic_record(spec, rng, seq_id=0, length=10, vocab_size=300))
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert not list((tmp_path / "ds").rglob("*.zarr")) and not list((tmp_path / "ds").rglob("*.partial"))


def test_a_failed_chunk_write_is_raised_by_every_later_submit_and_queued_writes_are_bounded(monkeypatch) -> None:
    """The writer does not run a shard's whole encode past a failed write, nor queue without bound."""
    monkeypatch.setattr(zarr_format, "_MAX_IN_FLIGHT", 2)
    writer = zarr_format._ChunkWriter()
    done = []

    def fail() -> None:
        raise OSError(28, "No space left on device")

    writer.submit(fail)
    writer.submit(done.append, 1)
    with pytest.raises(OSError, match="No space left"):
        writer.submit(done.append, 2)
    for later in (lambda: writer.submit(done.append, 3), writer.close):  # the failure sticks: nothing more is written
        with pytest.raises(OSError, match="No space left"):
            later()
    writer.close(cancel=True)  # an abort raises nothing
    assert 2 not in done and 3 not in done


def test_a_shard_missing_an_array_document_is_corrupt(tmp_path, rng) -> None:
    spec = Spec(method="topk", k=4)
    with DatasetWriter(tmp_path / "ds", spec=spec, teacher=teacher(300), backend="zarr") as w:
        w.write(synthetic_record(spec, rng, seq_id=0, length=10, vocab_size=300))
    ds = open_dataset(tmp_path / "ds")
    (tmp_path / "ds" / ds.manifest.shards[0].path / "lengths" / "zarr.json").unlink()
    with pytest.raises(CorruptShardError, match=ds.manifest.shards[0].path):
        open_dataset(tmp_path / "ds")[0]
