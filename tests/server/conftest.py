"""A store with two small datasets (Parquet sample with -inf entries, Zarr top-k) for the service tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from logitstore import DatasetWriter, Spec, TokenizerInfo
from tests.conftest import synthetic_record, teacher

SPECS = {"sample": (Spec(method="sample", n=8), "parquet"), "topk": (Spec(method="topk", k=6), "zarr")}


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(3)
    for name, (spec, backend) in SPECS.items():
        records = [
            synthetic_record(spec, rng, seq_id=i, length=6 + i % 5, vocab_size=300, neg_inf=True) for i in range(23)
        ]
        with DatasetWriter(
            root / name,
            spec=spec,
            teacher=teacher(300),
            backend=backend,
            tokenizer=TokenizerInfo(name="t", vocab_size=300, vocab_hash="ab" * 32),
            shard_entries=200,
        ) as w:
            for r in records:
                w.write(r)
    (root / "unfinished").mkdir()  # no manifest: not a dataset
    (root / "secret.txt").write_text("outside any dataset")
    return root
