"""``verify``: every checksum and every structural invariant of a dataset, each problem named by its file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from logitstore import codec
from logitstore.audit import audit_positions, check_file, iter_audit
from logitstore.dataset import Dataset
from logitstore.errors import LogitStoreError
from logitstore.fs import resolve
from logitstore.keyindex import KeyIndex
from logitstore.keys import content_key
from logitstore.manifest import AUDIT_DIR, MANIFEST_NAME

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
    """Check the manifest, the size and sha256 of every shard, of the key index and of the audit sidecars, and
    (``deep``) decode every record to check its invariants: contiguous seq_ids, keys equal to the hash of input_ids,
    nnz and id ranges, entry order, counts summing to n, and per-shard totals equal to the manifest's; and every
    audit row: the positions the seed picks, one normalized distribution over the vocabulary each."""
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
        lengths: dict[int, int] = {}
        for i, info in enumerate(m.shards):
            try:
                reader = ds.shard_reader(i)  # checks size and sha256 first
                keys = reader.keys()
                keys_by_shard.append(keys)
                if deep:
                    _check_shard(ds, i, keys, report, lengths)
                report.shards_checked += 1
            except LogitStoreError as exc:
                report.problems.append(Problem(info.path, str(exc)))
        _check_audit(ds, report, lengths if deep else None)
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
        listed_audit = {f.path for f in m.audit.files} if m.audit else set()
        audit_dir = f"{root}/{AUDIT_DIR}"
        if fs.isdir(audit_dir):
            for entry in fs.ls(audit_dir, detail=False):
                rel = f"{AUDIT_DIR}/" + entry.rstrip("/").rsplit("/", 1)[-1]
                if rel not in listed_audit and not rel.endswith(".partial"):
                    report.problems.append(Problem(rel, "audit file is not listed in the manifest"))
    return report


def _check_shard(ds: Dataset, shard: int, keys: np.ndarray, report: VerifyReport, lengths: dict[int, int]) -> None:
    info = ds.manifest.shards[shard]
    reader = ds.shard_reader(shard)
    spec, vocab = ds.manifest.spec, ds.manifest.vocab_size
    tokens = entries = 0
    for start in range(0, len(reader), _STEP):
        records = reader.read_range(start, min(start + _STEP, len(reader)))
        for j, r in enumerate(records):
            if r.key != keys[start + j].tobytes() or r.key != content_key(r.input_ids):
                raise _corrupt(f"seq_id {r.seq_id}: key does not match blake2b-128 of its input_ids")
            lengths[r.seq_id] = len(r)
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


def _check_audit(ds: Dataset, report: VerifyReport, lengths: dict[int, int] | None) -> None:
    """Size and sha256 of every audit file; with ``lengths`` (deep) also its rows: exactly the positions the seed
    picks in the shard's sequences, in order, each a distribution over the vocabulary (log-sum-exp ~ 0)."""
    m = ds.manifest
    if m.audit is None:
        return
    for i, info in enumerate(m.audit.files):
        try:
            check_file(ds.fs, ds.root, info)
            if lengths is None:
                continue
            shard = m.shards[i]
            if any(s not in lengths for s in range(shard.first_seq, shard.first_seq + shard.num_sequences)):
                continue  # the shard itself is unreadable, reported above
            keys = ds.shard_reader(i).keys()
            expected = [
                (s, int(t))
                for j, s in enumerate(range(shard.first_seq, shard.first_seq + shard.num_sequences))
                for t in audit_positions(m.spec.seed, keys[j].tobytes(), lengths[s], m.audit.fraction)
            ]
            found: list[tuple[int, int]] = []
            for rows in iter_audit(ds.fs, ds.root, [info], m.vocab_size):
                found.extend(zip(rows.seq_ids.tolist(), rows.positions.tolist(), strict=True))
                lse = _row_lse(rows.logprobs)
                if len(lse) and not np.all(np.abs(lse) <= 0.02):
                    bad = int(np.argmax(np.abs(np.nan_to_num(lse, nan=np.inf))))
                    raise _corrupt(
                        f"the audit row of seq_id {int(rows.seq_ids[bad])} position {int(rows.positions[bad])} is "
                        f"not a log-softmax row: its probabilities sum to exp({float(lse[bad]):.4g})"
                    )
            if found != expected:
                raise _corrupt(
                    f"holds {len(found)} audit rows, but seed {m.spec.seed} and fraction {m.audit.fraction} pick "
                    f"{len(expected)} positions in shard {shard.path}"
                    + ("" if len(found) != len(expected) else " (different ones)")
                )
        except LogitStoreError as exc:
            report.problems.append(Problem(info.path, str(exc)))


def _row_lse(logprobs: np.ndarray) -> np.ndarray:
    """``[n, V]`` logprobs -> ``[n]`` log of the summed probabilities (float64)."""
    x = logprobs.astype(np.float64)
    m = np.max(x, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]) if len(x) else np.zeros(0)


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
