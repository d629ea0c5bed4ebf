"""``logitstore report``: what a dataset holds and what other settings would keep, measured, for choosing k or n.

:func:`analyze` reads a deterministic sample of a dataset and returns a :class:`Report`: per-position teacher
entropy (exact for dense caches; an unbiased Monte-Carlo estimate for sample caches; bounds for top-k / top-p),
kept teacher mass and entries per position, bytes per token by stored field (Parquet column-chunk sizes / Zarr
file sizes), and — from the audit sidecar (``--audit-fraction``) or a dense cache's own rows — quantities that are
exact functions of the full distributions: top-k kept mass and divergences, entries top-p needs, and the expected
support and kept mass of n draws. :func:`build_report` renders it (:mod:`logitstore.report_html`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from logitstore.audit import iter_audit
from logitstore.dataset import Dataset
from logitstore.errors import CorruptShardError, InvalidInputError, MissingDependencyError
from logitstore.fs import open_input
from logitstore.record import Record
from logitstore.rng import permutation

DEFAULT_MAX_POSITIONS = 100_000
DEFAULT_MAX_AUDIT_POSITIONS = 1_000
#: The per-position pass reads at most this many entries (bounds a dense cache's sample).
MAX_ENTRIES_READ = 1 << 26
#: Storage by field is measured on at most this many shards (evenly spaced).
MAX_SHARDS_MEASURED = 64
K_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
N_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOP_P = (0.9, 0.95, 0.99)
ENTRY_FIELDS = ("ids", "logprobs", "counts")
#: Rows of full distributions processed at once: ``rows * V`` float64 values per temporary array.
_CHUNK_VALUES = 1 << 22


@dataclass
class PositionStats:
    """Per-position quantities of the sampled sequences (``[P]`` arrays)."""

    sequences: int
    entries: np.ndarray
    kept_mass: np.ndarray
    #: dense: exact entropy; sample: unbiased estimate from the draws; topk/topp: lower bound
    entropy: np.ndarray
    #: topk/topp: upper bound (tail mass spread uniformly over the ids not stored); else None
    entropy_upper: np.ndarray | None
    entropy_kind: str  # "exact" | "estimate" | "bounds"

    @property
    def positions(self) -> int:
        return int(self.entries.shape[0])


@dataclass
class FieldBytes:
    name: str
    nbytes: int
    bytes_per_token: float
    per_entry: bool


@dataclass
class StorageStats:
    """Bytes per token by stored field, measured on ``shards_measured`` shards (and the whole key index)."""

    fields: list[FieldBytes]
    tokens: int
    entries: int
    shards_measured: int
    audit_bytes: int

    @property
    def bytes_per_token(self) -> float:
        return sum(f.bytes_per_token for f in self.fields)

    @property
    def bytes_per_entry(self) -> float:
        """Bytes of the per-entry columns (ids, logprobs, counts) per stored entry."""
        return sum(f.nbytes for f in self.fields if f.per_entry) / max(1, self.entries)

    @property
    def fixed_bytes_per_token(self) -> float:
        """Bytes per token that do not grow with entries (input_ids, lse, nnz, keys, footers, key index)."""
        return sum(f.bytes_per_token for f in self.fields if not f.per_entry)

    def estimate(self, entries_per_position: float) -> float:
        """Bytes per token of a setting keeping ``entries_per_position`` entries, at this dataset's cost per entry."""
        return self.fixed_bytes_per_token + entries_per_position * self.bytes_per_entry


@dataclass
class AuditCurves:
    """Quantities computed exactly from full distributions (``source``: ``audit`` sidecar or ``dense`` rows).

    Per-row arrays are ``[R, len(grid)]``; ``entropy`` is ``[R]``.
    """

    source: str
    entropy: np.ndarray
    ks: list[int]
    topk_mass: np.ndarray
    #: KL(renormalized top-k || p) = -log(kept mass): the divergence of a renormalized target from the teacher
    topk_kl_renorm: np.ndarray
    #: KL(p || top-k with the tail mass spread uniformly over the other ids): the tail-shape information not stored
    topk_kl_tail: np.ndarray
    top_p: list[float]
    topp_entries: np.ndarray
    ns: list[int]
    #: E[number of distinct ids in n draws] = sum_i 1 - (1 - p_i)^n
    sample_unique: np.ndarray
    #: E[teacher mass of the drawn ids] = sum_i p_i (1 - (1 - p_i)^n)
    sample_mass: np.ndarray
    #: E||c/n - p||^2 = (1 - sum_i p_i^2) / n, the squared error of the sampled target
    sample_sqerr: np.ndarray

    @property
    def positions(self) -> int:
        return int(self.entropy.shape[0])


@dataclass
class Report:
    summary: dict[str, Any]
    positions: PositionStats
    storage: StorageStats
    audit: AuditCurves | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The numbers of the report as plain JSON-able values (``report.json``)."""
        p = self.positions
        out: dict[str, Any] = {
            "summary": self.summary,
            "positions": {
                "sequences": p.sequences,
                "positions": p.positions,
                "entropy_kind": p.entropy_kind,
                "entropy": describe(p.entropy),
                "entropy_upper": None if p.entropy_upper is None else describe(p.entropy_upper),
                "kept_mass": describe(p.kept_mass),
                "entries": describe(p.entries),
            },
            "storage": {
                "shards_measured": self.storage.shards_measured,
                "bytes_per_token": self.storage.bytes_per_token,
                "bytes_per_entry": self.storage.bytes_per_entry,
                "fixed_bytes_per_token": self.storage.fixed_bytes_per_token,
                "audit_bytes": self.storage.audit_bytes,
                "fields": [vars(f) for f in self.storage.fields],
            },
            "audit": None,
            "notes": self.notes,
        }
        a = self.audit
        if a is not None:
            s = self.storage
            out["audit"] = {
                "source": a.source,
                "positions": a.positions,
                "entropy": describe(a.entropy),
                "topk": [
                    {
                        "k": k,
                        "kept_mass": float(a.topk_mass[:, i].mean()),
                        "kl_renorm": float(a.topk_kl_renorm[:, i].mean()),
                        "kl_tail": float(a.topk_kl_tail[:, i].mean()),
                        "bytes_per_token": s.estimate(k),
                    }
                    for i, k in enumerate(a.ks)
                ],
                "topp": [
                    {
                        "p": p_,
                        "entries": describe(a.topp_entries[:, i]),
                        "bytes_per_token": s.estimate(float(a.topp_entries[:, i].mean())),
                    }
                    for i, p_ in enumerate(a.top_p)
                ],
                "sample": [
                    {
                        "n": n,
                        "unique_ids": float(a.sample_unique[:, i].mean()),
                        "kept_mass": float(a.sample_mass[:, i].mean()),
                        "sq_error": float(a.sample_sqerr[:, i].mean()),
                        "bytes_per_token": s.estimate(float(a.sample_unique[:, i].mean())),
                    }
                    for i, n in enumerate(a.ns)
                ],
            }
        return out


def describe(x: np.ndarray) -> dict[str, float]:
    """Mean and quantiles of ``x`` (NaN-free), for tables."""
    if x.size == 0:
        return {"mean": float("nan"), "p10": float("nan"), "median": float("nan"), "p90": float("nan")}
    q = np.quantile(x, [0.1, 0.5, 0.9])
    return {"mean": float(np.mean(x)), "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2])}


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "logitstore report draws its plots with matplotlib, which is not installed: pip install "
            "'logitstore[report]' (or pip install matplotlib)"
        ) from None


def build_report(
    location: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    max_positions: int = DEFAULT_MAX_POSITIONS,
    max_audit_positions: int = DEFAULT_MAX_AUDIT_POSITIONS,
    seed: int = 0,
) -> str:
    """Analyze the dataset at ``location`` and write ``index.html``, its PNGs and ``report.json`` into the local
    directory ``out`` (created); returns the path of ``index.html``."""
    require_matplotlib()
    from logitstore.report_html import write_report

    report = analyze(location, max_positions=max_positions, max_audit_positions=max_audit_positions, seed=seed)
    return write_report(report, out)


def analyze(
    location: str | os.PathLike[str],
    *,
    max_positions: int = DEFAULT_MAX_POSITIONS,
    max_audit_positions: int = DEFAULT_MAX_AUDIT_POSITIONS,
    seed: int = 0,
) -> Report:
    """The numbers of the report (see the module docstring); reads about ``max_positions`` positions of whole
    sequences chosen by a permutation seeded with ``seed``, and at most ``max_audit_positions`` full rows."""
    for name, value in (("max_positions", max_positions), ("max_audit_positions", max_audit_positions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
    with Dataset(location) as ds:
        m = ds.manifest
        notes: list[str] = []
        records = _sample_records(ds, max_positions, seed, notes)
        positions, dense_rows = _position_stats(records, ds, max_audit_positions, seed)
        storage = _storage(ds, notes)
        audit = None
        if m.audit is not None:
            files = m.audit.files
            chunks = iter_audit(ds.fs, ds.root, files, m.vocab_size, max_positions=max_audit_positions, seed=seed)
            try:
                audit = curves(chunks, m.vocab_size, source="audit", extra_k=m.spec.k, extra_n=m.spec.n)
            except CorruptShardError as exc:  # e.g. read through the service, which does not serve audit/
                notes.append(f"The audit sidecar could not be read here, so there are no audit curves: {exc}")
        elif dense_rows is not None:
            audit = curves(iter([dense_rows]), m.vocab_size, source="dense")
            notes.append(
                "A dense cache is its own audit: the curves use its rows. Its bytes per entry has no ids column, so "
                "the bytes/token estimates of sparse settings are low by the cost of storing ids."
            )
        if audit is not None and m.spec.method == "sample" and m.spec.proposal_temperature != 1.0:
            notes.append(
                "The sampling curves describe draws from the teacher itself (proposal temperature 1), not this "
                f"cache's proposal temperature {m.spec.proposal_temperature}."
            )
        if m.audit is not None and audit is not None and audit.positions < m.audit.num_positions:
            notes.append(
                f"Audit curves use {audit.positions:,} of the {m.audit.num_positions:,} audited positions "
                f"(seeded subset; raise --max-audit-positions for more)."
            )
        summary = _summary(ds, location, positions, audit)
    return Report(summary=summary, positions=positions, storage=storage, audit=audit, notes=notes)


def _summary(ds: Dataset, location: str | os.PathLike[str], pos: PositionStats, audit: AuditCurves | None) -> dict:
    m = ds.manifest
    assert m.stats is not None
    enc = m.spec.encoding
    return {
        "name": m.name,
        "location": os.fspath(location),
        "teacher": m.teacher.name,
        "vocab_size": m.vocab_size,
        "teacher_dtype": m.teacher.dtype,
        "tokenizer": m.tokenizer.name,
        "method": m.spec.describe(),
        "method_name": m.spec.method,
        "k": m.spec.k,
        "n": m.spec.n,
        "encoding": "lossless (float32)" if enc.lossless else f"q16, logprob error <= {enc.error_bound} nats",
        "backend": m.backend,
        "sequences": m.num_sequences,
        "tokens": m.num_tokens,
        "shards": len(m.shards),
        "bytes_per_token": m.stats.bytes_per_token,
        "mean_kept_mass": m.stats.mean_kept_mass,
        "mean_entries_per_position": m.stats.mean_entries_per_position,
        "audit_fraction": None if m.audit is None else m.audit.fraction,
        "audit_positions": None if m.audit is None else m.audit.num_positions,
        "analysed_sequences": pos.sequences,
        "analysed_positions": pos.positions,
        "analysed_audit_positions": None if audit is None else audit.positions,
    }


# -- per-position statistics --------------------------------------------------------------------------------------


def _sample_records(ds: Dataset, max_positions: int, seed: int, notes: list[str]) -> list[Record]:
    """Whole sequences, about ``max_positions`` positions (and at most :data:`MAX_ENTRIES_READ` entries), chosen by
    a seeded permutation and read in seq_id order (each row group decoded once)."""
    m = ds.manifest
    n = m.num_sequences
    entries = sum(s.num_entries for s in m.shards)
    per_seq_tokens = m.num_tokens / max(1, n)
    per_seq_entries = entries / max(1, n)
    want = min(max_positions / max(per_seq_tokens, 1e-9), MAX_ENTRIES_READ / max(per_seq_entries, 1e-9))
    count = max(1, int(np.ceil(want)))
    if count >= n:
        return list(ds)
    chosen = np.sort(permutation(n, seed, 0x5E9)[:count])
    notes.append(
        f"Per-position statistics come from {count:,} of {n:,} sequences chosen by a permutation seeded with "
        f"{seed} (raise --max-positions for more)."
    )
    return [ds[int(s)] for s in chosen]


def _position_stats(
    records: list[Record], ds: Dataset, max_rows: int, seed: int
) -> tuple[PositionStats, np.ndarray | None]:
    """Per-position statistics; for a dense cache also up to ``max_rows`` of its rows ``[R, V]`` (seeded subset)."""
    m = ds.manifest
    spec, vocab = m.spec, m.vocab_size
    nnz = np.concatenate([r.nnz for r in records]).astype(np.int64)
    lp = np.concatenate([r.logprobs for r in records]).astype(np.float64)
    pos = np.repeat(np.arange(len(nnz)), nnz)
    p = np.exp(lp)
    mass = np.bincount(pos, weights=p, minlength=len(nnz))
    plogp = np.where(p > 0, p * np.where(np.isfinite(lp), lp, 0.0), 0.0)
    stored = -np.bincount(pos, weights=plogp, minlength=len(nnz))  # -sum over stored ids of p log p
    entropy: np.ndarray
    upper: np.ndarray | None = None
    dense_rows = None
    if spec.method == "dense":
        # entropy of the stored row renormalized (q16 rounding makes the sum differ from 1 by up to ~2%)
        entropy = stored / mass + np.log(mass)
        kind = "exact"
        rows = lp.reshape(len(nnz), vocab)
        pick = np.sort(permutation(len(nnz), seed, 0xDE5)[:max_rows]) if len(nnz) > max_rows else slice(None)
        dense_rows = rows[pick]
    elif spec.method == "sample":
        counts = np.concatenate([r.counts for r in records]).astype(np.float64)  # type: ignore[misc]
        w = counts / float(spec.n)  # type: ignore[arg-type]
        if spec.has_proposal_lse:
            lse = np.concatenate([r.lse for r in records]).astype(np.float64)[pos]
            plse = np.concatenate([r.proposal_lse for r in records]).astype(np.float64)[pos]  # type: ignore[misc]
            w = w * np.exp(lp - ((lp + lse) / spec.proposal_temperature - plse))  # importance weights p / q
        entropy = np.bincount(pos, weights=w * np.where(np.isfinite(lp), -lp, 0.0), minlength=len(nnz))
        kind = "estimate"
    else:
        tail = np.clip(1.0 - mass, 0.0, None)
        starts = np.cumsum(nnz) - nnz
        nonempty = nnz > 0
        p_min = np.zeros(len(nnz))
        p_min[nonempty] = np.minimum.reduceat(p, starts[nonempty])
        with np.errstate(divide="ignore", invalid="ignore"):
            low_tail = np.where((p_min > 0) & (tail > 0), tail * -np.log(np.where(p_min > 0, p_min, 1.0)), 0.0)
            rest = vocab - nnz
            high_tail = np.where(
                (tail > 0) & (rest > 0), tail * np.log(np.maximum(rest, 1) / np.where(tail > 0, tail, 1)), 0.0
            )
        entropy = stored + low_tail
        upper = stored + np.maximum(high_tail, low_tail)
        kind = "bounds"
    stats = PositionStats(
        sequences=len(records),
        entries=nnz,
        kept_mass=mass,
        entropy=entropy,
        entropy_upper=upper,
        entropy_kind=kind,
    )
    return stats, dense_rows


# -- storage ------------------------------------------------------------------------------------------------------


def _storage(ds: Dataset, notes: list[str]) -> StorageStats:
    m = ds.manifest
    shards = list(m.shards)
    if len(shards) > MAX_SHARDS_MEASURED:
        idx = np.unique(np.linspace(0, len(shards) - 1, MAX_SHARDS_MEASURED).round().astype(int))
        shards = [shards[i] for i in idx]
        notes.append(f"Bytes by field are measured on {len(shards)} of {len(m.shards)} shards (evenly spaced).")
    sizes: dict[str, int] = {}
    for info in shards:
        path = f"{ds.root}/{info.path}"
        found = _parquet_fields(ds, path) if m.backend == "parquet" else _zarr_fields(ds, path)
        other = info.nbytes - sum(found.values())
        if other:
            found["(footer, metadata)"] = found.get("(footer, metadata)", 0) + other
        for name, n in found.items():
            sizes[name] = sizes.get(name, 0) + n
    tokens = sum(s.num_tokens for s in shards)
    entries = sum(s.num_entries for s in shards)
    fields = [
        FieldBytes(name=name, nbytes=n, bytes_per_token=n / max(1, tokens), per_entry=name in ENTRY_FIELDS)
        for name, n in sorted(sizes.items(), key=lambda kv: -kv[1])
    ]
    # the key index is one file for the whole dataset: per token over every token
    fields.append(
        FieldBytes(
            name="keys.idx",
            nbytes=m.key_index.nbytes,
            bytes_per_token=m.key_index.nbytes / max(1, m.num_tokens),
            per_entry=False,
        )
    )
    audit_bytes = 0 if m.audit is None else m.audit.nbytes
    return StorageStats(
        fields=fields, tokens=tokens, entries=entries, shards_measured=len(shards), audit_bytes=audit_bytes
    )


def _parquet_fields(ds: Dataset, path: str) -> dict[str, int]:
    """Compressed bytes of each record field (its column chunks incl. page headers) from the Parquet footer."""
    import pyarrow.parquet as pq

    from logitstore.formats.parquet import field_of

    out: dict[str, int] = {}
    with open_input(ds.fs, path) as f:
        md = pq.ParquetFile(f).metadata
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                name = field_of(col.path_in_schema.split(".")[0])  # ids_raw counts as ids, etc.
                out[name] = out.get(name, 0) + int(col.total_compressed_size)
    return out


def _zarr_fields(ds: Dataset, path: str) -> dict[str, int]:
    """Bytes stored under each array of a Zarr group (chunks and the array's zarr.json)."""
    out: dict[str, int] = {}
    base = path.rstrip("/") + "/"
    for file, info in ds.fs.find(path, detail=True).items():
        rel = file[len(base) :] if file.startswith(base) else file.rsplit("/", 1)[-1]
        top = rel.split("/", 1)[0] if "/" in rel else "(footer, metadata)"
        out[top] = out.get(top, 0) + int(info["size"])
    return out


# -- exact curves from full distributions -------------------------------------------------------------------------


def curves(
    chunks: Any, vocab_size: int, *, source: str, extra_k: int | None = None, extra_n: int | None = None
) -> AuditCurves | None:
    """:class:`AuditCurves` of full log-softmax rows, given as an iterable of ``[R, V]`` arrays or objects with a
    ``logprobs`` attribute (:class:`logitstore.audit.AuditRows`); None when there are no rows. The k grid is
    :data:`K_GRID` capped at V (plus V itself when V is on the grid's scale), the n grid :data:`N_GRID`; ``extra_k``
    / ``extra_n`` (the dataset's own setting) are added."""
    ks_set = {k for k in K_GRID if k <= vocab_size}
    if vocab_size <= K_GRID[-1]:
        ks_set.add(vocab_size)
    if extra_k is not None:
        ks_set.add(min(extra_k, vocab_size))
    ks = sorted(ks_set)
    ns = sorted(set(N_GRID) | ({extra_n} if extra_n is not None else set()))
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in chunks:
        rows = chunk.logprobs if hasattr(chunk, "logprobs") else chunk
        step = max(1, _CHUNK_VALUES // max(1, vocab_size))
        for r0 in range(0, len(rows), step):
            for name, value in _row_curves(rows[r0 : r0 + step], ks, ns).items():
                parts.setdefault(name, []).append(value)
    if not parts:
        return None
    cat = {name: np.concatenate(values) for name, values in parts.items()}
    return AuditCurves(
        source=source,
        entropy=cat["entropy"],
        ks=ks,
        topk_mass=cat["topk_mass"],
        topk_kl_renorm=cat["topk_kl_renorm"],
        topk_kl_tail=cat["topk_kl_tail"],
        top_p=list(TOP_P),
        topp_entries=cat["topp_entries"],
        ns=ns,
        sample_unique=cat["sample_unique"],
        sample_mass=cat["sample_mass"],
        sample_sqerr=cat["sample_sqerr"],
    )


def _row_curves(logprobs: np.ndarray, ks: list[int], ns: list[int]) -> dict[str, np.ndarray]:
    """Per-row quantities of ``logprobs [R, V]`` (renormalized in float64: float16 rows sum to 1 within ~1e-3).

    Every quantity is a symmetric function of a row, so the row is sorted once (float32, descending) and all of
    them are computed from the sorted probabilities.
    """
    x = np.sort(logprobs.astype(np.float32), axis=1)[:, ::-1].astype(np.float64)
    x -= x[:, :1]
    s = np.exp(x)  # descending probabilities
    total = s.sum(axis=1, keepdims=True)
    s /= total
    vocab = s.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(s > 0, s * (x - np.log(total)), 0.0)  # log s = x - log(total)
    cum = np.cumsum(s, axis=1)
    cum_plogp = np.cumsum(plogp, axis=1)
    total_plogp = cum_plogp[:, -1]
    entropy = -total_plogp
    kidx = np.array(ks) - 1
    mass = np.minimum(cum[:, kidx], 1.0)
    tail = np.clip(1.0 - mass, 0.0, None)
    rest = vocab - np.array(ks)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_renorm = -np.log(mass)
        spread = np.where(tail > 0, tail * np.log(np.where(tail > 0, tail, 1.0) / np.maximum(rest, 1)), 0.0)
        kl_tail = np.clip(total_plogp[:, None] - cum_plogp[:, kidx] - spread, 0.0, None)
    kl_tail = np.where(rest > 0, kl_tail, 0.0)
    topp = np.stack([np.minimum((cum < q).sum(axis=1) + 1, vocab) for q in TOP_P], axis=1).astype(np.float64)
    p32 = s.astype(np.float32)
    with np.errstate(divide="ignore"):
        log_miss = np.log1p(-np.minimum(p32, np.float32(1.0)))  # log(1 - p_i); -inf where p_i = 1
    unique = np.empty((len(s), len(ns)))
    kept = np.empty((len(s), len(ns)))
    for i, n in enumerate(ns):
        hit = -np.expm1(np.float32(n) * log_miss)  # 1 - (1 - p_i)^n, float32: sums below are float64
        unique[:, i] = hit.sum(axis=1, dtype=np.float64)
        kept[:, i] = np.einsum("ij,ij->i", p32, hit, dtype=np.float64)
    collision = (s * s).sum(axis=1)
    sqerr = (1.0 - collision)[:, None] / np.array(ns, dtype=np.float64)[None, :]
    return {
        "entropy": entropy,
        "topk_mass": mass,
        "topk_kl_renorm": kl_renorm,
        "topk_kl_tail": kl_tail,
        "topp_entries": topp,
        "sample_unique": unique,
        "sample_mass": kept,
        "sample_sqerr": sqerr,
    }
