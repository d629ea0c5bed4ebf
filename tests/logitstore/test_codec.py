"""Record validation at encode time for the optional per-position fields (label_logprob, logit stats)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from logitstore import Encoding, Spec, content_key
from logitstore.codec import Segments, _q16_decode, _q16_encode, check, decode, encode, quant_step, validate
from logitstore.errors import InvalidInputError
from logitstore.spec import Q16_MAX_CODE, Q16_NEG_INF
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
    for entry_point in (lambda r: encode([r], SPEC, 40), lambda r: check(r, SPEC, 40)):
        with pytest.raises(InvalidInputError, match=match):
            entry_point(_record(**changes))


def test_check_values_the_kept_mass_as_encode_does_and_names_a_bad_record() -> None:
    """A writer checks each record as it arrives and encodes the pending ones unchecked: the kept mass must not
    depend on which path computed it, and the refusal names the record."""
    records = [synthetic_record(SPEC, np.random.default_rng(i), seq_id=i, length=9, vocab_size=40) for i in range(4)]
    masses = [check(r, SPEC, 40) for r in records]
    assert sum(masses) == pytest.approx(encode(records, SPEC, 40).kept_mass_sum, rel=1e-12)
    assert encode(records, SPEC, 40, masses=masses).kept_mass_sum == pytest.approx(sum(masses), rel=1e-15)
    assert all(0 < m <= 9 * (1 + 1e-3) for m in masses)
    bad = dataclasses.replace(records[2], logprobs=-records[2].logprobs)  # raw logits, positive
    with pytest.raises(InvalidInputError, match="record seq_id=2: logprobs must be <= 0"):
        check(bad, SPEC, 40)


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


@pytest.mark.parametrize("nnz", [[3, 3, 3], [3, 0, 2, 4], [2, 1, 0, 2]], ids=["same width", "ragged", "width 1"])
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


@pytest.mark.parametrize("bound", [0.02, 0.001, 0.3, 0.0101, 0.0045, 1e-5])
def test_q16_stays_within_the_bound_at_step_midpoints_on_both_rounding_paths(bound: float) -> None:
    """The worst values for a quantizer sit at a step's midpoint; float32 rounding (codes up to 2,048) and float64
    rounding (beyond, and -inf) must both keep every decoded value within the bound."""
    spec = Spec(method="topk", k=4, encoding=Encoding(logprobs="q16", error_bound=bound))
    step = quant_step(spec)
    codes = np.concatenate([np.arange(0, 4096), np.arange(4096, Q16_MAX_CODE, 97)]).astype(np.float64)
    midpoints = -(codes + 0.5) * step
    ulps = np.array([-2, -1, 0, 1, 2], dtype=np.float64)[:, None]
    around = (midpoints[None, :] * (1 + ulps * 2.0**-24)).ravel().astype(np.float32)
    logprobs = np.concatenate([around, np.float32([0.0, -0.0, 1e-4, -np.inf, -1e30])])
    encoded = _q16_encode(logprobs, spec)
    decoded = _q16_decode(encoded, spec)
    finite = np.isfinite(logprobs) & (logprobs > -Q16_MAX_CODE * step) & (logprobs <= 0)
    err = np.abs(decoded[finite].astype(np.float64) - logprobs[finite])
    near = logprobs[finite] > -8192 * step
    assert np.max(err[near]) <= bound
    # far below (-327 nats at the default bound) float32's own spacing adds up to half an ulp, on either path
    assert np.all(err[~near] <= bound + np.spacing(np.abs(logprobs[finite][~near])) / 2 + 1e-12)
    assert encoded[logprobs == -np.inf].tolist() == [Q16_NEG_INF]
    assert encoded[-1] == Q16_MAX_CODE, "below the last code: clamped to it, not wrapped or -inf"
    # float32 rounding differs from float64 only for values within 2**-12 of a step's midpoint
    exact = np.rint(-logprobs[finite].astype(np.float64) / step)
    off = encoded[finite] != exact
    gap = np.abs(np.abs(-logprobs[finite].astype(np.float64) / step - exact) - 0.5)
    assert np.all(gap[off] <= 2.0**-12)


@pytest.mark.parametrize("bound", [4e-4, 1e-4, 0.02])
def test_slightly_positive_logprobs_encode_to_code_zero(bound: float) -> None:
    """Validation lets logprobs up to +1e-3 through (float rounding of log-softmax), several steps at a small bound:
    they must become code 0 (probability 1), never wrap around to the top codes or the -inf sentinel."""
    spec = Spec(method="topk", k=2, encoding=Encoding(logprobs="q16", error_bound=bound))
    logprobs = np.float32([1e-3, 9e-4, 1e-5, 0.0, -5.0])
    codes = _q16_encode(logprobs, spec)
    assert codes[:4].tolist() == [0, 0, 0, 0]
    assert abs(float(_q16_decode(codes, spec)[4]) + 5.0) <= bound


def test_order_checks_on_one_entry_per_position_and_on_nothing() -> None:
    for seg, x in (
        (Segments(np.array([1, 1, 1], np.uint32)), np.int32([5, 3, 1])),
        (Segments(np.zeros(2, np.uint32)), np.int32([])),
    ):
        assert seg.strictly_rising(x) and not seg.any_rising(x.astype(np.float32))
