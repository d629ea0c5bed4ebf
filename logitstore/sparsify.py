"""Sparsifiers: teacher logits ``[N, V]`` -> exact lse plus the kept entries of each position (ARCHITECTURE §3).

They run in torch on whatever device holds the logits (the GPU when there is one) and process positions in chunks,
so the fp32 copy of the logits, the float64 CDF of the ``sample`` method and the sort buffers never exceed
``chunk_elements`` at once. Only the sparse results need to cross to the host.

Batch invariance: every position is computed independently of the others, and the results are bit-identical
however positions are grouped into batches or chunks. Two details make that true and are easy to break:
reductions over the vocabulary accumulate in float64 (so a different summation order cannot change the float32
lse), and a chunk is never a single row (torch splits a lone row's reduction across threads, which changes the
order; a one-row chunk is computed as two identical rows instead). Ties at top-k's boundary are resolved by
``torch.topk`` (a function of the row alone); the order of the kept entries is canonical.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from logitstore.errors import InvalidInputError
from logitstore.spec import Spec

#: Default bound on ``rows * V`` elements materialized per chunk (1 Mi elements = 4 MiB of fp32). Small chunks
#: stay in cache and reuse allocator memory: at 2^26 the CPU spent most of its time faulting in fresh pages and
#: sparsify cost 3-6x a logsumexp pass instead of 0.9-1.4x (bench/precompute.py).
DEFAULT_CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class SparseLogits:
    """Sparse teacher distributions of N positions, entries grouped by position.

    Attributes:
        lse: ``[N] float32`` log-sum-exp of the raw logits (temperature 1).
        nnz: ``[N] int64`` entries kept per position.
        ids: ``[E] int32`` token ids, ``E = nnz.sum()``, in the spec's entry order.
        logprobs: ``[E] float32`` teacher log-probabilities of ``ids``.
        counts: ``[E] int32`` draws that hit each id (``sample`` only, else None).
        proposal_lse: ``[N] float32`` log-sum-exp of ``logits / proposal_temperature`` (``sample`` with a
            proposal temperature other than 1, else None).
        label_logprob: ``[N] float32`` log-probability of each position's label, NaN where it has none (spec
            ``label_logprob``, else None).
        logit_mean, logit_std: ``[N] float32`` mean and standard deviation (Bessel-corrected, as ``torch.std``)
            of the finite raw logits (spec ``logit_stats``, else None).
    """

    lse: torch.Tensor
    nnz: torch.Tensor
    ids: torch.Tensor
    logprobs: torch.Tensor
    counts: torch.Tensor | None = None
    proposal_lse: torch.Tensor | None = None
    label_logprob: torch.Tensor | None = None
    logit_mean: torch.Tensor | None = None
    logit_std: torch.Tensor | None = None

    def numpy(self) -> dict[str, np.ndarray | None]:
        """Host copies with the storage dtypes (``nnz`` as int32)."""
        out: dict[str, np.ndarray | None] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = None if value is None else (value.to(torch.int32) if name == "nnz" else value).cpu().numpy()
        return out


def sparsify(
    logits: torch.Tensor,
    spec: Spec,
    *,
    streams: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> SparseLogits:
    """Apply ``spec`` to ``logits [N, V]`` (any float dtype, any device).

    ``streams [N, 2]`` and ``positions [N]`` (see :func:`logitstore.rng.position_streams`) are required by the
    ``sample`` method and ignored otherwise. ``labels [N]`` (int, -1 where a position has none: the last of a
    sequence) are the tokens that follow each position, required when the spec stores ``label_logprob``.
    """
    if logits.ndim != 2 or not logits.is_floating_point():
        raise InvalidInputError(
            f"logits must be a floating-point [N, V] tensor, got shape {tuple(logits.shape)} dtype {logits.dtype}"
        )
    n_rows, vocab = logits.shape
    spec.check_vocab(vocab)
    if spec.method == "sample":
        if streams is None or positions is None:
            raise InvalidInputError("method 'sample' needs streams and positions (logitstore.rng.position_streams)")
        if streams.shape != (n_rows, 2) or positions.shape != (n_rows,):
            raise InvalidInputError(
                f"streams must be [{n_rows}, 2] and positions [{n_rows}], got {tuple(streams.shape)} and "
                f"{tuple(positions.shape)}"
            )
    if spec.label_logprob:
        if labels is None or labels.shape != (n_rows,):
            got = "none" if labels is None else f"shape {tuple(labels.shape)}"
            raise InvalidInputError(
                f"the spec stores label_logprob, so sparsify needs labels [{n_rows}] (the next token of each "
                f"position, -1 at a sequence's last), got {got}"
            )
        if labels.numel() and int(labels.max()) >= vocab:
            raise InvalidInputError(f"labels must be < the {vocab} logits, got {int(labels.max())}")
        labels = labels.to(logits.device)
    else:
        labels = None
    if streams is None or positions is None:  # unused by the deterministic methods
        streams = positions = torch.zeros((n_rows, 2), dtype=torch.int64, device=logits.device)
        positions = positions[:, 0]
    rows = max(2, chunk_elements // max(vocab, 1))
    parts = []
    for start in range(0, n_rows, rows):
        stop = min(start + rows, n_rows)
        z = logits[start:stop].float()
        lab = None if labels is None else labels[start:stop]
        if stop - start == 1:
            # torch splits a lone row's reduction across threads, changing its bits: compute two copies instead
            lab2 = None if lab is None else lab.expand(2)
            two = _apply(
                z.expand(2, -1), spec, streams[start:stop].expand(2, -1), positions[start:stop].expand(2), lab2
            )
            parts.append(_first_row(two))
        else:
            parts.append(_apply(z, spec, streams[start:stop], positions[start:stop], lab))
    if not parts:
        parts.append(_empty(logits.device, spec))
    return _concat(parts)


def _apply(
    z: torch.Tensor, spec: Spec, streams: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor | None
) -> SparseLogits:
    """One chunk ``z [R, V] float32`` through the spec's method, plus the optional per-position fields."""
    out = _method(z, spec, streams, positions)
    extra: dict[str, torch.Tensor] = {}
    if labels is not None:
        extra["label_logprob"] = _label_logprob(z, out.lse, labels)
    if spec.logit_stats:
        extra["logit_mean"], extra["logit_std"] = logit_stats(z)
    return replace(out, **extra) if extra else out


def _label_logprob(z: torch.Tensor, lse: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[R]``: ``z[t, labels[t]] - lse[t]`` (the same float32 arithmetic as the stored logprobs), NaN where
    ``labels[t] < 0``."""
    has = labels >= 0
    picked = z.gather(-1, labels.clamp(min=0).long()[:, None]).squeeze(-1) - lse
    return torch.where(has, picked, torch.full_like(picked, float("nan")))


def logit_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[R]`` mean and Bessel-corrected standard deviation of each row's finite logits, accumulated in float64
    (so the result does not depend on the summation order)."""
    finite = torch.isfinite(z)
    count = finite.sum(dim=-1).double()
    zz = torch.where(finite, z, torch.zeros_like(z)).double()
    mean = zz.sum(dim=-1) / count.clamp(min=1)
    var = (torch.square(zz - mean[:, None]) * finite).sum(dim=-1) / (count - 1).clamp(min=1)
    return mean.float(), torch.sqrt(var).float()


def _method(z: torch.Tensor, spec: Spec, streams: torch.Tensor, positions: torch.Tensor) -> SparseLogits:
    if spec.method == "dense":
        return _dense(z)
    if spec.method == "sample":
        assert spec.n is not None  # guaranteed by Spec
        return _sample(z, spec.n, spec.proposal_temperature, streams, positions)
    assert spec.k is not None  # guaranteed by Spec
    if spec.method == "topk":
        return _topk(z, spec.k)
    assert spec.p is not None
    return _topp(z, spec.p, spec.effective_k_min, spec.k)


def _first_row(out: SparseLogits) -> SparseLogits:
    first = int(out.nnz[0])

    def head(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
        return None if x is None else x[:n]

    return SparseLogits(
        lse=out.lse[:1],
        nnz=out.nnz[:1],
        ids=out.ids[:first],
        logprobs=out.logprobs[:first],
        counts=head(out.counts, first),
        proposal_lse=head(out.proposal_lse, 1),
        label_logprob=head(out.label_logprob, 1),
        logit_mean=head(out.logit_mean, 1),
        logit_std=head(out.logit_std, 1),
    )


def logsumexp(z: torch.Tensor, row_max: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, V] float32 -> [N] float32`` log-sum-exp whose value does not depend on the summation order.

    The max is exact (pass ``row_max [N]`` when it is already known); the sum of ``exp(z - max)`` accumulates in
    float64, so reordering (threads, batch shape, device) changes it by ~1e-16 relative, far below float32
    resolution.
    """
    m = z.amax(dim=-1, keepdim=True) if row_max is None else row_max[:, None]
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(z - m).sum(dim=-1, dtype=torch.float64)
    return (torch.log(s) + m.squeeze(-1).double()).float()


def _canonical_topk(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` largest of each row, descending, ties broken by ascending id (whatever topk's own tie order)."""
    vals, idx = torch.topk(z, k, dim=-1, largest=True, sorted=False)  # sorted below anyway
    idx, perm = torch.sort(idx, dim=-1)
    vals = torch.gather(vals, -1, perm)
    vals, perm = torch.sort(vals, dim=-1, descending=True, stable=True)
    return vals, torch.gather(idx, -1, perm)


def _topk(z: torch.Tensor, k: int) -> SparseLogits:
    vals, idx = _canonical_topk(z, k)
    lse = logsumexp(z, row_max=vals[:, 0])
    n = z.shape[0]
    return SparseLogits(
        lse=lse,
        nnz=torch.full((n,), k, dtype=torch.int64, device=z.device),
        ids=idx.to(torch.int32).reshape(-1),
        logprobs=(vals - lse[:, None]).reshape(-1),
    )


def _topp(z: torch.Tensor, p: float, k_min: int, k_max: int) -> SparseLogits:
    k_max = min(k_max, z.shape[-1])
    vals, idx = _canonical_topk(z, k_max)
    lse = logsumexp(z, row_max=vals[:, 0])
    logprobs = vals - lse[:, None]
    mass = torch.cumsum(torch.exp(logprobs.double()), dim=-1)
    # Smallest prefix whose mass reaches p: one past the number of prefixes still below p.
    keep = (mass < p).sum(dim=-1) + 1
    keep = keep.clamp(min=min(k_min, k_max), max=k_max)
    mask = torch.arange(k_max, device=z.device)[None, :] < keep[:, None]
    return SparseLogits(lse=lse, nnz=keep.to(torch.int64), ids=idx[mask].to(torch.int32), logprobs=logprobs[mask])


def _dense(z: torch.Tensor) -> SparseLogits:
    n, vocab = z.shape
    lse = logsumexp(z)
    return SparseLogits(
        lse=lse,
        nnz=torch.full((n,), vocab, dtype=torch.int64, device=z.device),
        ids=torch.arange(vocab, dtype=torch.int32, device=z.device).repeat(n),
        logprobs=(z - lse[:, None]).reshape(-1),
    )


def _sample(
    z: torch.Tensor, n: int, temperature: float, streams: torch.Tensor, positions: torch.Tensor
) -> SparseLogits:
    from logitstore.rng import uniforms

    rows, vocab = z.shape
    lse = logsumexp(z)
    if temperature == 1.0:
        qz, qlse = z, lse
    else:
        qz = z / temperature
        qlse = logsumexp(qz)
    # Inverse-CDF sampling on a float64 CDF: exact enough that even ~1e-12 probabilities keep their odds.
    cdf = torch.cumsum(torch.exp(qz - qlse[:, None]), dim=-1, dtype=torch.float64)
    u = uniforms(streams, positions, n) * cdf[:, -1:]
    draws = torch.searchsorted(cdf, u, right=True).clamp_(max=vocab - 1)
    flat = torch.sort(draws + torch.arange(rows, device=z.device)[:, None] * vocab, dim=-1).values.reshape(-1)
    uniq, counts = torch.unique_consecutive(flat, return_counts=True)
    row = torch.div(uniq, vocab, rounding_mode="floor")
    ids = uniq - row * vocab
    nnz = torch.bincount(row, minlength=rows)
    logprobs = z[row, ids] - lse[row]
    return SparseLogits(
        lse=lse,
        nnz=nnz,
        ids=ids.to(torch.int32),
        logprobs=logprobs,
        counts=counts.to(torch.int32),
        proposal_lse=None if temperature == 1.0 else qlse,
    )


def _empty(device: torch.device, spec: Spec) -> SparseLogits:
    f = torch.zeros(0, dtype=torch.float32, device=device)
    return SparseLogits(
        lse=f,
        nnz=torch.zeros(0, dtype=torch.int64, device=device),
        ids=torch.zeros(0, dtype=torch.int32, device=device),
        logprobs=f,
        counts=torch.zeros(0, dtype=torch.int32, device=device) if spec.has_counts else None,
        proposal_lse=f if spec.has_proposal_lse else None,
        label_logprob=f if spec.label_logprob else None,
        logit_mean=f if spec.logit_stats else None,
        logit_std=f if spec.logit_stats else None,
    )


def _concat(parts: list[SparseLogits]) -> SparseLogits:
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> torch.Tensor | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return SparseLogits(**{name: cat(name) for name in SparseLogits.__dataclass_fields__})  # type: ignore[arg-type]
