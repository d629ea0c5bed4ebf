"""``verify``: every checksum and every structural invariant of a dataset, each problem named by its file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from logitstore import codec
from logitstore.dataset import Dataset
from logitstore.errors import LogitStoreError
from logitstore.fs import resolve
from logitstore.keyindex import KeyIndex
from logitstore.keys import content_key
from logitstore.manifest import MANIFEST_NAME

#: Sequences decoded at a time while checking a shard.
_STEP = 64


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class VerifyReport:
    location: str
    problems: list[Problem] = field(default_factory=list)
    shards_checked: int = 0
    sequences_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(location: str | os.PathLike[str], *, deep: bool = True) -> VerifyReport:
    """Check the manifest, the size and sha256 of every shard and of the key index, and (``deep``) decode every
    record to check its invariants: contiguous seq_ids, keys equal to the hash of input_ids, nnz and id ranges,
    entry order, counts summing to n, and per-shard totals equal to the manifest's."""
    report = VerifyReport(location=os.fspath(location))
    try:
        ds = Dataset(location, verify=True)
    except LogitStoreError as exc:
        report.problems.append(Problem(MANIFEST_NAME, str(exc)))
        return report
    with ds:
        m = ds.manifest
        fs, root = resolve(location)
        keys_by_shard: list[np.ndarray] = []
        for i, info in enumerate(m.shards):
            try:
                reader = ds.shard_reader(i)  # checks size and sha256 first
                keys = reader.keys()
                keys_by_shard.append(keys)
                if deep:
                    _check_shard(ds, i, keys, report)
                report.shards_checked += 1
            except LogitStoreError as exc:
                report.problems.append(Problem(info.path, str(exc)))
        try:
            index = ds.key_index
            _check_key_index(index, keys_by_shard, len(ds), report, complete=len(keys_by_shard) == len(m.shards))
        except LogitStoreError as exc:
            report.problems.append(Problem(m.key_index.path, str(exc)))
        listed = {s.path for s in m.shards}
        shards_dir = f"{root}/shards"
        if fs.isdir(shards_dir):
            for entry in fs.ls(shards_dir, detail=False):
                rel = "shards/" + entry.rstrip("/").rsplit("/", 1)[-1]
                if rel not in listed and not rel.endswith(".partial"):
                    report.problems.append(Problem(rel, "shard file is not listed in the manifest"))
    return report


def _check_shard(ds: Dataset, shard: int, keys: np.ndarray, report: VerifyReport) -> None:
    info = ds.manifest.shards[shard]
    reader = ds.shard_reader(shard)
    spec, vocab = ds.manifest.spec, ds.manifest.vocab_size
    tokens = entries = 0
    for start in range(0, len(reader), _STEP):
        records = reader.read_range(start, min(start + _STEP, len(reader)))
        for j, r in enumerate(records):
            if r.key != keys[start + j].tobytes() or r.key != content_key(r.input_ids):
                raise _corrupt(f"seq_id {r.seq_id}: key does not match blake2b-128 of its input_ids")
        try:
            codec.validate(records, spec, vocab)
        except LogitStoreError as exc:
            raise _corrupt(str(exc)) from None
        tokens += sum(len(r) for r in records)
        entries += sum(r.num_entries for r in records)
        report.sequences_checked += len(records)
    if tokens != info.num_tokens or entries != info.num_entries:
        raise _corrupt(
            f"holds {tokens} tokens and {entries} entries, manifest says {info.num_tokens} and {info.num_entries}"
        )


def _check_key_index(index: KeyIndex, keys: list[np.ndarray], n: int, report: VerifyReport, *, complete: bool) -> None:
    if len(index) != n:
        report.problems.append(Problem("keys.idx", f"holds {len(index)} keys for {n} sequences"))
        return
    if not complete:
        return
    all_keys = np.concatenate(keys) if keys else np.zeros((0, 16), np.uint8)
    expected = all_keys[index.seq_ids]
    if not np.array_equal(expected, index.keys):
        report.problems.append(Problem("keys.idx", "does not match the keys stored in the shards"))


def _corrupt(message: str) -> LogitStoreError:
    from logitstore.errors import CorruptShardError

    return CorruptShardError(message)
