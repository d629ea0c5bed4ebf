"""`bench/kd_quality.py --quick` runs the whole pipeline: teacher, every cache, every student, the gradients."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import kd_quality  # noqa: E402


def test_quick_run_reports_every_method_with_finite_numbers(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "bench" / "kd_quality.py"), "--quick", "--out", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["caches"]) == set(kd_quality.CACHES)
    assert set(results["students"]) == set(kd_quality.RUNS) | {"teacher"}
    for name, student in results["students"].items():
        for key in ("ce", "kl", "ece", "accuracy"):
            assert math.isfinite(student[key]) and student[key] >= 0, (name, key, student[key])
    compared = {name for name in kd_quality.RUNS if name != kd_quality.BASELINE and kd_quality.gradient_reference(name)}
    assert set(results["gradients"]) == compared | {kd_quality.MINIBATCH_NOISE}
    assert compared >= {"NKD, top-k 32 (ghost)", "ULD, top-k 32", "standardized KD, top-k 32 +stats"}
    reference = results["gradients"][kd_quality.REFERENCE]
    assert reference["cos_all"] == pytest.approx(1.0) and reference["norm_ratio_all"] == pytest.approx(1.0)
    for grads in results["gradients"].values():
        assert all(math.isfinite(v) for v in grads.values())
    for cache in results["caches"].values():
        assert cache["bytes_per_token"] > 0 and 0 < cache["kept_mass"] <= 1.0 + 1e-6
    align = results["alignment"]
    assert 0.2 < align["aligned_fraction"] <= 1 and align["ms_per_1k_tokens"] > 0
    table = (tmp_path / "kd_quality.md").read_text()
    for name in kd_quality.RUNS:
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert "nan" not in row and "inf" not in row
    assert table in done.stdout
