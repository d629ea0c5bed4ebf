"""Physical encoding of records, shared by the Parquet and Zarr backends.

Records of consecutive sequences are flattened into a few columns (:class:`Columns`) of small unsigned integers
that a byte-shuffling zstd stage compresses well:

- ``ids`` (uint32): in ``id`` order (sample, dense) the first id of a position and then the gaps to the previous
  id; in ``rank`` order (topk, topp) the ids themselves. Not stored for dense (they are ``0..V-1``).
- ``logprobs``: lossless float32, or ``q16`` codes ``round(-logprob / step)``; in ``rank`` order the codes are
  non-decreasing within a position, so they are stored as gaps too. Code 65535 is ``-inf``.
- ``counts`` (uint16, sample), ``nnz`` (uint32), ``input_ids`` (int32), ``lse`` / ``proposal_lse`` /
  ``logit_mean`` / ``logit_std`` (float32).
- ``label_logprob``: like logprobs (q16 codes or float32), one per position except each sequence's last (whose
  label does not exist and which decodes to NaN).

Everything but q16 logprobs round-trips exactly; q16 logprobs are within the spec's ``error_bound``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from logitstore.errors import InvalidInputError
from logitstore.keys import KEY_BYTES, content_key
from logitstore.record import Record
from logitstore.spec import Q16_MAX_CODE, Q16_NEG_INF, Spec

# The quantization step sits a hair below 2 * error_bound so that float rounding can never push an error past it.
_STEP_MARGIN = 1.0 - 2.0**-10
#: q16 codes up to this many steps are rounded in float32: its scale and product err by <= 2**-23 relative, so by
#: <= 2048.5 * 2**-23 (~2**-12) of a step here, which with the decoded value's own float32 rounding stays inside
#: the step margin (the worst case is ~error_bound * (1 - 2**-12)). Larger codes are recomputed in float64.
_Q16_FLOAT32_CODES = 2048

#: Changes whenever the same records could encode to different bytes (2: q16 rounding in float32 for codes up to
#: 2,048, which settles ~1 in 10^5 values lying within 2**-12 of a step's midpoint the other way; 3: Parquet
#: shards keep rank-order ids' low byte raw and q16 gaps as nibbles, format_version 2; 4: Zarr chunks in 1 MiB
#: Blosc blocks, q16 gaps bit-shuffled). A precompute job records it, like the sparsifiers' version, and refuses
#: to resume across it.
CODEC_VERSION = 4


@dataclass
class Columns:
    """Physical columns of ``n`` consecutive sequences (flattened: ``P`` positions, ``E`` entries)."""

    seq_ids: np.ndarray  # [n] int64
    keys: np.ndarray  # [n, 16] uint8
    lengths: np.ndarray  # [n] int64, positions per sequence
    num_entries: np.ndarray  # [n] int64, entries per sequence
    input_lengths: np.ndarray  # [n] int64, input tokens per sequence (= lengths, or anything for classifiers)
    input_ids: np.ndarray  # [I] int32
    lse: np.ndarray  # [P] float32
    nnz: np.ndarray  # [P] uint32
    ids: np.ndarray | None  # [E] uint32 (None for dense)
    logprobs: np.ndarray  # [E] uint16 (q16) or float32
    counts: np.ndarray | None  # [E] uint16 (sample)
    proposal_lse: np.ndarray | None  # [P] float32
    label_logprob: np.ndarray | None = None  # [P - n] uint16 (q16) or float32: every position but the last of each
    logit_mean: np.ndarray | None = None  # [P] float32
    logit_std: np.ndarray | None = None  # [P] float32
    kept_mass_sum: float = 0.0  # sum over positions of the stored teacher mass (set by encode)

    def __len__(self) -> int:
        return int(self.seq_ids.shape[0])

    def slice(self, start: int, stop: int) -> Columns:
        """Sequences ``start..stop-1`` of these columns (views, no copies)."""
        tok = np.concatenate([[0], np.cumsum(self.lengths)])
        ent = np.concatenate([[0], np.cumsum(self.num_entries)])
        inp = np.concatenate([[0], np.cumsum(self.input_lengths)])
        a, b, c, d = int(tok[start]), int(tok[stop]), int(ent[start]), int(ent[stop])

        def cut(x: np.ndarray | None, lo: int, hi: int) -> np.ndarray | None:
            return None if x is None else x[lo:hi]

        return Columns(
            seq_ids=self.seq_ids[start:stop],
            keys=self.keys[start:stop],
            lengths=self.lengths[start:stop],
            num_entries=self.num_entries[start:stop],
            input_lengths=self.input_lengths[start:stop],
            input_ids=self.input_ids[int(inp[start]) : int(inp[stop])],
            lse=self.lse[a:b],
            nnz=self.nnz[a:b],
            ids=cut(self.ids, c, d),
            logprobs=self.logprobs[c:d],
            counts=cut(self.counts, c, d),
            proposal_lse=cut(self.proposal_lse, a, b),
            label_logprob=cut(self.label_logprob, a - start, b - stop),
            logit_mean=cut(self.logit_mean, a, b),
            logit_std=cut(self.logit_std, a, b),
        )


def quant_step(spec: Spec) -> float:
    return spec.encoding.step * _STEP_MARGIN


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    """Concatenate already-validated arrays straight into the storage dtype (one copy)."""
    return np.concatenate(parts, dtype=dtype, casting="unsafe")


def validate(records: Sequence[Record], spec: Spec, vocab_size: int) -> None:
    """Raise :class:`InvalidInputError` naming the first problem with records read back from a shard."""
    for r in records:
        _check_record(r, spec, vocab_size)
    if records:
        try:
            _check_entries(
                _cat([r.ids for r in records], np.int32),
                _cat([r.logprobs for r in records], np.float32),
                Segments(_cat([r.nnz for r in records], np.uint32)),
                spec,
                vocab_size,
                decoded=True,
            )
        except InvalidInputError:
            _name_the_record(records, spec, vocab_size, decoded=True)
            raise
    if spec.label_logprob:
        for r in records:
            _check_label_agrees(r, spec)


def _check_label_agrees(r: Record, spec: Spec) -> None:
    """Where a position's label is among its stored ids, ``label_logprob`` is that entry's logprob (both are
    ``logits - lse`` of the same logit; encoded, they may differ by one quantization step)."""
    assert r.label_logprob is not None
    t = len(r)
    pos = np.repeat(np.arange(t), r.nnz)
    labels = np.append(np.asarray(r.input_ids[1:t], dtype=np.int64), -1)
    hit = r.ids == labels[pos]
    stored, label = r.logprobs[hit].astype(np.float64), r.label_logprob[pos[hit]].astype(np.float64)
    finite = np.isfinite(stored) & np.isfinite(label)
    bad = ~finite & (np.isneginf(stored) != np.isneginf(label)) | finite & (
        np.abs(stored - label) > 2 * spec.encoding.error_bound + 1e-5
    )
    if bad.any():
        at = int(pos[hit][np.flatnonzero(bad)[0]])
        raise InvalidInputError(
            f"record seq_id={r.seq_id}: label_logprob at position {at} ({float(r.label_logprob[at])}) disagrees with "
            "the stored logprob of the same token id; both must be logits - lse of that logit"
        )


def _name_the_record(records: Sequence[Record], spec: Spec, vocab_size: int, *, decoded: bool) -> None:
    """The batch check failed: re-check record by record so the error names the seq_id and its own position."""
    for r in records:
        _record_mass(r, spec, vocab_size, decoded=decoded)


def _record_mass(r: Record, spec: Spec, vocab_size: int, *, decoded: bool) -> np.ndarray:
    """:func:`_check_entries` of one record, its error naming the record; returns ``[T] float64`` stored mass."""
    try:
        return _check_entries(
            np.asarray(r.ids, dtype=np.int32),
            np.asarray(r.logprobs, dtype=np.float32),
            Segments(np.asarray(r.nnz, dtype=np.uint32)),
            spec,
            vocab_size,
            decoded=decoded,
        )
    except InvalidInputError as exc:
        raise InvalidInputError(f"record seq_id={r.seq_id}: {exc}") from None


def check(record: Record, spec: Spec, vocab_size: int) -> float:
    """Validate one record to be encoded under ``spec``, raising :class:`InvalidInputError` naming its seq_id and
    the problem; returns the teacher mass it stores, summed over its positions (what :func:`encode` adds to
    ``kept_mass_sum``). A writer checks each record as it arrives, so a bad one is refused before it is taken."""
    _check_record(record, spec, vocab_size)
    return float(_record_mass(record, spec, vocab_size, decoded=False).sum())


def encode(records: Sequence[Record], spec: Spec, vocab_size: int, *, masses: Sequence[float] | None = None) -> Columns:
    """Validate ``records`` against ``spec`` and turn them into physical :class:`Columns`. ``masses``: what
    :func:`check` returned for each record, which is then not validated again."""
    if not records:
        raise InvalidInputError("cannot encode an empty list of records")
    if masses is not None and len(masses) != len(records):
        raise ValueError(f"{len(masses)} masses for {len(records)} records")
    if masses is None:
        for r in records:
            _check_record(r, spec, vocab_size)
    lengths = np.array([len(r) for r in records], dtype=np.int64)
    num_entries = np.array([r.num_entries for r in records], dtype=np.int64)
    nnz = _cat([r.nnz for r in records], np.uint32)
    ids = _cat([r.ids for r in records], np.int32)
    logprobs = _cat([r.logprobs for r in records], np.float32)
    seg = Segments(nnz)
    if masses is None:
        try:
            kept_mass_sum = float(_check_entries(ids, logprobs, seg, spec, vocab_size).sum())
        except InvalidInputError:
            _name_the_record(records, spec, vocab_size, decoded=False)
            raise
    else:
        kept_mass_sum = math.fsum(masses)
    cols = Columns(
        seq_ids=np.array([r.seq_id for r in records], dtype=np.int64),
        keys=np.frombuffer(b"".join(r.key for r in records), dtype=np.uint8).reshape(-1, KEY_BYTES),
        lengths=lengths,
        num_entries=num_entries,
        input_lengths=np.array([len(r.input_ids) for r in records], dtype=np.int64),
        input_ids=_cat([r.input_ids for r in records], np.int32),
        lse=_cat([r.lse for r in records], np.float32),
        nnz=nnz,
        ids=None if spec.method == "dense" else _encode_ids(ids, seg, spec),
        logprobs=_encode_logprobs(logprobs, seg, spec),
        counts=_cat([r.counts for r in records], np.uint16) if spec.has_counts else None,  # type: ignore[misc]
        proposal_lse=(
            _cat([r.proposal_lse for r in records], np.float32)  # type: ignore[misc]
            if spec.has_proposal_lse
            else None
        ),
        label_logprob=(
            _q16_encode(_cat([r.label_logprob[:-1] for r in records], np.float32), spec)  # type: ignore[index]
            if spec.label_logprob
            else None
        ),
        logit_mean=_cat([r.logit_mean for r in records], np.float32) if spec.logit_stats else None,  # type: ignore[misc]
        logit_std=_cat([r.logit_std for r in records], np.float32) if spec.logit_stats else None,  # type: ignore[misc]
    )
    cols.kept_mass_sum = kept_mass_sum
    return cols


def decode(cols: Columns, spec: Spec, vocab_size: int) -> list[Record]:
    """Physical :class:`Columns` -> one :class:`Record` per sequence (views into shared decoded arrays)."""
    nnz = cols.nnz.astype(np.int32)
    seg = Segments(nnz)
    if spec.method == "dense":
        ids = np.tile(np.arange(vocab_size, dtype=np.int32), len(nnz))
    else:
        ids = _decode_ids(cols.ids, seg, spec)  # type: ignore[arg-type]
    logprobs = _decode_logprobs(cols.logprobs, seg, spec)
    counts = None if cols.counts is None else cols.counts.astype(np.int32)
    labels = None if cols.label_logprob is None else _decode_labels(cols.label_logprob, cols.lengths, spec)
    tok = np.concatenate([[0], np.cumsum(cols.lengths)])
    ent = np.concatenate([[0], np.cumsum(cols.num_entries)])
    inp = np.concatenate([[0], np.cumsum(cols.input_lengths)])
    out = []
    for i in range(len(cols)):
        a, b, c, d = tok[i], tok[i + 1], ent[i], ent[i + 1]
        out.append(
            Record(
                seq_id=int(cols.seq_ids[i]),
                key=cols.keys[i].tobytes(),
                input_ids=cols.input_ids[inp[i] : inp[i + 1]],
                lse=cols.lse[a:b],
                nnz=nnz[a:b],
                ids=ids[c:d],
                logprobs=logprobs[c:d],
                counts=None if counts is None else counts[c:d],
                proposal_lse=None if cols.proposal_lse is None else cols.proposal_lse[a:b],
                label_logprob=None if labels is None else labels[a:b],
                logit_mean=None if cols.logit_mean is None else cols.logit_mean[a:b],
                logit_std=None if cols.logit_std is None else cols.logit_std[a:b],
            )
        )
    return out


# -- validation ---------------------------------------------------------------------------------------------------


def _check_record(r: Record, spec: Spec, vocab_size: int) -> None:
    t = len(r)
    where = f"record seq_id={r.seq_id}"
    if len(r.input_ids) == 0:
        raise InvalidInputError(f"{where} has no input_ids; every stored sequence needs at least one token")
    if t not in (len(r.input_ids), 1):
        raise InvalidInputError(
            f"{where}: lse has {t} positions for {len(r.input_ids)} input_ids; a language-model record has one "
            "position per input token, a classifier record exactly one"
        )
    for name in ("lse", "nnz"):
        if getattr(r, name).shape != (t,):
            raise InvalidInputError(f"{where}: {name} has shape {getattr(r, name).shape}, expected ({t},) like lse")
    if r.logprobs.shape != r.ids.shape:
        raise InvalidInputError(f"{where}: logprobs {r.logprobs.shape} and ids {r.ids.shape} differ in length")
    if r.ids.dtype != np.int32 and r.ids.size and (int(r.ids.min()) < 0 or int(r.ids.max()) >= 2**31):
        raise InvalidInputError(f"{where}: ids must fit int32, got range [{r.ids.min()}, {r.ids.max()}]")
    if r.nnz.size and int(np.min(r.nnz)) < 0:
        raise InvalidInputError(f"{where}: nnz must be >= 0, got {int(np.min(r.nnz))}")
    total = int(np.asarray(r.nnz, dtype=np.int64).sum())
    if total != r.ids.shape[0]:
        raise InvalidInputError(f"{where}: nnz sums to {total} but {r.ids.shape[0]} ids were given")
    if (spec.has_counts) != (r.counts is not None):
        raise InvalidInputError(
            f"{where}: counts are {'missing' if spec.has_counts else 'given'}, but method {spec.method!r} "
            f"{'needs' if spec.has_counts else 'has no'} counts"
        )
    for name, wanted, when in (
        ("proposal_lse", spec.has_proposal_lse, "method is 'sample' with proposal_temperature != 1"),
        ("label_logprob", spec.label_logprob, "the spec has label_logprob=True"),
        ("logit_mean", spec.logit_stats, "the spec has logit_stats=True"),
        ("logit_std", spec.logit_stats, "the spec has logit_stats=True"),
    ):
        value = getattr(r, name)
        if wanted != (value is not None):
            raise InvalidInputError(
                f"{where}: {name} is {'missing' if wanted else 'given'}; it is stored exactly when {when}"
            )
        if value is not None and value.shape != (t,):
            raise InvalidInputError(f"{where}: {name} has shape {value.shape}, expected ({t},) like lse")
    if r.label_logprob is not None:
        _check_labels(r, where)
    if r.logit_std is not None and not (np.all(np.isfinite(r.logit_mean)) and np.all(r.logit_std >= 0)):  # type: ignore[arg-type]
        raise InvalidInputError(f"{where}: logit_mean must be finite and logit_std finite and >= 0")
    if r.counts is not None and r.counts.shape != r.ids.shape:
        raise InvalidInputError(f"{where}: counts {r.counts.shape} and ids {r.ids.shape} differ in length")
    if np.isnan(r.lse).any():
        raise InvalidInputError(f"{where}: lse contains NaN (teacher logits were NaN?)")
    ids = np.asarray(r.input_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= 2**31):
        raise InvalidInputError(f"{where}: input_ids must be in [0, 2**31), got range [{ids.min()}, {ids.max()}]")
    if content_key(r.input_ids) != r.key:
        raise InvalidInputError(f"{where}: key is not blake2b-128 of its input_ids; use logitstore.content_key")
    if r.counts is not None:
        n = spec.n
        if r.counts.size and (r.counts.min() < 1 or r.counts.max() > n):  # type: ignore[operator]
            raise InvalidInputError(f"{where}: counts must be in [1, n={n}]")
        pos = np.repeat(np.arange(t), r.nnz)
        sums = np.bincount(pos, weights=r.counts, minlength=t)
        if not np.all(sums == n):
            bad = int(np.flatnonzero(sums != n)[0])
            raise InvalidInputError(f"{where}: counts at position {bad} sum to {int(sums[bad])}, expected n={n}")


def _check_labels(r: Record, where: str) -> None:
    label = r.label_logprob
    assert label is not None
    if len(r.input_ids) != len(r):
        raise InvalidInputError(
            f"{where}: label_logprob is for language-model records (one position per input token); a classifier "
            "record has no next token: build its spec with label_logprob=False"
        )
    if not np.isnan(label[-1]):
        raise InvalidInputError(f"{where}: label_logprob at the last position must be NaN (no token follows it)")
    inner = label[:-1]
    if np.isnan(inner).any() or (inner.size and not (inner.max() <= 1e-3)):
        raise InvalidInputError(
            f"{where}: label_logprob must be a log-probability (<= 0, not NaN) at every position but the last; it "
            "is logits[t, input_ids[t + 1]] - lse[t]"
        )


def _check_entries(
    ids: np.ndarray, logprobs: np.ndarray, seg: Segments, spec: Spec, vocab_size: int, *, decoded: bool = False
) -> np.ndarray:
    """Check entry invariants; returns the per-position stored mass ``[P] float64``."""
    nnz = seg.nnz
    max_nnz = spec.max_entries(vocab_size)
    if nnz.size and int(nnz.max()) > max_nnz:
        raise InvalidInputError(f"a position has {int(nnz.max())} entries; {spec.describe()} keeps at most {max_nnz}")
    if spec.method == "topk" and nnz.size and int(nnz.min()) != max_nnz:
        raise InvalidInputError(
            f"every position of {spec.describe()} holds exactly {max_nnz} entries, found one with {int(nnz.min())}"
        )
    if spec.method == "dense" and nnz.size and int(nnz.min()) != vocab_size:
        raise InvalidInputError(f"dense records hold all {vocab_size} logprobs per position")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise InvalidInputError(
            f"token ids must be in [0, {vocab_size}) (the teacher's logit dimension), got range "
            f"[{ids.min()}, {ids.max()}]"
        )
    if logprobs.size and not (logprobs.max() <= 1e-3):  # also catches NaN
        raise InvalidInputError("logprobs must be <= 0 and not NaN")
    if spec.entry_order == "id":
        if not seg.strictly_rising(ids):
            raise InvalidInputError(
                f"entries of {spec.method!r} records must be unique ids in ascending order within each position"
            )
    elif seg.any_rising(logprobs):
        raise InvalidInputError(
            f"entries of {spec.method!r} records must be in rank order (descending logprob) within each position"
        )
    # float32 exponentials (a SIMD pass, ~2x a float64 one), summed per position (Segments.sums)
    mass = seg.sums(np.exp(logprobs, dtype=np.float32))
    # Quantized values may overshoot each probability by exp(error_bound); exact ones only by float rounding.
    limit = 1.0 + 1e-3 + (np.expm1(spec.encoding.error_bound) if decoded else 0.0)
    if mass.size and float(mass.max()) > limit:
        t = int(np.argmax(mass))
        raise InvalidInputError(
            f"the stored probabilities of position {t} sum to {float(mass[t]):.4f} > 1: logprobs must be "
            "log-softmax values of the teacher's logits (logits - lse), not raw logits"
        )
    return mass


class Segments:
    """Entries grouped by position (``nnz [P]`` per position), with fast paths when every position holds the same
    number of entries (top-k, dense), where a ``[P, k]`` reshape replaces segmented operations."""

    def __init__(self, nnz: np.ndarray):
        self.nnz = nnz
        self.total = int(nnz.sum(dtype=np.int64))
        first = int(nnz[0]) if nnz.size else 0
        self.width: int | None = first if nnz.size and first > 0 and bool(np.all(nnz == first)) else None
        self._starts: np.ndarray | None = None

    @property
    def starts(self) -> np.ndarray:
        """Offsets of the first entry of every non-empty position."""
        if self._starts is None:
            offsets = np.cumsum(self.nnz, dtype=np.int64) - self.nnz
            self._starts = offsets[self.nnz > 0]
        return self._starts

    def _grid(self, x: np.ndarray) -> np.ndarray:
        assert self.width is not None
        return x.reshape(-1, self.width)

    def sums(self, x: np.ndarray) -> np.ndarray:
        """``[P]`` per-position sums of ``x [E]`` as float64: pairwise in ``x``'s dtype when every position holds
        the same number of entries (numpy sums a contiguous row pairwise: relative error ~log2(width) ulps, half
        the time of a float64 accumulation), else sequentially in float64."""
        if self.width is not None:
            return self._grid(x).sum(axis=1).astype(np.float64)
        out = np.zeros(len(self.nnz), dtype=np.float64)
        if self.total:
            out[self.nnz > 0] = np.add.reduceat(x, self.starts, dtype=np.float64)
        return out

    def _rising(self, x: np.ndarray, at_starts: bool) -> np.ndarray:
        """Whether each entry of ``x [E]`` exceeds the one before it in its position: ``[P, width - 1]`` when every
        position holds ``width`` entries (pairs never cross positions), else ``[E - 1]`` for entries ``1..E-1``
        with ``at_starts`` where an entry starts a position. A comparison, not a difference: no temporary of
        ``x``'s dtype, no overflow, and two ``-inf`` do not rise."""
        if self.width is not None:
            g = self._grid(x)
            return np.less(g[:, :-1], g[:, 1:])
        up = np.less(x[:-1], x[1:])
        starts = self.starts
        up[starts[starts > 0] - 1] = at_starts
        return up

    def strictly_rising(self, x: np.ndarray) -> bool:
        return bool(self._rising(x, True).all())

    def any_rising(self, x: np.ndarray) -> bool:
        return bool(self._rising(x, False).any())

    def delta(self, x: np.ndarray) -> np.ndarray:
        """Within each position: first value, then differences (uint32 arithmetic, wraps harmlessly)."""
        if self.width is not None:
            g = self._grid(x)
            d = np.empty_like(g)
            d[:, 0] = g[:, 0]
            np.subtract(g[:, 1:], g[:, :-1], out=d[:, 1:])
            return d.ravel()
        d = np.empty_like(x)
        if x.size:
            d[0] = x[0]
            np.subtract(x[1:], x[:-1], out=d[1:])
            d[self.starts] = x[self.starts]
        return d

    def undelta(self, d: np.ndarray, dtype: type = np.uint32) -> np.ndarray:
        """Inverse of :meth:`delta`: a cumulative sum that restarts at every position, in unsigned ``dtype``
        arithmetic (wrapping is harmless when every true value fits ``dtype``)."""
        c: np.ndarray = np.cumsum(d, dtype=dtype)  # one flat pass; numpy's axis=1 cumsum over short rows is much slower
        if self.width is not None:
            grid = c.reshape(-1, self.width)
            base = grid[:, 0] - self._grid(d)[:, 0].astype(dtype)
            grid -= base[:, None]
            return c
        if c.size:
            base = c[self.starts] - d[self.starts].astype(dtype)
            c -= np.repeat(base, self.nnz[self.nnz > 0])
        return c


# -- entries ------------------------------------------------------------------------------------------------------


def _encode_ids(ids: np.ndarray, seg: Segments, spec: Spec) -> np.ndarray:
    ids32 = ids.view(np.uint32) if ids.dtype == np.int32 else ids.astype(np.uint32)  # validated: 0 <= id < V
    return seg.delta(ids32) if spec.entry_order == "id" else ids32


def _decode_ids(stored: np.ndarray, seg: Segments, spec: Spec) -> np.ndarray:
    out = seg.undelta(stored) if spec.entry_order == "id" else stored
    return out.view(np.int32) if out.dtype == np.uint32 else out.astype(np.int32)


def _encode_logprobs(logprobs: np.ndarray, seg: Segments, spec: Spec) -> np.ndarray:
    codes = _q16_encode(logprobs, spec)
    if spec.entry_order == "rank" and not spec.encoding.lossless:
        return seg.delta(codes)  # non-decreasing within a position, so uint16 gaps never wrap
    return codes


def _q16_encode(logprobs: np.ndarray, spec: Spec) -> np.ndarray:
    """``[E]`` float32 logprobs -> q16 codes (uint16), or float32 for the lossless encoding.

    Codes up to :data:`_Q16_FLOAT32_CODES` are computed in float32 (half the passes' bytes of float64); the rest
    (logprobs below ~-82 nats at the default bound, and ``-inf``) again in float64.
    """
    if spec.encoding.lossless:
        return logprobs.astype(np.float32)
    scaled = _q16_rounded(logprobs, spec, np.float32)
    codes = scaled.astype(np.uint16)
    if not (scaled.size and scaled.max() > _Q16_FLOAT32_CODES):  # one fast reduction spares the search below
        return codes
    far = np.flatnonzero(scaled > _Q16_FLOAT32_CODES)  # clamping kept them above: +inf became Q16_MAX_CODE
    if far.size:
        exact = _q16_rounded(logprobs[far], spec, np.float64).astype(np.uint16)
        exact[logprobs[far] == -np.inf] = Q16_NEG_INF
        codes[far] = exact
    return codes


def _q16_rounded(logprobs: np.ndarray, spec: Spec, dtype: type) -> np.ndarray:
    """``round(-logprob / step)`` computed in ``dtype`` and clamped to ``0..Q16_MAX_CODE``: 0 because validation
    lets logprobs up to +1e-3 through (several steps at a small bound), the top so that +inf (a ``-inf`` logprob)
    and anything large never reach a cast."""
    scaled = np.multiply(logprobs, dtype(-1.0 / quant_step(spec)), dtype=dtype)
    np.rint(scaled, out=scaled)
    if scaled.size and (scaled.min() < 0 or scaled.max() > Q16_MAX_CODE):  # two fast reductions, a rare clip
        np.clip(scaled, 0, Q16_MAX_CODE, out=scaled)
    return scaled


@lru_cache(maxsize=8)
def _q16_table(step: float) -> np.ndarray:
    """Decoded value of every uint16 code: ``-code * step``, and ``-inf`` for the sentinel."""
    table = (np.arange(Q16_NEG_INF + 1, dtype=np.float64) * -step).astype(np.float32)
    table[Q16_NEG_INF] = -np.inf
    return table


def _decode_logprobs(stored: np.ndarray, seg: Segments, spec: Spec) -> np.ndarray:
    if spec.encoding.lossless:
        return stored.astype(np.float32, copy=False)
    # uint16 codes: the cumulative sum in uint16 keeps the table look-up's index small (faster np.take)
    codes = seg.undelta(stored, np.uint16) if spec.entry_order == "rank" else stored
    return _q16_decode(codes, spec)


def _q16_decode(codes: np.ndarray, spec: Spec) -> np.ndarray:
    if spec.encoding.lossless:
        return codes.astype(np.float32, copy=False)
    # np.take with mode="wrap" (codes are uint16, always in range) skips bounds checks: ~2x fancy indexing
    return np.take(_q16_table(quant_step(spec)), codes, mode="wrap")


def _decode_labels(stored: np.ndarray, lengths: np.ndarray, spec: Spec) -> np.ndarray:
    """Stored label logprobs (every position but each sequence's last) -> ``[P] float32`` with NaN at the ends."""
    out = np.full(int(lengths.sum()), np.nan, dtype=np.float32)
    has_label = np.ones(len(out), dtype=bool)
    has_label[np.cumsum(lengths) - 1] = False
    out[has_label] = _q16_decode(stored, spec)
    return out
