"""collate: ragged entries land in the right [B, T, K] slots; classifier records; ids beyond the student's head."""

from __future__ import annotations

import numpy as np
import pytest

from logitstore import Record, Spec, content_key
from logitstore.collate import collate
from logitstore.errors import InvalidInputError
from tests.conftest import synthetic_record


@pytest.mark.parametrize(
    "spec",
    [Spec(method="sample", n=9, proposal_temperature=1.5), Spec(method="topp", p=0.9, k=7)],
    ids=lambda s: s.describe(),
)
def test_ragged_entries_are_scattered_by_position(rng, spec):
    records = [synthetic_record(spec, rng, seq_id=i, length=n, vocab_size=50) for i, n in enumerate((6, 2, 4))]
    batch = collate(records, spec=spec, vocab_size=50)
    k = max(int(r.nnz.max()) for r in records)
    assert batch["target_ids"].shape == (3, 6, k)
    for i, r in enumerate(records):
        off = r.offsets
        for t in range(len(r)):
            n = int(r.nnz[t])
            assert batch["target_mask"][i, t].sum() == n
            assert batch["target_ids"][i, t, :n].tolist() == r.ids[off[t] : off[t + 1]].tolist()
            assert np.array_equal(batch["target_logprobs"][i, t, :n].numpy(), r.logprobs[off[t] : off[t + 1]])
            if spec.has_counts:
                assert batch["target_counts"][i, t, :n].tolist() == r.counts[off[t] : off[t + 1]].tolist()
        if spec.has_proposal_lse:
            assert np.array_equal(batch["proposal_lse"][i, : len(r)].numpy(), r.proposal_lse)
    assert batch["position_mask"].sum() == 12
    assert ("target_counts" in batch) == spec.has_counts and ("proposal_lse" in batch) == spec.has_proposal_lse


def test_classifier_records_have_one_position_and_no_labels(rng):
    spec = Spec(method="dense")
    records = []
    for i, length in enumerate((5, 9)):
        input_ids = np.arange(length, dtype=np.int32)
        logprobs = np.log(np.full(3, 1 / 3, dtype=np.float32))
        records.append(
            Record(
                seq_id=i,
                key=content_key(input_ids),
                input_ids=input_ids,
                lse=np.zeros(1, np.float32),
                nnz=np.array([3], np.int32),
                ids=np.arange(3, dtype=np.int32),
                logprobs=logprobs,
            )
        )
    batch = collate(records, spec=spec, vocab_size=3)
    assert batch["input_ids"].shape == (2, 9) and batch["attention_mask"].sum() == 14
    assert batch["target_ids"].shape == (2, 1, 3) and "labels" not in batch


def test_ids_beyond_the_usable_vocabulary_are_masked(rng):
    spec = Spec(method="topk", k=5)
    records = [synthetic_record(spec, rng, seq_id=0, length=30, vocab_size=40)]
    batch = collate(records, spec=spec, vocab_size=20)
    beyond = records[0].ids >= 20
    assert beyond.any()
    assert batch["target_mask"].sum() == (~beyond).sum()
    assert (batch["target_ids"][~batch["target_mask"]] == 0).all()


def test_empty_batch_is_refused():
    with pytest.raises(InvalidInputError, match="empty list"):
        collate([], spec=Spec(method="dense"), vocab_size=3)
