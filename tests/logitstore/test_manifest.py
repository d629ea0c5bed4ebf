from __future__ import annotations

import json

import pytest

from logitstore.errors import InvalidInputError, ManifestVersionError
from logitstore.manifest import FileInfo, Manifest, ShardInfo, TeacherInfo, TokenizerInfo
from logitstore.spec import Spec


def _manifest(**kw) -> Manifest:
    shards = (
        ShardInfo(
            path="shards/00000.parquet",
            first_seq=0,
            num_sequences=3,
            num_tokens=30,
            num_entries=300,
            kept_mass_sum=27.0,
            nbytes=1000,
            sha256="a" * 64,
        ),
        ShardInfo(
            path="shards/00001.parquet",
            first_seq=3,
            num_sequences=2,
            num_tokens=20,
            num_entries=200,
            kept_mass_sum=18.0,
            nbytes=500,
            sha256="b" * 64,
        ),
    )
    args = {
        "name": "ds",
        "backend": "parquet",
        "spec": Spec(method="topk", k=10),
        "teacher": TeacherInfo(name="qwen", vocab_size=152064, dtype="bfloat16"),
        "tokenizer": TokenizerInfo(name="qwen", vocab_size=151936, vocab_hash="x", special_token_ids={"eos": 2}),
        "shards": shards,
        "key_index": FileInfo(path="keys.idx", nbytes=136, sha256="c" * 64),
    }
    args.update(kw)
    return Manifest(**args)


def test_json_round_trip_and_stats() -> None:
    m = _manifest()
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert m.num_sequences == 5 and m.num_tokens == 50
    assert m.stats.bytes_per_token == pytest.approx((1500 + 136) / 50)
    assert m.stats.mean_kept_mass == pytest.approx(0.9)
    assert m.stats.mean_entries_per_position == pytest.approx(10)
    assert again.teacher.vocab_size == 152064 and again.tokenizer.vocab_size == 151936


def test_unknown_version_names_both_versions() -> None:
    d = _manifest().to_dict()
    d["format_version"] = 7
    with pytest.raises(ManifestVersionError, match="format_version 7 is not supported.*reads format_version 1 and 2"):
        Manifest.from_dict(d)


@pytest.mark.parametrize("version", [1, 2])
def test_every_readable_version_is_read_and_kept(version: int) -> None:
    """format_version 2 (Parquet's raw-plane and nibble columns) did not change the manifest: version 1 manifests
    read as they are and keep their version."""
    d = _manifest().to_dict()
    d["format_version"] = version
    assert Manifest.from_dict(d).format_version == version
    assert json.loads(Manifest.from_dict(d).to_json())["format_version"] == version


def test_malformed_manifests() -> None:
    d = _manifest().to_dict()
    del d["teacher"]
    with pytest.raises(InvalidInputError, match="missing the required field 'teacher'"):
        Manifest.from_dict(d)
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        Manifest.from_json("{")
    d = _manifest().to_dict()
    d["shards"][1]["first_seq"] = 4
    with pytest.raises(InvalidInputError, match="starts at seq_id 4, expected 3"):
        Manifest.from_dict(json.loads(json.dumps(d)))
    with pytest.raises(InvalidInputError, match="unknown backend 'hdf5'"):
        _manifest(backend="hdf5")
