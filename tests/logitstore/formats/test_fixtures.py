"""Datasets written by earlier releases (``tests/fixtures/datasets/<date>-<commit>/``, made by
``tests/fixtures/make_datasets.py`` with that commit's code) read back as that release read them: Parquet list
columns (2026-11-23), byte planes (2026-12-03), format_version 2 (raw planes, nibbles); Zarr written by
zarr-python (2026-11-23) and with 1 MiB Blosc blocks and bit-shuffled gaps. logitstore's own Zarr writer of
64d7775 wrote the very files of 433bca0 (compared when the fixtures were made), so it has no era here. Each era
holds top-k (q16, -inf entries, ids above 65,535), sample (counts, proposal_lse) and lossless top-p (with
label_logprob and logit stats where the release had them), in two shards of several row groups."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from logitstore import Record, open_dataset
from logitstore.verify import verify_dataset

FIXTURES = Path(__file__).parents[2] / "fixtures" / "datasets"
DATASETS = sorted(p for p in FIXTURES.glob("*/*") if (p / "manifest.json").is_file())
FIELDS = [f.name for f in dataclasses.fields(Record)]
BOTH = [f"{b}-{m}" for b in ("parquet", "zarr") for m in ("sample", "topk", "topp-lossless")]


def test_every_era_and_backend_is_covered() -> None:
    eras = {p.parent.name: sorted(d.name for d in DATASETS if d.parent == p.parent) for p in DATASETS}
    assert eras == {
        "2026-11-23-433bca0": BOTH,
        "2026-12-03-1608c96": BOTH[:3],
        "2026-12-04-f9877f7": BOTH,
    }
    for d in DATASETS:  # the optional fields are there to be read back
        stored = {name.split("/")[1] for name in np.load(d / "expected.npz").files}
        assert ({"counts", "proposal_lse"} <= stored) == d.name.endswith("sample"), d
        # label_logprob and the logit stats exist since 7ee2e54 (2026-12-02)
        if d.name.endswith("topp-lossless") and d.parent.name != "2026-11-23-433bca0":
            assert {"label_logprob", "logit_mean", "logit_std"} <= stored, d


@pytest.mark.parametrize("root", DATASETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_dataset_of_an_earlier_release_reads_as_it_did(root: Path) -> None:
    report = verify_dataset(root, deep=True)
    assert report.ok, report
    ds = open_dataset(root, verify=True)
    expected = np.load(root / "expected.npz")
    assert len(ds) == 5 and len(ds.manifest.shards) == 2
    assert {name.split("/")[1] for name in expected.files} <= set(FIELDS)
    for i, got in enumerate(ds):
        for field in FIELDS:
            value, name = getattr(got, field), f"{i}/{field}"
            if value is None:
                assert name not in expected.files, f"{name} was read before and is missing now"
                continue
            now = np.frombuffer(value, np.uint8) if field == "key" else np.asarray(value)
            np.testing.assert_array_equal(now, expected[name], err_msg=name)
        assert ds.get_by_key(got.key).seq_id == i
