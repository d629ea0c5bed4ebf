"""Resume, faults, determinism, classifiers and bad input for the precompute job (real Ray, real models)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from logitstore import open_dataset
from logitstore.errors import DatasetExistsError, InvalidInputError
from logitstore.workers import precompute

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def _checksums(path: Path) -> list[tuple[str, str]]:
    m = json.loads((path / "manifest.json").read_text())
    return [(s["path"], s["sha256"]) for s in m["shards"]] + [("keys.idx", m["key_index"]["sha256"])]


def _many_docs(tmp_path: Path, n: int = 30) -> Path:
    path = tmp_path / "many.jsonl"
    words = ["teacher", "student", "logits", "shard", "sparse", "sample", "exact", "resume", "cluster", "token"]
    rng = np.random.default_rng(0)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, 40))}) + "\n" for _ in range(n)))
    return path


def _job(llama_dir, data, out, **kw):
    options = dict(
        teacher=str(llama_dir),
        data=str(data),
        out=str(out),
        method="sample",
        n=16,
        seed=1,
        seq_len=32,
        sequences_per_shard=2,
        batch_size=2,
        progress=False,
    )
    options.update(kw)
    return precompute(**options)


def test_same_bytes_whatever_the_batch_size_and_worker_count(ray_cluster, tmp_path, llama_dir) -> None:
    data = _many_docs(tmp_path, 12)
    _job(llama_dir, data, tmp_path / "a", batch_size=1, num_workers=1)
    _job(llama_dir, data, tmp_path / "b", batch_size=3, num_workers=2)
    assert _checksums(tmp_path / "a") == _checksums(tmp_path / "b")


def test_a_dying_actor_is_replaced_and_the_result_is_identical(ray_cluster, tmp_path, llama_dir, monkeypatch) -> None:
    data = _many_docs(tmp_path, 12)
    _job(llama_dir, data, tmp_path / "clean")
    monkeypatch.setenv("LOGITSTORE_TEST_KILL_SHARD", "1")
    result = _job(llama_dir, data, tmp_path / "faulty")
    assert result.shards_computed == len(result.manifest.shards)
    assert _checksums(tmp_path / "faulty") == _checksums(tmp_path / "clean")


def test_sigkilled_driver_resumes_to_identical_output(tmp_path, llama_dir) -> None:
    """Kill the driver (SIGKILL) once some shards are committed; the rerun reuses them and recomputes only the
    rest, and the dataset is byte-identical to an uninterrupted run."""
    data = _many_docs(tmp_path, 12)
    args = [
        sys.executable,
        "-m",
        "logitstore.cli",
        "precompute",
        "--teacher",
        str(llama_dir),
        "--data",
        str(data),
        "--method",
        "topk",
        "--k",
        "8",
        "--seq-len",
        "32",
        "--sequences-per-shard",
        "1",
        "--batch-size",
        "1",
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([*args, "--out", str(tmp_path / "clean")], check=True, env=env, capture_output=True, timeout=300)

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*args, "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    commits = out / "_job" / "commits"
    deadline = time.time() + 240
    while time.time() < deadline and (not commits.exists() or len(list(commits.glob("*.json"))) < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    committed = len(list(commits.glob("*.json")))
    total = len(json.loads((tmp_path / "clean" / "manifest.json").read_text())["shards"])
    assert 3 <= committed < total and not (out / "manifest.json").exists()

    rerun = subprocess.run([*args, "--out", str(out)], check=True, env=env, capture_output=True, text=True, timeout=300)
    computed, reused = map(int, re.search(r"\((\d+) computed, (\d+) reused\)", rerun.stdout).groups())
    assert reused >= committed and computed + reused == total
    assert _checksums(out) == _checksums(tmp_path / "clean")


def test_two_ray_nodes_give_the_same_dataset(tmp_path, llama_dir) -> None:
    data = _many_docs(tmp_path, 12)
    script = f"""
import json, sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
import ray
ray.init(address=cluster.address, log_to_driver=False)
from logitstore.workers import precompute
precompute(teacher={str(llama_dir)!r}, data={str(data)!r}, out={str(tmp_path / "two")!r}, method="sample", n=16,
           seed=1, seq_len=32, sequences_per_shard=2, batch_size=2, num_workers=2, progress=False)
nodes = len([n for n in ray.nodes() if n["Alive"]])
ray.shutdown(); cluster.shutdown()
print("NODES", nodes)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "NODES 2" in out.stdout
    # one worker on the embedded cluster, as in the other tests
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from logitstore.workers import precompute; precompute(teacher={str(llama_dir)!r}, data={str(data)!r}, "
            f"out={str(tmp_path / 'one')!r}, method='sample', n=16, seed=1, seq_len=32, sequences_per_shard=2, "
            "batch_size=2, num_workers=1, progress=False)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _checksums(tmp_path / "two") == _checksums(tmp_path / "one")


def test_classifier_teacher_end_to_end(ray_cluster, tmp_path, llama_dir, corpus_jsonl) -> None:
    from tests.workers.classifier_teacher import make

    precompute(
        teacher="tests.workers.classifier_teacher:make",
        tokenizer=str(llama_dir),
        data=str(corpus_jsonl),
        out=str(tmp_path / "cls"),
        method="dense",
        encoding="lossless",
        seq_len=64,
        progress=False,
    )
    ds = open_dataset(tmp_path / "cls", verify=True)
    assert ds.manifest.teacher.vocab_size == 5 and ds.manifest.num_tokens == len(ds)
    assert not ds.manifest.spec.label_logprob  # a classifier has no next token: off by default
    with pytest.raises(InvalidInputError, match="a classifier .* does not have; set label_logprob=False"):
        precompute(
            teacher="tests.workers.classifier_teacher:make",
            tokenizer=str(llama_dir),
            data=str(corpus_jsonl),
            out=str(tmp_path / "cls2"),
            method="dense",
            label_logprob=True,
            progress=False,
        )
    model = make().eval()
    for i in range(len(ds)):
        rec = ds[i]
        assert len(rec) == 1 and len(rec.input_ids) > 1
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.from_numpy(rec.input_ids.astype(np.int64))[None]), -1)[0]
        np.testing.assert_allclose(rec.logprobs, ref.numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def narrow_teacher(tmp_path_factory) -> Path:
    """A teacher whose logit dimension (150) is smaller than its tokenizer (~200 ids)."""
    from tests.conftest import save_test_model

    d = tmp_path_factory.mktemp("narrow")
    save_test_model("llama", d, 150)
    return d


def _bad_inputs(tmp_path: Path, llama_dir: Path, corpus: Path, narrow: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_of_range = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"input_ids": [[1, 2, 3], [4, 999, 5]]}), out_of_range)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    base = dict(teacher=str(llama_dir), data=str(corpus), method="topk", k=4, seq_len=32, progress=False)
    return [
        ({"teacher": str(tmp_path / "missing-model")}, InvalidInputError, "does not exist"),
        ({"data": str(tmp_path / "missing.jsonl")}, InvalidInputError, "data path .* does not exist"),
        (
            {"teacher": str(narrow)},
            InvalidInputError,
            r"tokenizer has \d+ ids but the teacher's logit dimension is 150",
        ),
        ({"data": str(out_of_range)}, InvalidInputError, r"document 1 holds token id 999, outside .*\[0, 256\)"),
        ({"data": str(empty)}, InvalidInputError, "the corpus is empty"),
        ({"seq_len": 512}, InvalidInputError, "seq_len 512 exceeds the teacher's 256 positions"),
        ({"method": "sample", "n": 5}, InvalidInputError, "k=4 does not apply to method 'sample'"),
        ({"k": 300}, InvalidInputError, "k=300 exceeds the teacher's vocabulary of 256"),
    ], base


def test_bad_inputs_are_refused_before_compute_and_leave_no_manifest(
    ray_cluster, tmp_path, llama_dir, corpus_jsonl, narrow_teacher
) -> None:
    cases, base = _bad_inputs(tmp_path, llama_dir, corpus_jsonl, narrow_teacher)
    for i, (change, error, match) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises(error, match=match):
            precompute(**{**base, "out": str(out), **change})
        assert not (out / "manifest.json").exists()


def test_complete_output_needs_overwrite(ray_cluster, tmp_path, llama_dir, corpus_jsonl) -> None:
    base = dict(
        teacher=str(llama_dir),
        data=str(corpus_jsonl),
        out=str(tmp_path / "ds"),
        method="topk",
        k=4,
        seq_len=32,
        progress=False,
    )
    precompute(**base)
    with pytest.raises(DatasetExistsError, match="pass --overwrite"):
        precompute(**base)
    result = precompute(**{**base, "k": 6, "overwrite": True})
    assert open_dataset(tmp_path / "ds").manifest.spec.k == 6 and result.shards_reused == 0


def test_cli_with_a_yaml_config_and_a_bad_flag(ray_cluster, tmp_path, llama_dir, corpus_jsonl, capsys) -> None:
    from logitstore.cli import main

    config = tmp_path / "job.yaml"
    config.write_text(
        f"teacher: {llama_dir}\ndata: {corpus_jsonl}\nout: {tmp_path / 'ds'}\nmethod: topp\n"
        "p: 0.9\nk: 20\nseq_len: 48\nbackend: zarr\nprogress: false\n"
    )
    assert main(["precompute", "--config", str(config)]) == 0
    assert "topp(p=0.9" in capsys.readouterr().out
    assert open_dataset(tmp_path / "ds").manifest.backend == "zarr"
    code = main(
        [
            "precompute",
            "--teacher",
            str(llama_dir),
            "--data",
            str(corpus_jsonl),
            "--out",
            str(tmp_path / "x"),
            "--method",
            "sample",
            "--n",
            "5",
            "--k",
            "3",
            "--quiet",
        ]
    )
    assert code == 2 and "k=3 does not apply to method 'sample'" in capsys.readouterr().err


def test_a_second_job_on_the_same_output_is_locked_out(ray_cluster, tmp_path, llama_dir, corpus_jsonl) -> None:
    from logitstore.workers.job import LOCK_NAME, JobLockedError, _JobLock

    out = tmp_path / "ds"
    out.mkdir()
    with _JobLock(out / LOCK_NAME), pytest.raises(JobLockedError, match="another precompute job is writing"):
        _job(llama_dir, corpus_jsonl, out)
    _job(llama_dir, corpus_jsonl, out)  # the lock is free again
    assert (out / "manifest.json").exists()


def test_resuming_with_other_options_is_refused(ray_cluster, tmp_path, llama_dir, corpus_jsonl) -> None:
    out = tmp_path / "ds"
    (out / "_job").mkdir(parents=True)
    (out / "_job" / "job.json").write_text(json.dumps({"teacher": "another-model"}))
    (out / "_job" / "commits").mkdir()
    (out / "_job" / "commits" / "00000.json").write_text("{}")  # that job had committed work
    with pytest.raises(InvalidInputError, match="unfinished job with different .*teacher.*pass --overwrite"):
        _job(llama_dir, corpus_jsonl, out)
    _job(llama_dir, corpus_jsonl, out, overwrite=True)
    assert open_dataset(out).manifest.spec.method == "sample"


def test_a_job_from_another_codec_version_is_refused_naming_the_version(tmp_path) -> None:
    """No Ray needed: the identity check runs before any work. Shards of two codec versions are never mixed."""
    from logitstore.workers.config import config_from_mapping
    from logitstore.workers.job import _check_identity

    config = config_from_mapping({"teacher": "m:f", "data": "d", "out": str(tmp_path / "ds"), "method": "topk", "k": 4})
    job_dir = tmp_path / "ds" / "_job"
    (job_dir / "commits").mkdir(parents=True)
    (job_dir / "commits" / "00000.json").write_text("{}")
    older = {**config.identity(), "teacher_revision": None, "codec_version": 1}
    (job_dir / "job.json").write_text(json.dumps(older))
    with pytest.raises(InvalidInputError, match="different codec_version; it was started by a logitstore whose"):
        _check_identity(job_dir, config, None)
    (job_dir / "job.json").write_text(json.dumps({**older, "codec_version": config.identity()["codec_version"]}))
    _check_identity(job_dir, config, None)  # the same identity resumes
