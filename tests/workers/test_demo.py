"""`logitstore demo --quick` runs every stage end to end, and a rerun reuses what it built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from logitstore import open_dataset

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def test_demo_quick_runs_every_stage_and_reruns(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "logitstore.cli", "demo", "--quick", "--workdir", str(tmp_path)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    # 1-2: corpus split, tokenizer and trained teacher
    assert (tmp_path / "corpus" / "train.jsonl").stat().st_size > 0
    assert (tmp_path / "corpus" / "heldout.jsonl").stat().st_size > 0
    assert (tmp_path / "teacher" / "config.json").exists() and (tmp_path / "teacher" / "tokenizer.json").exists()
    # 3: both caches, complete and sound
    for name in ("topk32", "sample32"):
        ds = open_dataset(tmp_path / "store" / name, verify=True)
        assert len(ds) > 100 and ds.manifest.corpus.num_tokens > 10_000
    assert out.count("verify: OK") == 2
    # 4: the service answered REST queries, and was stopped
    assert "GET /v1/datasets/topk32/sequences/3" in out and "('sample32', 7)" in out
    # 5: both students trained on the same budget and were evaluated against the teacher
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"CE only", "KD (sample32, via the service)", "teacher"}
    for name in ("CE only", "KD (sample32, via the service)"):
        assert results[name]["ce"] > 0 and results[name]["kl"] > 0 and results[name]["steps"] > 0
    assert results["teacher"]["kl"] == pytest.approx(0.0, abs=1e-6)
    # 6: a report per cache; the top-k one built with an audit sidecar
    for name in ("topk32", "sample32"):
        assert (tmp_path / "report" / name / "index.html").exists()
    assert open_dataset(tmp_path / "store" / "topk32").manifest.audit is not None
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already built; reusing it") == 3 and again.stdout.count("already trained") == 2
    assert json.loads((tmp_path / "results.json").read_text()) == results
