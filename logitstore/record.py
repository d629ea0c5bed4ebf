"""The logical record: one sequence's teacher distributions, identical whatever backend stored it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from logitstore.errors import InvalidInputError

#: the array fields of a record, in schema order (the optional ones are None when the cache does not store them)
ARRAY_FIELDS = (
    "input_ids",
    "lse",
    "nnz",
    "ids",
    "logprobs",
    "counts",
    "proposal_lse",
    "label_logprob",
    "logit_mean",
    "logit_std",
)


@dataclass(frozen=True, eq=False)
class Record:
    """One sequence (ARCHITECTURE §2). ``T`` positions, ``E = nnz.sum()`` entries grouped by position.

    For a language model T = ``len(input_ids)`` and position t predicts token t+1; for a sequence classifier
    T = 1 and the single position holds the distribution over classes for the whole of ``input_ids``.

    Attributes:
        seq_id: 0..N-1 in corpus order.
        key: 16-byte blake2b-128 content key of ``input_ids``.
        input_ids: ``[T] int32`` tokens the teacher read.
        lse: ``[T] float32`` log-sum-exp of the teacher's raw logits; position t predicts token t+1.
        nnz: ``[T] int32`` entries kept per position.
        ids: ``[E] int32`` token ids, in the spec's entry order within each position.
        logprobs: ``[E] float32`` teacher log-probabilities (temperature 1) of ``ids``.
        counts: ``[E] int32`` draws per id (``sample`` method only, else None).
        proposal_lse: ``[T] float32`` lse of ``logits / proposal_temperature`` (``sample`` with a proposal
            temperature other than 1, else None).
        label_logprob: ``[T] float32`` teacher log-probability of the token that follows position t
            (``input_ids[t + 1]``), NaN at the last position (spec ``label_logprob``, else None). Within the
            encoding's error bound, like ``logprobs``.
        logit_mean: ``[T] float32`` mean of the raw logits over the logit dimension (spec ``logit_stats``).
        logit_std: ``[T] float32`` their standard deviation, with Bessel's correction like ``torch.std``
            (spec ``logit_stats``).
    """

    seq_id: int
    key: bytes
    input_ids: np.ndarray
    lse: np.ndarray
    nnz: np.ndarray
    ids: np.ndarray
    logprobs: np.ndarray
    counts: np.ndarray | None = None
    proposal_lse: np.ndarray | None = None
    label_logprob: np.ndarray | None = None
    logit_mean: np.ndarray | None = None
    logit_std: np.ndarray | None = None

    def __len__(self) -> int:
        """Number of positions T (``len(input_ids)`` for a language model, 1 for a sequence classifier)."""
        return int(self.lse.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the record's arrays."""
        return sum(a.nbytes for a in (getattr(self, name) for name in ARRAY_FIELDS) if a is not None)

    @property
    def num_entries(self) -> int:
        return int(self.ids.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        """``[T + 1] int64``: entries of position t are ``ids[offsets[t]:offsets[t + 1]]``."""
        out = np.zeros(len(self.nnz) + 1, dtype=np.int64)
        np.cumsum(self.nnz, out=out[1:])
        return out

    def kept_mass(self) -> np.ndarray:
        """``[T] float64``: teacher probability mass of the stored ids at each position."""
        return position_mass(self.logprobs, self.nnz)

    def slice(self, start: int, stop: int) -> Record:
        """The positions ``start..stop-1`` of this record (same seq_id and key)."""
        t = len(self)
        if not (0 <= start <= stop <= t):
            raise InvalidInputError(
                f"position range [{start}, {stop}) is outside the sequence's {t} positions; "
                f"use 0 <= start <= stop <= {t}"
            )
        off = self.offsets
        a, b = int(off[start]), int(off[stop])
        classifier = len(self.input_ids) != t

        def cut(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else x[start:stop]

        return Record(
            seq_id=self.seq_id,
            key=self.key,
            input_ids=self.input_ids if classifier else self.input_ids[start:stop],
            lse=self.lse[start:stop],
            nnz=self.nnz[start:stop],
            ids=self.ids[a:b],
            logprobs=self.logprobs[a:b],
            counts=None if self.counts is None else self.counts[a:b],
            proposal_lse=cut(self.proposal_lse),
            label_logprob=cut(self.label_logprob),
            logit_mean=cut(self.logit_mean),
            logit_std=cut(self.logit_std),
        )

    def equals(self, other: Record, *, logprob_atol: float = 0.0) -> bool:
        """Field-wise equality; logprobs compared within ``logprob_atol`` (``-inf`` must match exactly)."""
        same = (
            self.seq_id == other.seq_id
            and self.key == other.key
            and _same(self.input_ids, other.input_ids)
            and _same(self.lse, other.lse)
            and _same(self.nnz, other.nnz)
            and _same(self.ids, other.ids)
            and _same(self.counts, other.counts)
            and _same(self.proposal_lse, other.proposal_lse)
            and _same(self.logit_mean, other.logit_mean)
            and _same(self.logit_std, other.logit_std)
            and (self.label_logprob is None) == (other.label_logprob is None)
        )
        if not same:
            return False
        if self.label_logprob is not None and not _close(self.label_logprob, other.label_logprob, logprob_atol):  # type: ignore[arg-type]
            return False
        return _close(self.logprobs, other.logprobs, logprob_atol)


def position_mass(logprobs: np.ndarray, nnz: np.ndarray) -> np.ndarray:
    """``logprobs [E]``, ``nnz [P]`` -> ``[P] float64`` stored teacher probability mass of each position."""
    pos = np.repeat(np.arange(len(nnz)), np.asarray(nnz, dtype=np.int64))
    return np.bincount(pos, weights=np.exp(logprobs.astype(np.float64)), minlength=len(nnz))


def _close(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    """Same shape, same ``-inf`` and NaN places, other values within ``atol``."""
    if a.shape != b.shape:
        return False
    a, b = a.astype(np.float64), b.astype(np.float64)
    special_a, special_b = np.isneginf(a) | np.isnan(a), np.isneginf(b) | np.isnan(b)
    if not (np.array_equal(special_a, special_b) and np.array_equal(np.isnan(a), np.isnan(b))):
        return False
    return bool(np.all(np.abs(a[~special_a] - b[~special_b]) <= atol))


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
