"""Record validation at encode time for the optional per-position fields (label_logprob, logit stats)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from logitstore import Spec, content_key
from logitstore.codec import Segments, decode, encode, validate
from logitstore.errors import InvalidInputError
from tests.conftest import synthetic_record

SPEC = Spec(method="topk", k=4, label_logprob=True, logit_stats=True)


def _record(**changes):
    record = synthetic_record(SPEC, np.random.default_rng(0), seq_id=0, length=6, vocab_size=40)
    return dataclasses.replace(record, **changes)


def test_the_last_label_is_stored_nowhere_and_decodes_to_nan() -> None:
    records = [
        synthetic_record(SPEC, np.random.default_rng(i), seq_id=i, length=n, vocab_size=40)
        for i, n in enumerate((1, 5, 3))
    ]
    cols = encode(records, SPEC, 40)
    assert len(cols.label_logprob) == 9 - 3  # one fewer per sequence
    assert all(a.equals(b, logprob_atol=0.02) for a, b in zip(decode(cols, SPEC, 40), records, strict=True))
    tail = cols.slice(1, 3)
    assert all(a.equals(b, logprob_atol=0.02) for a, b in zip(decode(tail, SPEC, 40), records[1:], strict=True))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"label_logprob": None}, "label_logprob is missing; it is stored exactly when the spec has label_logprob"),
        ({"logit_std": None}, "logit_std is missing"),
        ({"label_logprob": np.zeros(6, np.float32)}, "last position must be NaN"),
        ({"label_logprob": np.array([0.5, 0, 0, 0, 0, np.nan], np.float32)}, "must be a log-probability"),
        ({"label_logprob": np.zeros(5, np.float32)}, r"label_logprob has shape \(5,\), expected \(6,\)"),
        ({"logit_std": np.full(6, -1.0, np.float32)}, "logit_std finite and >= 0"),
    ],
)
def test_bad_optional_fields_are_named(changes: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        encode([_record(**changes)], SPEC, 40)


def test_a_field_the_spec_does_not_store_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="label_logprob is given"):
        encode([_record()], dataclasses.replace(SPEC, label_logprob=False), 40)


def test_classifier_records_have_no_label() -> None:
    one = synthetic_record(SPEC, np.random.default_rng(1), seq_id=0, length=1, vocab_size=40)
    tokens = np.arange(5, dtype=np.int32)
    classifier = dataclasses.replace(one, input_ids=tokens, key=content_key(tokens))
    with pytest.raises(InvalidInputError, match="a classifier record has no next token"):
        encode([classifier], SPEC, 40)


def test_validate_catches_a_label_logprob_that_disagrees_with_the_stored_entry() -> None:
    """verify's decoded-record check: where the label is among the stored ids, the two values are one logit."""
    spec = Spec(method="dense", label_logprob=True)
    record = synthetic_record(spec, np.random.default_rng(0), seq_id=0, length=4, vocab_size=6)
    offsets = record.offsets
    label = np.array([record.logprobs[offsets[t] + record.input_ids[t + 1]] for t in range(3)] + [np.nan], np.float32)
    good = dataclasses.replace(record, label_logprob=label)
    validate([good], spec, 6)
    label[1] -= 0.5
    with pytest.raises(InvalidInputError, match="label_logprob at position 1 .* disagrees with the stored logprob"):
        validate([dataclasses.replace(record, label_logprob=label)], spec, 6)


@pytest.mark.parametrize("nnz", [[3, 3, 3], [3, 0, 2, 4]], ids=["same width", "ragged"])
def test_order_checks_stop_at_position_boundaries(nnz: list[int]) -> None:
    seg = Segments(np.array(nnz, dtype=np.uint32))
    starts = np.cumsum(nnz) - nnz
    rising = np.concatenate([np.arange(10, 10 + n) * (1 + p) for p, n in enumerate(nnz)]).astype(np.int32)
    falling = -rising.astype(np.float32)
    # every position restarts below the last one's end: order holds within positions only
    assert seg.strictly_rising(rising[::1] - np.repeat(starts * 100, nnz).astype(np.int32))
    assert not seg.any_rising(falling + np.repeat(starts * 100.0, nnz).astype(np.float32))
    last = int(np.cumsum(nnz)[-1]) - 1  # swap the last two entries of the last position
    swapped = rising.copy()
    swapped[[last - 1, last]] = swapped[[last, last - 1]]
    assert not seg.strictly_rising(swapped)
    repeated = rising.copy()
    repeated[last] = repeated[last - 1]
    assert not seg.strictly_rising(repeated), "a repeated id is not strictly rising"
    up = falling.copy()
    up[[last - 1, last]] = up[[last, last - 1]]
    assert seg.any_rising(up)
    ties = np.full(sum(nnz), -np.inf, dtype=np.float32)
    assert not seg.any_rising(ties), "equal -inf entries do not rise"


def test_entries_out_of_order_within_a_position_are_refused() -> None:
    spec = Spec(method="sample", n=20)
    record = synthetic_record(spec, np.random.default_rng(1), seq_id=0, length=5, vocab_size=500)
    ids = record.ids.copy()
    ids[:2] = ids[1::-1]  # the first position's first two ids, swapped
    with pytest.raises(InvalidInputError, match="unique ids in ascending order"):
        encode([dataclasses.replace(record, ids=ids)], spec, 500)
