from __future__ import annotations

import pytest

from logitstore.errors import InvalidInputError
from logitstore.spec import COMPACT, LOSSLESS, Encoding, Spec, parse_encoding


@pytest.mark.parametrize(
    "spec",
    [
        Spec(method="topk", k=64),
        Spec(method="topp", k=100, p=0.95, k_min=5, seed=7),
        Spec(method="sample", n=50, proposal_temperature=2.0, seed=2**64 - 1),
        Spec(method="dense", encoding=LOSSLESS),
        Spec(method="topk", k=8, label_logprob=True, logit_stats=True),
    ],
)
def test_round_trip(spec: Spec) -> None:
    assert Spec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "topq"}, "unknown method 'topq'"),
        ({"method": "topk"}, "needs k"),
        ({"method": "topk", "k": 0}, r"k must be an integer in \[1"),
        ({"method": "sample", "n": 50, "k": 5}, "k=5 does not apply to method 'sample'"),
        ({"method": "sample"}, "needs n"),
        ({"method": "topp", "k": 10, "p": 1.5}, r"p in \(0, 1\]"),
        ({"method": "topp", "k": 10, "p": 0.9, "k_min": 11}, r"k_min must be an integer in \[1, 10\]"),
        ({"method": "topk", "k": 5, "proposal_temperature": 2.0}, "only applies to method 'sample'"),
        ({"method": "sample", "n": 5, "proposal_temperature": 0.0}, "finite number > 0"),
        ({"method": "dense", "seed": -1}, "seed must be"),
        ({"method": "dense", "label_logprob": 1}, "label_logprob must be true or false"),
    ],
)
def test_invalid_specs_name_the_problem(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        Spec(**kwargs)


def test_k_larger_than_vocab_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="k=100 exceeds the teacher's vocabulary of 50"):
        Spec(method="topk", k=100).check_vocab(50)


def test_encodings() -> None:
    assert parse_encoding("compact") == COMPACT and parse_encoding("lossless") == LOSSLESS
    assert COMPACT.step == pytest.approx(0.04) and COMPACT.floor < -2000
    with pytest.raises(InvalidInputError, match="expected 'compact' or 'lossless'"):
        parse_encoding("zip")
    with pytest.raises(InvalidInputError, match="error_bound must be in"):
        Encoding(logprobs="q16", error_bound=0.0)
    with pytest.raises(InvalidInputError, match="unknown spec field"):
        Spec.from_dict({"method": "dense", "temperature": 2})


def test_optional_field_flags_are_written_only_when_set() -> None:
    """Specs without the flags (and manifests written before they existed) keep one form; missing reads False."""
    assert "label_logprob" not in Spec(method="topk", k=4).to_dict()
    assert Spec.from_dict({"method": "topk", "k": 4}).label_logprob is False
    spec = Spec(method="topk", k=4, label_logprob=True)
    assert spec.to_dict()["label_logprob"] is True and "logit_stats" not in spec.to_dict()
    assert spec.describe() == "topk(k=4) +label_logprob"
