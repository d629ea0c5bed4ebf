"""The information measures behind `bench/entropy_bound.py`, on cases whose answer is known in closed form."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import entropy_bound  # noqa: E402


def test_assignment_bits_count_the_orderings_of_distinct_codes_only() -> None:
    codes = np.array([[3, 1, 2, 0], [5, 5, 5, 5], [7, 7, 2, 2]])  # 4!, 4!/4!, 4!/(2! 2!)
    assert math.isclose(entropy_bound.assignment_bits(codes), math.log2(24) + 0 + math.log2(6))


def test_set_bits_is_the_membership_entropy_of_each_id() -> None:
    # 4 positions over V = 8: id 0 always kept (no bits), id 1 in half the positions (1 bit each), the rest never
    ids = np.array([0, 1, 0, 0, 1, 0])
    assert math.isclose(entropy_bound.set_bits(ids, positions=4, vocab=8), 4.0)


def test_entropies_of_uniform_values() -> None:
    values = np.repeat(np.arange(8), 3)
    assert math.isclose(entropy_bound.entropy_bits(values), 3.0)
    given = values % 2  # knowing the parity leaves 4 equally likely values
    assert math.isclose(entropy_bound.conditional_entropy_bits(values, given), 2.0)


def test_every_column_that_holds_entries_is_counted_as_one(tmp_path, rng) -> None:
    """The bound compares the stored entry columns with the ideal; a layout that adds one (format 2's ids_raw and
    logprobs_escapes) must not slip into the "rest"."""
    import storage

    from logitstore import DatasetWriter, Spec
    from tests.conftest import synthetic_record, teacher

    for spec in (Spec(method="topk", k=8), Spec(method="sample", n=12)):
        root = tmp_path / spec.method
        with DatasetWriter(root, spec=spec, teacher=teacher(5000), backend="parquet") as w:
            for i in range(3):
                w.write(synthetic_record(spec, rng, seq_id=i, length=40, vocab_size=5000))
        stored = storage.column_bytes(root, "parquet")
        holding_entries = {c for c in stored if c.split("_")[0] in ("ids", "logprobs", "counts")}
        assert holding_entries and holding_entries <= set(entropy_bound.ENTRY_COLUMNS), holding_entries
