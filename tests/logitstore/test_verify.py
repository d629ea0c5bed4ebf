"""Corruption is found and named: by `logitstore verify`, and by a reader asked to check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from logitstore import DatasetWriter, Spec, open_dataset
from logitstore.cli import main
from logitstore.errors import ChecksumMismatchError, CorruptShardError
from logitstore.formats import parquet as parquet_format
from logitstore.fs import digest, resolve
from logitstore.verify import verify_dataset
from tests.conftest import synthetic_record, teacher

SPEC = Spec(method="topk", k=8)


def _build(root: Path, rng, backend: str) -> None:
    with DatasetWriter(root, spec=SPEC, teacher=teacher(500), backend=backend, shard_entries=2000) as w:
        for i in range(12):
            w.write(synthetic_record(SPEC, rng, seq_id=i, length=30, vocab_size=500))


def _largest_file(path: Path) -> Path:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.fixture(params=["parquet", "zarr"])
def dataset(request, tmp_path, rng) -> Path:
    root = tmp_path / "ds"
    _build(root, rng, request.param)
    return root


def test_sound_dataset_verifies(dataset: Path, capsys) -> None:
    assert main(["verify", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "12 sequence(s)" in out
    assert verify_dataset(dataset).sequences_checked == 12


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_shard_is_named(dataset: Path, damage: str, capsys) -> None:
    shard = json.loads((dataset / "manifest.json").read_text())["shards"][1]["path"]
    victim = _largest_file(dataset / shard)
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    else:
        data = data[: len(data) // 2]
    victim.write_bytes(bytes(data))

    assert main(["verify", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert f"FAIL {shard}" in err and "corrupt" in err

    ds = open_dataset(dataset, verify=True)
    assert ds[0].seq_id == 0  # other shards still read
    first_seq = ds.manifest.shards[1].first_seq
    with pytest.raises(ChecksumMismatchError, match=shard):
        ds[first_seq]


def test_truncated_parquet_shard_without_verification_is_still_named(tmp_path, rng) -> None:
    _build(tmp_path / "ds", rng, "parquet")
    shard = tmp_path / "ds" / "shards" / "00000.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CorruptShardError, match="shards/00000.parquet cannot be read"):
        open_dataset(tmp_path / "ds")[0]


def test_missing_shard_and_bad_key_index(dataset: Path, capsys) -> None:
    shard = json.loads((dataset / "manifest.json").read_text())["shards"][0]["path"]
    target = dataset / shard
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    else:
        target.unlink()
    (dataset / "keys.idx").write_bytes(b"nonsense")
    assert main(["verify", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert f"{shard}: {shard} is missing" in err
    assert "keys.idx" in err


def test_unknown_format_version_is_refused(dataset: Path, capsys) -> None:
    m = json.loads((dataset / "manifest.json").read_text())
    m["format_version"] = 99
    (dataset / "manifest.json").write_text(json.dumps(m))
    assert main(["verify", str(dataset)]) == 1
    assert "format_version 99 is not supported" in capsys.readouterr().err
    assert main(["inspect", str(dataset)]) == 2
    assert "reads format_version 1" in capsys.readouterr().err


def test_deep_verify_finds_broken_invariants_behind_a_valid_checksum(tmp_path, rng, capsys) -> None:
    """A shard rewritten with an out-of-range id and a matching checksum passes the checksum but not the
    structural check."""
    root = tmp_path / "ds"
    _build(root, rng, "parquet")
    manifest = json.loads((root / "manifest.json").read_text())
    rel = manifest["shards"][0]["path"]
    shard = pq.ParquetFile(root / rel)
    layout = parquet_format._EntryLayout.from_metadata(json.loads(shard.schema_arrow.metadata[b"logitstore"]))
    table = shard.read()
    values, per_row = layout.read(table, "ids")  # byte planes (2 per id at V = 500), the low one raw
    values[3] = 10_000  # vocab is 500
    for name, column in layout.write("ids", values, np.concatenate([[0], np.cumsum(per_row)])).items():
        table = table.set_column(table.column_names.index(name), name, column)
    shard.close()
    pq.write_table(table, root / rel)
    nbytes, sha = digest(*resolve(root / rel))
    manifest["shards"][0].update(nbytes=nbytes, sha256=sha)
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", "--quick", str(root)]) == 0
    assert main(["verify", str(root)]) == 1
    assert "token ids must be in [0, 500)" in capsys.readouterr().err


def test_unlisted_shard_is_reported(dataset: Path, capsys) -> None:
    (dataset / "shards" / "99999.parquet").write_bytes(b"stray")
    assert main(["verify", str(dataset)]) == 1
    assert "not listed in the manifest" in capsys.readouterr().err


def test_inspect(dataset: Path, capsys) -> None:
    assert main(["inspect", str(dataset)]) == 0
    text = capsys.readouterr().out
    assert "topk(k=8)" in text and "bytes/token" in text and "kept mass" in text
    assert main(["inspect", "--json", str(dataset)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sequences"] == 12 and summary["tokens"] == 360
    assert summary["mean_entries_per_position"] == 8.0
    assert 0 < summary["mean_kept_mass"] <= 1 and summary["bytes_per_token"] > 0
    assert os.path.samefile(summary["location"], dataset)


def test_cli_error_for_missing_path(tmp_path, capsys) -> None:
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    assert "no complete dataset" in capsys.readouterr().err
