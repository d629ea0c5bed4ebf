"""Records survive both wire encodings exactly, -inf logprobs included."""

from __future__ import annotations

import json

import numpy as np
import pytest

from logitstore import Spec
from logitstore.wire import record_from_json, record_to_json, records_from_arrow, records_to_arrow
from tests.conftest import synthetic_record

SPECS = [
    Spec(method="topk", k=4),
    Spec(method="sample", n=8),
    Spec(method="topp", p=0.9, k=6),
    Spec(method="topk", k=4, label_logprob=True, logit_stats=True),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_arrow_round_trip_is_exact(spec):
    rng = np.random.default_rng(0)
    records = [synthetic_record(spec, rng, seq_id=i, length=3 + i, vocab_size=50, neg_inf=True) for i in range(4)]
    back = records_from_arrow(records_to_arrow(records))
    assert len(back) == len(records) and all(a.equals(b) for a, b in zip(records, back, strict=True))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_json_round_trip_is_exact_and_strict_json(spec):
    record = synthetic_record(spec, np.random.default_rng(1), seq_id=7, length=5, vocab_size=50, neg_inf=True)
    text = json.dumps(record_to_json(record), allow_nan=False)  # -inf travels as null: valid JSON
    assert record_from_json(json.loads(text)).equals(record)


def test_an_empty_batch_encodes():
    assert records_from_arrow(records_to_arrow([])) == []


def test_a_large_response_is_several_batches_of_one_ordinary_stream(monkeypatch):
    import pyarrow as pa

    from logitstore.wire import records_to_arrow_messages

    monkeypatch.setattr("logitstore.wire.BATCH_BYTES", 600)  # a batch every few records
    rng = np.random.default_rng(2)
    spec = Spec(method="sample", n=8)
    records = [synthetic_record(spec, rng, seq_id=i, length=2 + i % 7, vocab_size=50) for i in range(20)]
    data = records_to_arrow(records)
    assert len(records_to_arrow_messages(records)) > 4  # schema, several batches, end of stream
    back = records_from_arrow(data)
    assert [r.seq_id for r in back] == list(range(20)) and all(a.equals(b) for a, b in zip(records, back, strict=True))
    table = pa.ipc.open_stream(data).read_all()  # any Arrow reader sees one table, a row per record
    assert table.num_rows == 20 and table.column("seq_id").to_pylist() == list(range(20))


def test_json_label_logprob_null_is_nan_at_the_end_and_minus_inf_elsewhere():
    spec = Spec(method="topk", k=2, label_logprob=True)
    record = synthetic_record(spec, np.random.default_rng(3), seq_id=0, length=4, vocab_size=20)
    label = record.label_logprob.copy()
    label[1] = -np.inf
    record = type(record)(**{**record.__dict__, "label_logprob": label})
    data = json.loads(json.dumps(record_to_json(record), allow_nan=False))
    assert data["label_logprob"][1] is None and data["label_logprob"][3] is None
    back = record_from_json(data).label_logprob
    assert np.isneginf(back[1]) and np.isnan(back[3]) and back[0] == label[0]
