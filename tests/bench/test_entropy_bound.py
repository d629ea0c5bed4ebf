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
