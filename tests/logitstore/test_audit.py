"""The audit sidecar: which positions are audited, the rows written and read back, and what verify finds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from logitstore import DatasetWriter, Manifest, Spec, open_dataset
from logitstore.audit import AuditWriter, audit_positions, read_audit
from logitstore.cli import main
from logitstore.errors import InvalidInputError
from logitstore.fs import digest, resolve
from logitstore.keys import content_key
from logitstore.verify import verify_dataset
from tests.conftest import random_input_ids, sparse_record, teacher, teacher_like_logits

V = 120
SPEC = Spec(method="topk", k=6, seed=5)


def build(root: Path, rng, *, fraction: float = 0.25, spec: Spec = SPEC, shard_entries: int = 1500, n: int = 12):
    """A dataset with an audit; returns {(seq_id, position): float32 log-softmax row} of what was audited."""
    audited = {}
    with DatasetWriter(
        root, spec=spec, teacher=teacher(V), shard_entries=shard_entries, audit_fraction=fraction
    ) as writer:
        for seq_id in range(n):
            ids = random_input_ids(rng, 25, V)
            logits = teacher_like_logits(rng, 25, V)
            record = sparse_record(spec, logits, seq_id=seq_id, input_ids=ids)
            positions = writer.audit_positions(record)
            rows = torch.log_softmax(logits, -1).numpy()[positions]
            audited.update({(seq_id, int(t)): rows[j] for j, t in enumerate(positions)})
            writer.write(record, audit_logprobs=rows)
    return audited


def test_audited_positions_are_a_pure_function_of_seed_key_and_position() -> None:
    key = content_key(np.arange(10))
    picked = audit_positions(0, key, 4000, 0.1)
    assert np.array_equal(picked, audit_positions(0, key, 4000, 0.1))
    assert 0.08 < len(picked) / 4000 < 0.12
    # a position's fate does not depend on the sequence's length (nor on how positions are chunked)
    assert np.array_equal(audit_positions(0, key, 1000, 0.1), picked[picked < 1000])
    assert not np.array_equal(audit_positions(1, key, 4000, 0.1), picked)
    assert not np.array_equal(audit_positions(0, content_key(np.arange(11)), 4000, 0.1), picked)
    assert len(audit_positions(0, key, 100, 0.0)) == 0 and len(audit_positions(0, key, 100, 1.0)) == 100


def test_rows_round_trip_and_the_manifest_lists_one_file_per_shard(tmp_path, rng) -> None:
    audited = build(tmp_path / "ds", rng)
    ds = open_dataset(tmp_path / "ds")
    m = ds.manifest
    assert m.audit is not None and m.audit.fraction == 0.25 and m.audit.dtype == "float16"
    assert len(m.shards) > 1 and [f.path for f in m.audit.files] == [
        f"audit/{i:05d}.parquet" for i in range(len(m.shards))
    ]
    assert m.audit.num_positions == len(audited) > 0
    # a sidecar's layout is format_version 1's, whatever the shards' (here 2: nibble gaps)
    sidecar = pq.ParquetFile(tmp_path / "ds" / m.audit.files[0].path)
    assert m.format_version == 2 and json.loads(sidecar.schema_arrow.metadata[b"logitstore"])["format_version"] == 1
    rows = read_audit(ds)
    assert rows.logprobs.dtype == np.float16 and rows.logprobs.shape == (len(audited), V)
    assert list(zip(rows.seq_ids.tolist(), rows.positions.tolist(), strict=True)) == sorted(audited)
    for j, (s, t) in enumerate(zip(rows.seq_ids, rows.positions, strict=True)):
        np.testing.assert_array_equal(rows.logprobs[j], audited[(int(s), int(t))].astype(np.float16))
        # the positions are those the seed picks for that sequence
        assert int(t) in audit_positions(SPEC.seed, ds[int(s)].key, len(ds[int(s)]), 0.25)
    sub = read_audit(ds, max_positions=5, seed=3)
    again = read_audit(ds, max_positions=5, seed=3)
    assert (
        len(sub) == 5 and np.array_equal(sub.seq_ids, again.seq_ids) and np.array_equal(sub.positions, again.positions)
    )
    assert verify_dataset(tmp_path / "ds").ok


def test_manifest_without_an_audit_has_no_audit_key_and_old_manifests_load(tmp_path, rng) -> None:
    build(tmp_path / "plain", rng, fraction=0.0)
    raw = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert "audit" not in raw and not (tmp_path / "plain" / "audit").exists()
    assert Manifest.from_dict(raw).audit is None
    build(tmp_path / "audited", rng)
    raw = json.loads((tmp_path / "audited" / "manifest.json").read_text())
    m = Manifest.from_dict(raw)
    assert Manifest.from_json(m.to_json()) == m
    raw["audit"]["files"] = raw["audit"]["files"][:-1]
    with pytest.raises(InvalidInputError, match="audit file\\(s\\) for .* shard\\(s\\)"):
        Manifest.from_dict(raw)
    raw["audit"] = {"fraction": 0.1, "files": [], "extra": 1}
    with pytest.raises(InvalidInputError, match="unknown audit field"):
        Manifest.from_dict(raw)


@pytest.mark.parametrize("deep", [True, False])
def test_verify_names_a_corrupt_missing_or_unlisted_sidecar(tmp_path, rng, deep, capsys) -> None:
    build(tmp_path / "ds", rng)
    root = tmp_path / "ds"
    victim = root / "audit" / "00001.parquet"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    (root / "audit" / "00000.parquet").unlink()
    (root / "audit" / "09999.parquet").write_bytes(b"stray")
    problems = {p.path: p.message for p in verify_dataset(root, deep=deep).problems}
    assert set(problems) == {"audit/00000.parquet", "audit/00001.parquet", "audit/09999.parquet"}
    assert "missing" in problems["audit/00000.parquet"] and "corrupt" in problems["audit/00001.parquet"]
    assert "not listed in the manifest" in problems["audit/09999.parquet"]
    assert main(["verify", str(root)] + ([] if deep else ["--quick"])) == 1
    assert "FAIL audit/00001.parquet" in capsys.readouterr().err


def test_deep_verify_finds_rows_that_are_not_the_seeds_positions(tmp_path, rng) -> None:
    """A sidecar rewritten with its checksum updated still has to hold exactly the positions the seed picks, each
    a distribution."""
    build(tmp_path / "ds", rng)
    root = tmp_path / "ds"
    manifest = json.loads((root / "manifest.json").read_text())
    ds = open_dataset(root)
    first = ds.manifest.shards[0]
    rows = read_audit(ds)
    mine = rows.seq_ids < first.num_sequences
    for name, seq_ids, positions, logprobs in [
        ("drop a row", rows.seq_ids[mine][1:], rows.positions[mine][1:], rows.logprobs[mine][1:]),
        ("not normalized", rows.seq_ids[mine], rows.positions[mine], rows.logprobs[mine] - np.float16(0.5)),
    ]:
        writer = AuditWriter(root, 0, V)
        for s in np.unique(seq_ids):
            writer.write(int(s), positions[seq_ids == s], logprobs[seq_ids == s])
        info = writer.commit()
        fs, _ = resolve(str(root))
        manifest["audit"]["files"][0] = {**info.to_dict()}
        assert digest(fs, str(root / info.path)) == (info.nbytes, info.sha256)
        (root / "manifest.json").write_text(json.dumps(manifest))
        problems = verify_dataset(root).problems
        assert [p.path for p in problems] == ["audit/00000.parquet"], name
        assert ("pick" if name == "drop a row" else "not a log-softmax row") in problems[0].message
        assert verify_dataset(root, deep=False).ok  # checksums alone cannot tell


def test_an_audit_writer_takes_nothing_after_its_commit(tmp_path, rng) -> None:
    (tmp_path / "audit").mkdir()
    writer = AuditWriter(tmp_path, 0, V)
    writer.write(0, np.array([1, 3]), torch.log_softmax(teacher_like_logits(rng, 2, V), -1).numpy())
    assert writer.commit().num_positions == 2
    for again in (writer.commit, lambda: writer.write(1, np.array([0]), np.zeros((1, V), np.float32))):
        with pytest.raises(InvalidInputError, match="audit file audit/00000.parquet was already committed"):
            again()


def test_an_audit_writer_whose_row_group_failed_takes_nothing_more(tmp_path, rng, monkeypatch) -> None:
    """A row group written and then failed must not stay buffered for a commit to write again."""
    (tmp_path / "audit").mkdir()
    write_group, failures = AuditWriter._write_group, iter([OSError(28, "No space left on device")])

    def write_then_fail(self, *args):  # type: ignore[no-untyped-def]
        write_group(self, *args)
        if (error := next(failures, None)) is not None:
            raise error

    monkeypatch.setattr(AuditWriter, "_write_group", write_then_fail)
    writer = AuditWriter(tmp_path, 0, V)
    writer.rows_per_group = 2
    rows = torch.log_softmax(teacher_like_logits(rng, 2, V), -1).numpy()
    with pytest.raises(OSError, match="No space left"):
        writer.write(0, np.array([1, 3]), rows)
    for again in (writer.commit, lambda: writer.write(1, np.array([0, 1]), rows)):
        with pytest.raises(InvalidInputError, match="audit file audit/00000.parquet was already committed or aborted"):
            again()
    assert list((tmp_path / "audit").iterdir()) == []


def test_writer_refuses_bad_audit_input(tmp_path, rng) -> None:
    for bad in (-0.1, 1.5, math.nan, True, "0.1"):
        with pytest.raises(InvalidInputError, match=r"audit_fraction must be a number in \[0, 1\]"):
            DatasetWriter(tmp_path / "x", spec=SPEC, teacher=teacher(V), audit_fraction=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="dense dataset already stores every distribution"):
        DatasetWriter(tmp_path / "x", spec=Spec(method="dense"), teacher=teacher(V), audit_fraction=0.1)
    writer = DatasetWriter(tmp_path / "y", spec=SPEC, teacher=teacher(V), audit_fraction=1.0)
    ids = random_input_ids(rng, 4, V)
    logits = teacher_like_logits(rng, 4, V)
    record = sparse_record(SPEC, logits, seq_id=0, input_ids=ids)
    with pytest.raises(InvalidInputError, match=r"has 4 audited position\(s\) \[0, 1, 2, 3\]; pass audit_logprobs"):
        writer.write(record)
    with pytest.raises(InvalidInputError, match=r"must be \[4, 120\].*got \(3, 120\)"):
        writer.write(record, audit_logprobs=np.zeros((3, V), np.float32))
    rows = torch.log_softmax(logits, -1)
    for bad, match in [
        (rows.bfloat16(), r"seq_id 0 must be a numpy array of floats, got Tensor .*\.detach\(\)\.float\(\)"),
        (rows.requires_grad_(True), "seq_id 0 must be a numpy array of floats, got Tensor"),
        (np.zeros((4, V), np.int64), "seq_id 0 must be floating-point log-softmax values, got dtype int64"),
        (np.full((4, V), np.nan, np.float32), r"must be log-softmax values \(<= 0, not NaN\), found NaN"),
        (rows.detach().numpy() + 5.0, r"found a maximum of 4\.\d+; pass torch.log_softmax"),
    ]:
        with pytest.raises(InvalidInputError, match=match):
            writer.write(record, audit_logprobs=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="DatasetWriter.write takes a logitstore.Record, got dict"):
        writer.write(record.__dict__)  # type: ignore[arg-type]
    writer.write(record, audit_logprobs=rows.detach().numpy())  # nothing was half-written
    manifest = writer.finish()
    assert manifest.audit.num_positions == 4 and len(manifest.shards) == 1


def test_audit_rows_are_copied_so_a_reused_buffer_changes_nothing_written(tmp_path, rng) -> None:
    """A writer holds rows until a row group fills: float16 rows (which need no conversion) must be copied too."""
    (tmp_path / "audit").mkdir()
    writer = AuditWriter(tmp_path, 0, V)
    buffer = np.empty((2, V), np.float16)
    written = []
    for seq_id in range(3):
        buffer[...] = torch.log_softmax(teacher_like_logits(rng, 2, V), -1).numpy()
        written.append(buffer.copy())
        writer.write(seq_id, np.array([0, 1]), buffer)
    writer.commit()
    table = pq.read_table(tmp_path / "audit" / "00000.parquet")
    stored = np.array(table.column("logprobs").to_pylist(), dtype=np.float16)
    np.testing.assert_array_equal(stored, np.concatenate(written))


def test_an_audit_writer_refusing_rows_changes_nothing(tmp_path, rng) -> None:
    """Rows that cannot be converted are refused before the writer's state moves: the next call's rows land on
    their own (seq_id, position) pairs."""
    (tmp_path / "audit").mkdir()
    writer = AuditWriter(tmp_path, 0, V)
    rows = torch.log_softmax(teacher_like_logits(rng, 2, V), -1)
    with pytest.raises(InvalidInputError, match="audit rows of seq_id 1 must be a numpy array of floats"):
        writer.write(1, np.array([0, 2]), rows.bfloat16())  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"audit rows of seq_id 1 must be \[2, 120\].*got \(2,\)"):
        writer.write(1, np.array([0, 2]), [0.0, -1.0])  # type: ignore[arg-type]
    writer.write(1, np.array([0, 2]), rows.numpy())
    assert writer.commit().num_positions == 2
    table = pq.read_table(tmp_path / "audit" / "00000.parquet")
    assert table.column("seq_id").to_pylist() == [1, 1] and table.column("position").to_pylist() == [0, 2]


def test_overwriting_an_audited_dataset_without_an_audit_removes_the_sidecar(tmp_path, rng) -> None:
    build(tmp_path / "ds", rng)
    assert (tmp_path / "ds" / "audit").exists()
    with DatasetWriter(tmp_path / "ds", spec=SPEC, teacher=teacher(V), overwrite=True) as w:
        ids = random_input_ids(rng, 5, V)
        w.write(sparse_record(SPEC, teacher_like_logits(rng, 5, V), seq_id=0, input_ids=ids))
    assert not (tmp_path / "ds" / "audit").exists() and verify_dataset(tmp_path / "ds").ok
