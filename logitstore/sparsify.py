"""Sparsifiers: teacher logits ``[N, V]`` -> exact lse plus the kept entries of each position (ARCHITECTURE §3).

They run in torch on whatever device holds the logits (the GPU when there is one) and process positions in chunks,
so the fp32 copy of the logits and the sort buffers never exceed ``chunk_elements`` at once. Only the sparse
results need to cross to the host. On the CPU, where a selection or a float64 pass over all V logits costs several
times the exponentials themselves, top-k and the sum of exponentials work on a ``[GROUP_ROWS, V / GROUP_ROWS]``
view of the vocabulary (group maxima, then a selection among the few groups that can hold the top k), and the
sampler inverts a two-level CDF (group masses, then one group's members); the CPU top-k's selections are numpy's.

Batch invariance: every position is computed independently of the others, and the results are bit-identical
however positions are grouped into batches or chunks. Three details make that true and are easy to break: sums
over the vocabulary run in an order fixed by V alone (float32 column sums of the group view, then float64; float64
throughout on CUDA), a chunk is never a single row (torch splits a lone row's reduction across threads, which
changes the order; a one-row chunk is computed as two identical rows instead), and ties at top-k's k-th value keep
the smallest ids, whichever algorithm found the set. The kept entries are ordered by descending value, then id.

Logits that are NaN are refused (InvalidInputError naming the rows) rather than stored.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np
import torch

from logitstore.errors import InvalidInputError
from logitstore.rng import uniforms
from logitstore.spec import Spec

#: Default bound on ``rows * V`` elements materialized per chunk (1 Mi elements = 4 MiB of fp32). Small chunks
#: stay in cache and reuse allocator memory: at 2^26 the CPU spent most of its time faulting in fresh pages and
#: sparsify cost 3-6x a logsumexp pass instead of 0.9-1.4x (bench/precompute.py).
DEFAULT_CHUNK_ELEMENTS = 1 << 20

#: Rows of the ``[GROUP_ROWS, V // GROUP_ROWS]`` view of the vocabulary (id ``g + G * i``) on which the CPU top-k,
#: the CPU sum of exponentials and the two-level sampler work: G group maxima / masses stand in for V logits in
#: every step but one vectorized pass, so each method reads the logits about once (bench/precompute.py).
GROUP_ROWS = 16

#: Changes whenever the same logits and spec could give different bytes (2: grouped CPU top-k with ties keeping the
#: smallest ids, column-sum lse, two-level sampler). A precompute job records it and refuses to resume across it.
ALGORITHM_VERSION = 2

#: Rows whose sample uniforms are generated together (8192 x n float64: 3.2 MiB at n = 50).
_UNIFORM_ROWS = 8192


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
    rows = max(2, chunk_elements // max(vocab, 1))
    # the sample method's uniforms, computed for many chunks at once (their cost is per tensor op, not per value)
    block = rows * max(1, _UNIFORM_ROWS // rows)
    u_block: torch.Tensor | None = None
    work = _scratch(min(rows, max(n_rows, 2)), vocab, logits.device)
    parts = []
    nan_rows = []
    for start in range(0, n_rows, rows):
        stop = min(start + rows, n_rows)
        if spec.method == "sample" and start % block == 0:
            assert spec.n is not None and streams is not None and positions is not None  # checked above
            end = min(start + block, n_rows)
            u_block = uniforms(streams[start:end], positions[start:end], spec.n)
        u = None if u_block is None else u_block[start % block : start % block + stop - start]
        lab = None if labels is None else labels[start:stop]
        if stop - start == 1:
            # torch splits a lone row's reduction across threads, changing its bits: compute two copies instead
            z = logits[start:stop].float().expand(2, -1)
            u = None if u is None else u.expand(2, -1)
            lab = None if lab is None else lab.expand(2)
        else:
            z = logits[start:stop].float()
        chunk = _Chunk.of(z, work[: z.shape[0]])
        nan_rows.append(torch.isnan(chunk.m[: stop - start]))  # checked once at the end (no device sync per chunk)
        out = _apply(chunk, spec, u, lab)
        parts.append(_first_row(out) if stop - start == 1 else out)
    if not parts:
        parts.append(_empty(logits.device, spec))
    nan = torch.cat(nan_rows) if nan_rows else torch.zeros(0, dtype=torch.bool)
    if bool(nan.any()):
        where = nan.nonzero().squeeze(1)
        raise InvalidInputError(
            f"the teacher's logits are NaN at {len(where)} of {n_rows} positions (first at row {int(where[0])}); "
            "nothing was stored for them. A float16 overflow in the teacher is the usual cause: run it in bfloat16 "
            "or float32"
        )
    return _concat(parts)


@dataclass(frozen=True)
class _Chunk:
    """A chunk of positions and what every method reuses from it.

    Attributes:
        z: ``[R, V] float32`` logits.
        m: ``[R]`` row maxima (NaN where a row holds one).
        gmax: ``[R, G]`` maxima of the groups of the ``[GROUP_ROWS, G]`` view (CPU only, else None).
        work: ``[R, Vp]`` scratch for the exponentials, ``Vp`` = V rounded up to whole groups, zero past V.
    """

    z: torch.Tensor
    m: torch.Tensor
    gmax: torch.Tensor | None
    work: torch.Tensor

    @classmethod
    def of(cls, z: torch.Tensor, work: torch.Tensor) -> _Chunk:
        rows, vocab = z.shape
        groups = vocab // GROUP_ROWS
        if z.device.type != "cpu" or groups == 0:
            return cls(z, z.amax(dim=-1), None, work)
        # on the CPU the group maxima are one vectorized pass, and the row maxima follow from them
        main = GROUP_ROWS * groups
        gmax = _group_max(z)
        m = gmax.amax(dim=-1)
        return cls(z, torch.maximum(m, z[:, main:].amax(dim=-1)) if main < vocab else m, gmax, work)

    @property
    def exp_out(self) -> torch.Tensor:
        """The scratch's ``[R, V]`` part."""
        return self.work[:, : self.z.shape[1]]


def _group_max(z: torch.Tensor) -> torch.Tensor:
    """``[R, G]`` maxima of the groups of the ``[GROUP_ROWS, G]`` view of ``z [R, V]`` (id ``g + G * i``)."""
    rows, vocab = z.shape
    groups = vocab // GROUP_ROWS
    return z[:, : GROUP_ROWS * groups].view(rows, GROUP_ROWS, groups).amax(dim=1)


def _scratch(rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    """A zeroed ``[rows, Vp]`` float32 buffer (V rounded up to whole groups), reused across calls by this thread:
    a fresh multi-MiB temporary per chunk costs the CPU page faults worth several passes over the logits. Only the
    first V columns are ever written, so the padding stays zero mass."""
    padded = GROUP_ROWS * -(-vocab // GROUP_ROWS)
    key = (str(device), vocab)
    cached = getattr(_SCRATCH, "buffers", {}).get(key)
    if cached is None or cached.shape[0] < rows:
        cached = torch.zeros((rows, padded), dtype=torch.float32, device=device)
        _SCRATCH.buffers = {key: cached}  # one buffer per thread: the last shape used
    return cached[:rows]


_SCRATCH = threading.local()


def _apply(chunk: _Chunk, spec: Spec, u: torch.Tensor | None, labels: torch.Tensor | None) -> SparseLogits:
    """One chunk through the spec's method (``u [R, n]``: the sample method's uniforms), plus the optional
    per-position fields."""
    out = _method(chunk, spec, u)
    extra: dict[str, torch.Tensor] = {}
    if labels is not None:
        extra["label_logprob"] = _label_logprob(chunk.z, out.lse, labels)
    if spec.logit_stats:
        extra["logit_mean"], extra["logit_std"] = logit_stats(chunk.z)
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


def _method(chunk: _Chunk, spec: Spec, u: torch.Tensor | None) -> SparseLogits:
    z = chunk.z
    if spec.method == "sample":
        assert u is not None  # sparsify draws them for the sample method
        return _sample(chunk, spec.proposal_temperature, u)
    lse = logsumexp(z, row_max=chunk.m, out=chunk.exp_out)
    if spec.method == "dense":
        return _dense(z, lse)
    assert spec.k is not None  # guaranteed by Spec
    if spec.method == "topk":
        return _topk(chunk, lse, spec.k)
    assert spec.p is not None
    return _topp(chunk, lse, spec.p, spec.effective_k_min, spec.k)


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


def logsumexp(z: torch.Tensor, row_max: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, V] float32 -> [N] float32`` log-sum-exp whose value does not depend on the batch or chunk shape.

    The max is exact (pass ``row_max [N]`` when it is already known); the sum of ``exp(z - max)`` is accumulated
    in an order fixed by V alone (see :func:`_mass`), so regrouping rows cannot change the float32 result.
    ``out [N, V]`` (optional) is scratch for the exponentials.
    """
    m = _finite(z.amax(dim=-1) if row_max is None else row_max)
    return _lse(_shifted_exp(z, m, out), m)


def _finite(m: torch.Tensor) -> torch.Tensor:
    """Row maxima with -inf (a fully masked row) replaced by 0, so ``z - m`` stays -inf rather than NaN."""
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _shifted_exp(z: torch.Tensor, m: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``[R, V] float32``: ``exp(z - m[:, None])``, written to ``out`` when given (else one temporary), the
    exponent taken in place."""
    return (torch.sub(z, m[:, None]) if out is None else torch.sub(z, m[:, None], out=out)).exp_()


def _lse(e: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``[R] float32`` log-sum-exp from ``e = exp(z - m) [R, V]`` and the shift ``m [R]``."""
    return (torch.log(_mass(e)) + m.double()).float()


def _mass(e: torch.Tensor) -> torch.Tensor:
    """``[R] float64`` row sums of ``e [R, V]`` (non-negative), in an order that depends on V alone.

    On the CPU the first ``GROUP_ROWS * G`` entries are summed as GROUP_ROWS-long columns of the ``[GROUP_ROWS, G]``
    view in float32 (a vectorized pass, each column added in a fixed order; relative error ~1e-7), then the G column
    sums and the remainder in float64. Elsewhere (CUDA) the row is accumulated in float64 directly, which costs
    nothing there and makes any reduction order equivalent.
    """
    rows, vocab = e.shape
    groups = vocab // GROUP_ROWS
    if e.device.type != "cpu" or groups == 0:
        return e.sum(dim=-1, dtype=torch.float64)
    main = GROUP_ROWS * groups
    total = e[:, :main].view(rows, GROUP_ROWS, groups).sum(dim=1).sum(dim=-1, dtype=torch.float64)
    return total + e[:, main:].sum(dim=-1, dtype=torch.float64) if main < vocab else total


def _canonical_topk(z: torch.Tensor, k: int, gmax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[R, k]`` values and int64 ids of the ``k`` largest of each row of ``z [R, V]``, ordered by descending
    value then ascending id; where the k-th value is tied, the tied ids kept are the smallest. The result is a
    function of the row alone, whichever path computes it. ``gmax [R, G]``: the group maxima, when known."""
    if z.device.type == "cpu" and z.shape[1] // GROUP_ROWS >= 4 * k:
        return _canonical_order(*_grouped_topk(z, k, gmax))
    return _canonical_order(*_full_topk(z, k))


def _canonical_order(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``vals, idx [R, k]`` reordered by descending value, then ascending id."""
    idx, perm = torch.sort(idx, dim=-1)
    vals, perm = torch.sort(torch.gather(vals, -1, perm), dim=-1, descending=True, stable=True)
    return vals, torch.gather(idx, -1, perm)


def _full_topk(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k set (unordered) by ``torch.topk`` over whole rows (any device), with ties at the k-th value
    settled by a stable sort of the rows where torch.topk's own choice could differ."""
    vals, idx = torch.topk(z, k, dim=-1, largest=True, sorted=False)
    tied = (z >= vals.amin(dim=-1, keepdim=True)).sum(dim=-1) > k
    return _settle_ties(z, tied, vals, idx)


def _grouped_topk(z: torch.Tensor, k: int, gmax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k set (unordered) of CPU rows without a selection over all V logits.

    The first ``GROUP_ROWS * G`` ids form G groups (id ``g + G * i``, i < GROUP_ROWS) whose maxima are one
    vectorized pass. The k groups with the largest maxima hold k values >= the smallest of those maxima ``thr``,
    so the k-th largest logit is >= ``thr`` and every logit above ``thr`` lies in those groups: the top k are
    selected among their ``GROUP_ROWS * k`` members plus the ``V mod GROUP_ROWS`` remainder ids. A row where a value
    equal to a threshold could lie outside the selection (ties) is settled on its whole row.
    """
    rows, vocab = z.shape
    groups = vocab // GROUP_ROWS
    main = GROUP_ROWS * groups
    gmax = _group_max(z) if gmax is None else gmax
    chosen, tied_groups = _k_largest_positions(gmax.numpy(), k)  # [R, k] group ids
    cand = (chosen[:, None, :] + groups * np.arange(GROUP_ROWS)[None, :, None]).reshape(rows, -1)
    if main < vocab:
        cand = np.concatenate([cand, np.broadcast_to(np.arange(main, vocab), (rows, vocab - main))], axis=1)
    cval = np.take(z.detach().numpy().ravel(), cand + vocab * np.arange(rows)[:, None])  # [R, C]
    pick, tied_members = _k_largest_positions(cval, k)
    vals = np.take(cval.ravel(), pick + cval.shape[1] * np.arange(rows)[:, None])
    idx = np.take(cand.ravel(), pick + cand.shape[1] * np.arange(rows)[:, None])
    tied = torch.from_numpy(tied_groups | tied_members)
    return _settle_ties(z, tied, torch.from_numpy(vals), torch.from_numpy(idx).long())


def _k_largest_positions(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``[R, k]`` (ascending) of the k largest entries of each row of ``x [R, C]``, and ``[R] bool``:
    rows whose k-th largest value is shared by more than k entries, where the positions returned are arbitrary."""
    rows, cols = x.shape
    kth = np.partition(x, cols - k, axis=1)[:, cols - k]
    keep = x >= kth[:, None]
    tied = keep.sum(axis=1) != k
    if tied.any():  # any k entries keep the shape; the caller recomputes these rows
        keep[tied] = np.arange(cols) < k
    return (np.flatnonzero(keep) - np.repeat(cols * np.arange(rows), k)).reshape(rows, k), tied


def _settle_ties(
    z: torch.Tensor, tied: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the rows flagged ``tied [R]`` by the first k of a stable descending sort of their whole row (ties
    keep ascending id order): rare for float32 logits, common for bfloat16 ones."""
    if bool(tied.any()):
        k = vals.shape[1]
        r = tied.nonzero().squeeze(1).to(z.device)
        sv, si = torch.sort(z[r], dim=-1, descending=True, stable=True)
        vals, idx = vals.clone(), idx.clone()
        vals[r], idx[r] = sv[:, :k], si[:, :k]
    return vals, idx


def _topk(chunk: _Chunk, lse: torch.Tensor, k: int) -> SparseLogits:
    z = chunk.z
    vals, idx = _canonical_topk(z, k, chunk.gmax)
    n = z.shape[0]
    return SparseLogits(
        lse=lse,
        nnz=torch.full((n,), k, dtype=torch.int64, device=z.device),
        ids=idx.to(torch.int32).reshape(-1),
        logprobs=(vals - lse[:, None]).reshape(-1),
    )


def _topp(chunk: _Chunk, lse: torch.Tensor, p: float, k_min: int, k_max: int) -> SparseLogits:
    z = chunk.z
    k_max = min(k_max, z.shape[-1])
    vals, idx = _canonical_topk(z, k_max, chunk.gmax)
    logprobs = vals - lse[:, None]
    mass = torch.cumsum(torch.exp(logprobs.double()), dim=-1)
    # Smallest prefix whose mass reaches p: one past the number of prefixes still below p.
    keep = (mass < p).sum(dim=-1) + 1
    keep = keep.clamp(min=min(k_min, k_max), max=k_max)
    mask = torch.arange(k_max, device=z.device)[None, :] < keep[:, None]
    return SparseLogits(lse=lse, nnz=keep.to(torch.int64), ids=idx[mask].to(torch.int32), logprobs=logprobs[mask])


def _dense(z: torch.Tensor, lse: torch.Tensor) -> SparseLogits:
    n, vocab = z.shape
    return SparseLogits(
        lse=lse,
        nnz=torch.full((n,), vocab, dtype=torch.int64, device=z.device),
        ids=torch.arange(vocab, dtype=torch.int32, device=z.device).repeat(n),
        logprobs=(z - lse[:, None]).reshape(-1),
    )


def _sample(chunk: _Chunk, temperature: float, u: torch.Tensor) -> SparseLogits:
    """``u [R, n]``: each draw's uniform (see :func:`logitstore.rng.uniforms`)."""
    z, e = chunk.z, chunk.exp_out
    rows, vocab = z.shape
    lse = logsumexp(z, row_max=chunk.m, out=e)
    qlse = lse
    if temperature != 1.0:  # the proposal's exponentials replace the teacher's in the scratch
        qm = _finite(chunk.m) / temperature  # the max of z / t, exactly (division by t > 0 is monotonic)
        qlse = _lse(_shifted_exp(torch.div(z, temperature, out=e), qm, e), qm)
    draws = _inverse_cdf(chunk.work, vocab, u)
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


def _inverse_cdf(e: torch.Tensor, vocab: int, u: torch.Tensor) -> torch.Tensor:
    """``[R, n] int64`` ids drawn by inverting each row's CDF of the unnormalized masses ``e [R, GROUP_ROWS * G]``
    (the V ids' masses, then zeros) at the uniforms ``u [R, n]`` (float64 in [0, 1)).

    Two levels. The vocabulary, padded with zero mass to ``GROUP_ROWS * G`` ids, is viewed as
    ``[GROUP_ROWS, G]``: a draw finds its group g on the float64 CDF of the G group masses (float32 column sums,
    one vectorized pass), then its member i (id ``g + G * i``) by rescaling its residual within the group to that
    group's float64 running sum of GROUP_ROWS masses. The logits are read once instead of forming a V-long float64
    CDF per row; group masses are exact to ~1e-7 relative, and within a group even ~1e-12 probabilities keep
    their odds.
    """
    rows, padded = e.shape
    groups = padded // GROUP_ROWS
    grid = e.view(rows, GROUP_ROWS, groups)
    mass = grid.sum(dim=1).double()  # [R, G]
    cdf = torch.cumsum(mass, dim=-1)
    target = u * cdf[:, -1:]
    g = torch.searchsorted(cdf, target, right=True).clamp_(max=groups - 1)  # [R, n]
    residual = (target - (cdf.gather(-1, g) - mass.gather(-1, g))) / mass.gather(-1, g)  # in [0, 1) up to rounding
    members = grid.gather(-1, g[:, None, :].expand(rows, GROUP_ROWS, -1)).transpose(1, 2)  # [R, n, GROUP_ROWS]
    running = torch.cumsum(members, dim=-1, dtype=torch.float64)
    i = torch.searchsorted(running, (residual * running[..., -1])[..., None], right=True)
    return (g + groups * i.clamp_(max=GROUP_ROWS - 1).squeeze(-1)).clamp_(max=vocab - 1)


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
