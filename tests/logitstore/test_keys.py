from __future__ import annotations

import hashlib

import numpy as np
import pytest

from logitstore.errors import InvalidInputError
from logitstore.keys import content_key, parse_key


def test_content_key_is_blake2b128_of_le_int32() -> None:
    ids = [1, 2, 70000, 2**31 - 1]
    expected = hashlib.blake2b(np.array(ids, dtype="<i4").tobytes(), digest_size=16).digest()
    assert content_key(ids) == expected
    assert content_key(np.array(ids, dtype=np.int64)) == expected  # dtype of the caller does not matter
    assert content_key([1, 2]) != content_key([2, 1])


def test_parse_key() -> None:
    k = content_key([5])
    assert parse_key(k) == k and parse_key(k.hex()) == k
    with pytest.raises(InvalidInputError, match="16 bytes or 32 hex"):
        parse_key("abc")


def test_bad_ids_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="non-negative"):
        content_key([-1])
    with pytest.raises(InvalidInputError, match="one-dimensional"):
        content_key(np.zeros((2, 2), dtype=np.int32))
