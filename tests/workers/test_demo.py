"""`logitstore demo --quick` runs the precompute path end to end and a rerun reuses what it built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from logitstore import open_dataset

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def test_demo_quick_builds_both_caches_and_reruns(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "logitstore.cli", "demo", "--quick", "--workdir", str(tmp_path)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("topk32", "sample32"):
        ds = open_dataset(tmp_path / "store" / name, verify=True)
        assert len(ds) > 100 and ds.manifest.corpus.num_tokens > 10_000
    assert "content lookup" in first.stdout and "verify: OK" in first.stdout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("already built; reusing it") == 2
