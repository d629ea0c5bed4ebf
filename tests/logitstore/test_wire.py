"""Records survive both wire encodings exactly, -inf logprobs included."""

from __future__ import annotations

import json

import numpy as np
import pytest

from logitstore import Spec
from logitstore.wire import record_from_json, record_to_json, records_from_arrow, records_to_arrow
from tests.conftest import synthetic_record

SPECS = [Spec(method="topk", k=4), Spec(method="sample", n=8), Spec(method="topp", p=0.9, k=6)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.method)
def test_arrow_round_trip_is_exact(spec):
    rng = np.random.default_rng(0)
    records = [synthetic_record(spec, rng, seq_id=i, length=3 + i, vocab_size=50, neg_inf=True) for i in range(4)]
    back = records_from_arrow(records_to_arrow(records))
    assert len(back) == len(records) and all(a.equals(b) for a, b in zip(records, back, strict=True))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.method)
def test_json_round_trip_is_exact_and_strict_json(spec):
    record = synthetic_record(spec, np.random.default_rng(1), seq_id=7, length=5, vocab_size=50, neg_inf=True)
    text = json.dumps(record_to_json(record), allow_nan=False)  # -inf travels as null: valid JSON
    assert record_from_json(json.loads(text)).equals(record)


def test_an_empty_batch_encodes():
    assert records_from_arrow(records_to_arrow([])) == []
