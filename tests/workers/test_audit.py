"""`--audit-fraction` in the precompute job: the audited rows are the teacher's log-softmax, the sidecar bytes do
not depend on batch size, worker count or a dying actor, verify checks them, and bad values are refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from logitstore import open_dataset
from logitstore.audit import audit_positions, read_audit
from logitstore.cli import main
from logitstore.errors import InvalidInputError
from logitstore.report import analyze
from logitstore.verify import verify_dataset
from logitstore.workers import load_config_file, precompute

pytestmark = pytest.mark.ray
FRACTION = 0.25


def _job(llama_dir, corpus, out, **kw):
    options = dict(
        teacher=str(llama_dir),
        data=str(corpus),
        out=str(out),
        method="topk",
        k=8,
        seq_len=32,
        sequences_per_shard=3,
        audit_fraction=FRACTION,
        progress=False,
    )
    return precompute(**{**options, **kw})


@pytest.fixture(scope="module")
def audited(ray_cluster, tmp_path_factory, llama_dir, corpus_jsonl):
    """One audited job's output and summary, shared (tests that damage it work on a copy)."""
    out = tmp_path_factory.mktemp("audited") / "a"
    return out, _job(llama_dir, corpus_jsonl, out, batch_size=1, num_workers=1).summary()


def test_audited_rows_are_the_teachers_log_softmax_whatever_the_batching(
    audited, tmp_path, llama_dir, corpus_jsonl, monkeypatch
) -> None:
    shutil.copytree(audited[0], tmp_path / "a")
    summary = audited[1]
    monkeypatch.setenv("LOGITSTORE_TEST_KILL_SHARD", "1")  # and an actor dies on its first try at shard 1
    _job(llama_dir, corpus_jsonl, tmp_path / "b", batch_size=3, num_workers=2)
    monkeypatch.delenv("LOGITSTORE_TEST_KILL_SHARD")
    assert "audit " in summary and "positions (fraction 0.25)" in summary
    ma, mb = (json.loads((tmp_path / n / "manifest.json").read_text()) for n in ("a", "b"))
    assert ma["audit"] == mb["audit"] and ma["shards"] == mb["shards"]  # byte-identical sidecars and shards
    assert len(ma["audit"]["files"]) == len(ma["shards"]) > 1

    from transformers import AutoModelForCausalLM

    ds = open_dataset(tmp_path / "a", verify=True)
    rows = read_audit(ds, verify=True)
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    expected_positions = []
    for seq_id in range(len(ds)):
        rec = ds[seq_id]
        picked = audit_positions(ds.manifest.spec.seed, rec.key, len(rec), FRACTION)
        expected_positions += [(seq_id, int(t)) for t in picked]
        mine = rows.seq_ids == seq_id
        if not picked.size:
            continue
        with torch.no_grad():
            logits = model(torch.from_numpy(rec.input_ids.astype(np.int64))[None]).logits[0]
        ref = torch.log_softmax(logits.double(), -1).numpy()[picked]
        # float16 rounding (2^-11 relative) on top of the chunked head's float32 differences
        np.testing.assert_allclose(rows.logprobs[mine].astype(np.float64), ref, rtol=2**-10, atol=1e-3)
        # and the shard's own top-k logprobs at those positions agree with the audit rows (q16: 0.02 nats)
        for j, t in enumerate(picked):
            ids = rec.ids[rec.offsets[t] : rec.offsets[t + 1]]
            stored = rec.logprobs[rec.offsets[t] : rec.offsets[t + 1]]
            np.testing.assert_allclose(stored, rows.logprobs[mine][j][ids].astype(np.float32), atol=0.03)
    assert list(zip(rows.seq_ids.tolist(), rows.positions.tolist(), strict=True)) == expected_positions
    assert 0.1 < len(expected_positions) / ds.manifest.num_tokens < 0.4

    assert verify_dataset(tmp_path / "a").ok
    report = analyze(tmp_path / "a")
    assert report.audit is not None and report.audit.positions == len(expected_positions)
    victim = tmp_path / "a" / ma["audit"]["files"][1]["path"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x01
    victim.write_bytes(bytes(data))
    problems = verify_dataset(tmp_path / "a", deep=False).problems
    assert [p.path for p in problems] == [ma["audit"]["files"][1]["path"]] and "corrupt" in problems[0].message


def test_a_resumed_job_keeps_only_shards_whose_sidecar_is_intact(audited, tmp_path, llama_dir, corpus_jsonl) -> None:
    """A shard counts as committed only with its sidecar's commit record and unchanged bytes."""
    from logitstore.workers.config import PrecomputeConfig
    from logitstore.workers.job import _committed
    from logitstore.workers.shard import ShardTask, audit_record_path, commit_record_path

    out = tmp_path / "ds"
    shutil.copytree(audited[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    job_dir = out / "_job"
    for i, shard in enumerate(manifest["shards"][:2]):  # rebuild the commit records a finished job deletes
        commit_record_path(job_dir, i).parent.mkdir(parents=True, exist_ok=True)
        commit_record_path(job_dir, i).write_text(json.dumps(shard))
        audit_record_path(job_dir, i).write_text(json.dumps(manifest["audit"]["files"][i]))
    config = PrecomputeConfig(
        teacher=str(llama_dir),
        data=str(corpus_jsonl),
        out=str(out),
        spec=open_dataset(out).manifest.spec,
        seq_len=32,
        sequences_per_shard=3,
        audit_fraction=FRACTION,
    )
    tasks = [
        ShardTask(index=i, first_seq=s["first_seq"], num_sequences=s["num_sequences"])
        for i, s in enumerate(manifest["shards"])
    ]
    assert sorted(_committed(out, job_dir, tasks, config)) == [0, 1]
    (out / manifest["audit"]["files"][1]["path"]).write_bytes(b"damaged")
    audit_record_path(job_dir, 0).unlink()
    assert _committed(out, job_dir, tasks, config) == {}


def test_bad_audit_fractions_are_refused_before_any_compute(tmp_path, llama_dir, corpus_jsonl, capsys) -> None:
    base = dict(teacher=str(llama_dir), data=str(corpus_jsonl), out=str(tmp_path / "x"), seq_len=32, progress=False)
    for bad in (-0.5, 1.01, float("nan"), "0.1"):
        with pytest.raises(InvalidInputError, match=r"audit_fraction must be a number in \[0, 1\].*e\.g\. 0\.0001"):
            precompute(**base, method="topk", k=4, audit_fraction=bad)
    with pytest.raises(
        InvalidInputError, match="dense dataset already stores every distribution; drop --audit-fraction"
    ):
        precompute(**base, method="dense", audit_fraction=0.1)
    assert not (tmp_path / "x").exists()
    code = main(["precompute", "--teacher", str(llama_dir), "--data", str(corpus_jsonl), "--out", str(tmp_path / "y"),
                 "--method", "sample", "--n", "4", "--audit-fraction", "2", "--quiet"])  # fmt: skip
    assert code == 2 and "audit_fraction must be a number in [0, 1]" in capsys.readouterr().err
    config = tmp_path / "job.yaml"
    config.write_text(
        f"teacher: {llama_dir}\ndata: {corpus_jsonl}\nout: {tmp_path / 'z'}\nmethod: topk\nk: 4\naudit_fraction: 0.01\n"
    )
    loaded = load_config_file(config)
    assert loaded.audit_fraction == 0.01 and loaded.identity()["audit_fraction"] == 0.01
    config.write_text(f"teacher: {llama_dir}\ndata: {corpus_jsonl}\nout: {tmp_path / 'z'}\nmethod: topk\nk: 4\n")
    assert "audit_fraction" not in load_config_file(config).identity()  # jobs from before the option still resume


def test_audit_rows_do_not_depend_on_the_lm_head_chunk(llama_dir) -> None:
    """In process (no Ray): the rows picked from 5-position head chunks equal those from one chunk, bit for bit,
    and the teacher's log-softmax at those positions."""
    from logitstore.spec import Spec
    from logitstore.workers.shard import _batch_records
    from logitstore.workers.teachers import CausalLMTeacher

    teacher = CausalLMTeacher(llama_dir, device=torch.device("cpu"))
    tokens = np.random.default_rng(0).integers(3, 200, size=(3, 40)).astype(np.int32)
    spec = Spec(method="sample", n=8, seed=4)
    small = _batch_records(teacher, spec, [0, 1, 2], tokens, 5, 0.3)
    whole = _batch_records(teacher, spec, [0, 1, 2], tokens, 40, 0.3)
    with torch.no_grad():
        ref = torch.log_softmax(teacher.model(torch.from_numpy(tokens.astype(np.int64))).logits.double(), -1)
    for s in range(3):
        (rec, (positions, rows)), (_, (positions_whole, rows_whole)) = small[s], whole[s]
        np.testing.assert_array_equal(positions, audit_positions(4, rec.key, 40, 0.3))
        assert len(positions) > 3 and positions.max() >= 5  # rows from several chunks
        np.testing.assert_array_equal(positions, positions_whole)
        np.testing.assert_array_equal(rows, rows_whole)
        np.testing.assert_allclose(rows.astype(np.float64), ref[s, positions].numpy(), rtol=2**-10, atol=1e-3)
