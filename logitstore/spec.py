"""The sparsification spec: which teacher entries a dataset keeps and how their values are encoded.

Raw input (CLI flags, JSON, keyword arguments) becomes a validated, frozen :class:`Spec` here, at the edge;
everything downstream trusts it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from logitstore.errors import InvalidInputError

METHODS = ("topk", "topp", "sample", "dense")
Method = Literal["topk", "topp", "sample", "dense"]

#: Largest uint16 code of a quantized logprob that is a real value; the code after it means ``-inf``.
Q16_MAX_CODE = 65534
Q16_NEG_INF = 65535


@dataclass(frozen=True, kw_only=True)
class Encoding:
    """How stored logprobs are represented.

    ``q16``: uniform quantization of ``-logprob`` with step ``2 * error_bound`` into uint16 codes, so every stored
    logprob above :attr:`floor` is within ``error_bound`` nats of the teacher's (for logprobs under -8,192 steps,
    -327 nats at the default bound, float32's own spacing can add up to half an ulp); ``-inf`` is kept exactly, values
    below the floor are clamped to it. ``float32``: lossless. Ids, counts, nnz and lse are always lossless.
    """

    logprobs: Literal["q16", "float32"] = "q16"
    error_bound: float = 0.02

    def __post_init__(self) -> None:
        if self.logprobs not in ("q16", "float32"):
            raise InvalidInputError(
                f"unknown logprob encoding {self.logprobs!r}: expected 'q16' (compact) or 'float32' (lossless)"
            )
        if self.logprobs == "float32" and self.error_bound != 0.0:
            raise InvalidInputError(
                f"the float32 logprob encoding is lossless, so error_bound must be 0, got {self.error_bound}"
            )
        if not isinstance(self.error_bound, (int, float)) or isinstance(self.error_bound, bool):
            raise InvalidInputError(f"error_bound must be a number of nats, got {self.error_bound!r}")
        if self.logprobs == "q16" and not (0.0 < self.error_bound <= 1.0 and math.isfinite(self.error_bound)):
            raise InvalidInputError(
                f"error_bound must be in (0, 1] nats for the q16 encoding, got {self.error_bound}; "
                "use the lossless encoding for exact logprobs"
            )

    @property
    def lossless(self) -> bool:
        return self.logprobs == "float32"

    @property
    def step(self) -> float:
        """Quantization step in nats (0 when lossless)."""
        return 2.0 * self.error_bound

    @property
    def floor(self) -> float:
        """Smallest logprob stored within the error bound; lower finite values are clamped to it."""
        return -self.step * Q16_MAX_CODE if not self.lossless else -math.inf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Encoding:
        _refuse_unknown_keys("encoding", data, {"logprobs", "error_bound"})
        return cls(**data)


COMPACT = Encoding()
LOSSLESS = Encoding(logprobs="float32", error_bound=0.0)


def parse_encoding(value: str | Encoding | dict[str, Any]) -> Encoding:
    """``'compact'``, ``'lossless'``, an :class:`Encoding`, or its dict form -> :class:`Encoding`."""
    if isinstance(value, Encoding):
        return value
    if isinstance(value, dict):
        return Encoding.from_dict(value)
    if value == "compact":
        return COMPACT
    if value == "lossless":
        return LOSSLESS
    raise InvalidInputError(f"unknown encoding {value!r}: expected 'compact' or 'lossless'")


@dataclass(frozen=True, kw_only=True)
class Spec:
    """Sparsification method and parameters (ARCHITECTURE §3).

    - ``topk``: ``k`` largest teacher probabilities.
    - ``topp``: smallest prefix of the sorted distribution reaching mass ``p``, clamped to ``[k_min, k]``.
    - ``sample``: ``n`` draws with replacement from ``q ∝ exp(z / proposal_temperature)``; unique ids + counts.
    - ``dense``: every logprob.

    Optional per-position fields (ARCHITECTURE §2), each stored only when its flag is set:

    - ``label_logprob``: the teacher's log-probability of the token that actually follows (language models; what
      the label-mass tail, NKD and the sampled-label losses need). The precompute job sets it by default.
    - ``logit_stats``: ``logit_mean`` and ``logit_std`` of the raw logits (for logit-standardized KD).
    """

    method: Method
    k: int | None = None
    p: float | None = None
    k_min: int | None = None
    n: int | None = None
    proposal_temperature: float = 1.0
    seed: int = 0
    encoding: Encoding = field(default_factory=lambda: COMPACT)
    label_logprob: bool = False
    logit_stats: bool = False

    def __post_init__(self) -> None:
        m = self.method
        if m not in METHODS:
            raise InvalidInputError(f"unknown method {m!r}: expected one of {', '.join(METHODS)}")
        _check_int("seed", self.seed, 0, 2**64 - 1)
        allowed = {"topk": {"k"}, "topp": {"k", "p", "k_min"}, "sample": {"n"}, "dense": set()}[m]
        for name in ("k", "p", "k_min", "n"):
            if getattr(self, name) is not None and name not in allowed:
                raise InvalidInputError(
                    f"{name}={getattr(self, name)!r} does not apply to method {m!r}; "
                    f"{m} takes {', '.join(sorted(allowed)) or 'no parameters'}"
                )
        if m != "sample" and self.proposal_temperature != 1.0:
            raise InvalidInputError(
                f"proposal_temperature={self.proposal_temperature} only applies to method 'sample', not {m!r}"
            )
        if m in ("topk", "topp"):
            if self.k is None:
                what = "entries" if m == "topk" else "maximum entries"
                raise InvalidInputError(f"method {m!r} needs k (the {what} per position), e.g. k=64")
            _check_int("k", self.k, 1, 2**31 - 1)
        if m == "topp":
            if (
                self.p is None
                or isinstance(self.p, bool)
                or not isinstance(self.p, (int, float))
                or not (0.0 < self.p <= 1.0)
            ):
                raise InvalidInputError(f"method 'topp' needs p in (0, 1], got p={self.p!r}; e.g. p=0.95")
            if self.k_min is not None:
                _check_int("k_min", self.k_min, 1, self.k)  # type: ignore[arg-type]
        if m == "sample":
            if self.n is None:
                raise InvalidInputError("method 'sample' needs n (draws per position), e.g. n=50")
            _check_int("n", self.n, 1, 65535)
            t = self.proposal_temperature
            if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
                raise InvalidInputError(f"proposal_temperature must be a finite number > 0, got {t!r}")
        for flag in ("label_logprob", "logit_stats"):
            if not isinstance(getattr(self, flag), bool):
                raise InvalidInputError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if not isinstance(self.encoding, Encoding):
            object.__setattr__(self, "encoding", parse_encoding(self.encoding))

    @property
    def effective_k_min(self) -> int:
        return self.k_min if self.k_min is not None else 1

    @property
    def entry_order(self) -> Literal["rank", "id"]:
        """Order of entries within a position: ``rank`` = descending logprob (ties by ascending id) for
        topk/topp; ``id`` = ascending token id for sample and dense."""
        return "rank" if self.method in ("topk", "topp") else "id"

    @property
    def has_counts(self) -> bool:
        return self.method == "sample"

    @property
    def has_proposal_lse(self) -> bool:
        return self.method == "sample" and self.proposal_temperature != 1.0

    def max_entries(self, vocab_size: int) -> int:
        """Largest nnz a position can have for a teacher with ``vocab_size`` logits."""
        if self.method == "dense":
            return vocab_size
        limit = self.n if self.method == "sample" else self.k
        assert limit is not None  # guaranteed by __post_init__
        return min(limit, vocab_size)

    def check_vocab(self, vocab_size: int) -> None:
        """Refuse parameters that cannot work with this logit dimension."""
        _check_int("vocab_size", vocab_size, 1, 2**31 - 1)
        if self.method == "topk" and self.k > vocab_size:  # type: ignore[operator]
            raise InvalidInputError(
                f"k={self.k} exceeds the teacher's vocabulary of {vocab_size} logits; use k <= {vocab_size} "
                "or method 'dense'"
            )

    def describe(self) -> str:
        """Short human form, e.g. ``topk(k=64)``."""
        params = {
            "topk": f"k={self.k}",
            "topp": f"p={self.p}, k_min={self.effective_k_min}, k_max={self.k}",
            "sample": f"n={self.n}, proposal_temperature={self.proposal_temperature}",
            "dense": "",
        }[self.method]
        fields = [name for name in ("label_logprob", "logit_stats") if getattr(self, name)]
        return f"{self.method}({params})" + "".join(f" +{name}" for name in fields)

    def to_dict(self) -> dict[str, Any]:
        # The optional-field flags are written only when set, so specs without them (and manifests written before
        # they existed) have one form; from_dict reads a missing flag as False.
        d = {k: v for k, v in asdict(self).items() if v is not None and v is not False}
        d["encoding"] = self.encoding.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spec:
        _refuse_unknown_keys("spec", data, {f for f in cls.__dataclass_fields__})
        data = dict(data)
        if "encoding" in data:
            data["encoding"] = parse_encoding(data["encoding"])
        return cls(**data)


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (lo <= value <= hi):
        raise InvalidInputError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _refuse_unknown_keys(what: str, data: dict[str, Any], known: set[str]) -> None:
    unknown = set(data) - known
    if unknown:
        raise InvalidInputError(f"unknown {what} field(s) {sorted(unknown)}; known fields are {sorted(known)}")
