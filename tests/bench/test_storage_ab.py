"""`bench/storage_ab.py`'s child: the timings it reports, including the marginal rate of a larger dataset."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import storage_ab  # noqa: E402


def test_the_marginal_rows_time_the_larger_dataset_minus_the_smaller(tmp_path) -> None:
    data = storage_ab.make_records(vocab=2000, tokens=4 * 64, seq_len=64, seed=0)
    data["small_sequences"] = 1
    (tmp_path / "records.pkl").write_bytes(pickle.dumps(data))
    cmd = [sys.executable, str(REPO / "bench" / "storage_ab.py"), "--child", str(REPO), str(tmp_path / "records.pkl")]
    done = subprocess.run([*cmd, str(tmp_path), "--backends", "zarr", "--repeats", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out.pop("library") == str(REPO / "logitstore")
    assert sorted(out) == ["sample50/zarr", "sample50/zarr marginal", "topk64/zarr", "topk64/zarr marginal"]
    for method in ("topk64", "sample50"):
        small, marginal = out[f"{method}/zarr"], out[f"{method}/zarr marginal"]
        assert small["tokens"] == 64 and marginal["tokens"] == 3 * 64  # the first sequence, then the other three
        assert all(small[k] > 0 for k in ("encode_s", "encode_cpu_s", "decode_s"))


def test_marginal_tokens_must_add_sequences() -> None:
    with pytest.raises(SystemExit) as exc:
        storage_ab.main(["--baseline", "HEAD", "--tokens", "4096", "--seq-len", "2048", "--marginal-tokens", "5000"])
    assert exc.value.code == 2
