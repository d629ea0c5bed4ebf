"""The sparsifiers against plain float64 references: exact lse, top-k/top-p semantics, unbiased sampling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from logitstore import Spec
from logitstore import sparsify as sparsify_module
from logitstore.errors import InvalidInputError
from logitstore.rng import position_streams
from logitstore.sparsify import sparsify
from tests.conftest import teacher_like_logits


def _run(logits: torch.Tensor, spec: Spec, seed_keys: list[bytes] | None = None, **kw) -> dict:
    keys = seed_keys or [bytes(16)]
    per = logits.shape[0] // len(keys)
    streams, positions = position_streams(spec.seed, keys, [per] * len(keys))
    return sparsify(logits, spec, streams=streams, positions=positions, **kw).numpy()


def _split(x: np.ndarray, nnz: np.ndarray) -> list[np.ndarray]:
    return np.split(x, np.cumsum(nnz)[:-1])


@pytest.fixture
def logits(rng) -> torch.Tensor:
    return teacher_like_logits(rng, 48, 5000)


def test_lse_is_exact(logits) -> None:
    out = _run(logits, Spec(method="topk", k=4))
    ref = torch.logsumexp(logits.double(), -1).numpy()
    np.testing.assert_allclose(out["lse"], ref, rtol=1e-6)
    assert out["lse"].dtype == np.float32


def test_topk_keeps_the_k_largest_and_tail_mass_is_exact(logits) -> None:
    k = 20
    out = _run(logits, Spec(method="topk", k=k))
    z = logits.double().numpy()
    p = np.exp(z - torch.logsumexp(logits.double(), -1).numpy()[:, None])
    for t, (ids, lp) in enumerate(
        zip(_split(out["ids"], out["nnz"]), _split(out["logprobs"], out["nnz"]), strict=True)
    ):
        ref_ids = np.argsort(-z[t], kind="stable")[:k]
        assert set(ids) == set(ref_ids)
        assert np.all(np.diff(lp) <= 0), "rank order: descending logprob"
        np.testing.assert_allclose(lp, np.log(p[t, ids]), atol=2e-5)
        tail = 1.0 - np.exp(lp.astype(np.float64)).sum()  # what a loss computes from the stored lse
        ref_tail = p[t].sum() - p[t, ids].sum()
        assert tail == pytest.approx(ref_tail, abs=1e-5)


def test_topk_kept_entries_are_in_canonical_order_with_ties() -> None:
    """Equal values are ordered by ascending id, and ties at the k-th value keep the smallest ids."""
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 3.0, 5.0]])
    ids = _run(logits, Spec(method="topk", k=4))["ids"].tolist()
    assert ids == [6, 1, 2, 4]
    bigger = _run(torch.cat([torch.randn(5, 7), logits]), Spec(method="topk", k=4))["ids"][-4:].tolist()
    assert bigger == ids  # the tie resolution is a function of the row alone


def _reference_topk(z: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The canonical top-k by a full sort: descending value, then ascending id."""
    zn = z.numpy()
    order = np.stack([np.lexsort((np.arange(zn.shape[1]), -row))[:k] for row in zn])
    return np.take_along_axis(zn, order, 1), order


def _hard_rows(rng: np.random.Generator, vocab: int) -> dict[str, torch.Tensor]:
    base = teacher_like_logits(rng, 6, vocab)
    masked = base.clone()
    masked[:, rng.choice(vocab, vocab // 2, replace=False)] = -float("inf")
    grouped = vocab // 16
    one_group = base.clone()
    one_group[:, np.arange(16) * grouped + 3] = 50.0 + torch.arange(16.0)  # the top 16 share one group
    remainder = base.clone()
    remainder[:, -1] = 99.0  # the largest logit among the ids outside the [16, V // 16] view
    return {
        "teacher-like": base,
        "bfloat16 (ties everywhere)": base.to(torch.bfloat16).float(),
        "coarse (ties at the threshold)": torch.round(base),
        "half masked with -inf": masked,
        "top values in one group": one_group,
        "max in the remainder": remainder,
        "constant": torch.zeros(6, vocab),
    }


@pytest.mark.parametrize("vocab", [16 * 700, 16 * 700 + 13])
@pytest.mark.parametrize("k", [1, 8, 64])
def test_topk_paths_agree_with_a_full_sort(rng, vocab: int, k: int) -> None:
    """The CPU's grouped selection and the torch.topk path (the one CUDA takes) both give the canonical top-k,
    including on rows built to defeat the grouping: ties at either threshold, masked ids, the maximum among the
    remainder ids, the top values all in one group."""
    for name, z in _hard_rows(rng, vocab).items():
        want_vals, want_ids = _reference_topk(z, k)
        for path in (sparsify_module._grouped_topk, sparsify_module._full_topk):
            assert path is sparsify_module._full_topk or vocab // 16 >= 4 * k
            vals, ids = sparsify_module._canonical_order(*path(z, k))
            assert np.array_equal(ids.numpy(), want_ids), (name, path.__name__)
            assert np.array_equal(vals.numpy(), want_vals), (name, path.__name__)


def test_nan_logits_are_refused(logits) -> None:
    logits = logits.clone()
    logits[5, 17] = float("nan")
    with pytest.raises(InvalidInputError, match=r"NaN at 1 of 48 positions \(first at row 5\).*bfloat16"):
        sparsify(logits, Spec(method="topk", k=4))


@pytest.mark.parametrize(
    ("p", "k_min", "k_max"), [(0.5, 1, 100), (0.9, 1, 100), (0.95, 5, 100), (0.99, 1, 8), (1.0, 1, 30)]
)
def test_topp_is_the_smallest_prefix_reaching_p_clamped(logits, p: float, k_min: int, k_max: int) -> None:
    out = _run(logits, Spec(method="topp", k=k_max, p=p, k_min=k_min))
    probs = torch.softmax(logits.double(), -1).numpy()
    for t, ids in enumerate(_split(out["ids"], out["nnz"])):
        sorted_p = np.sort(probs[t])[::-1]
        cum = np.cumsum(sorted_p)
        smallest = int(np.searchsorted(cum, p - 1e-12) + 1)  # first m with cum[m-1] >= p
        assert len(ids) == min(max(smallest, k_min), k_max)
        np.testing.assert_allclose(np.sort(probs[t, ids])[::-1], sorted_p[: len(ids)], rtol=1e-6)


def test_topp_clamps_visible_on_peaked_and_flat_rows() -> None:
    peaked = torch.tensor([[10.0] + [0.0] * 99])  # one token carries > 0.99
    flat = torch.zeros(1, 100)  # p=0.9 would need 90 tokens
    spec = Spec(method="topp", k=20, p=0.9, k_min=3)
    assert _run(peaked, spec)["nnz"].tolist() == [3]
    assert _run(flat, spec)["nnz"].tolist() == [20]


def test_dense_is_log_softmax(logits) -> None:
    out = _run(logits[:4], Spec(method="dense"))
    ref = torch.log_softmax(logits[:4].double(), -1).numpy().ravel()
    np.testing.assert_allclose(out["logprobs"], ref, atol=2e-5)
    assert out["ids"].tolist() == list(range(5000)) * 4


def test_sample_counts_ids_and_logprobs(logits) -> None:
    n = 50
    out = _run(logits, Spec(method="sample", n=n, seed=3))
    ref = torch.log_softmax(logits.double(), -1).numpy()
    for t, (ids, c, lp) in enumerate(
        zip(
            _split(out["ids"], out["nnz"]),
            _split(out["counts"], out["nnz"]),
            _split(out["logprobs"], out["nnz"]),
            strict=True,
        )
    ):
        assert c.sum() == n and c.min() >= 1
        assert np.all(np.diff(ids) > 0), "unique ids in ascending order"
        np.testing.assert_allclose(lp, ref[t, ids], atol=2e-5)


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_sample_estimator_is_unbiased(tau: float) -> None:
    """Over S = 4000 independent draws of n = 20 from one distribution over 12 ids, the importance-weighted
    estimate  mean_s sum_{i in draws} (c_i / n) * p_i / q_i  of each p_i has standard error
    sqrt(Var_q[w 1{i}] / (n S)); every id must lie within 5 standard errors (a false alarm is ~1e-5)."""
    z = torch.tensor([4.0, 3.0, 2.5, 2.0, 1.0, 0.5, 0.0, -1.0, -2.0, -3.0, -5.0, -8.0])
    n, s_draws = 20, 4000
    logits = z.repeat(s_draws, 1)
    out = _run(logits, Spec(method="sample", n=n, seed=11, proposal_temperature=tau))
    p = torch.softmax(z.double(), 0).numpy()
    q = torch.softmax(z.double() / tau, 0).numpy()
    row = np.repeat(np.arange(s_draws), out["nnz"])
    est = np.zeros((s_draws, len(z)))
    w = out["counts"] / n * p[out["ids"]] / q[out["ids"]]
    np.add.at(est, (row, out["ids"]), w)
    mean = est.mean(0)
    se = est.std(0) / np.sqrt(s_draws) + 1e-12
    z_scores = (mean - p) / se
    well_sampled = n * s_draws * q > 100  # ids a sharp proposal almost never draws carry no usable signal here
    assert well_sampled.sum() >= 5
    assert np.all(np.abs(z_scores[well_sampled]) < 5), z_scores
    if tau == 1.0:
        assert out["proposal_lse"] is None
    else:
        np.testing.assert_allclose(out["proposal_lse"][:1], torch.logsumexp(z.double() / tau, 0).numpy(), rtol=1e-6)


def test_sample_is_unbiased_across_groups() -> None:
    """The two-level sampler over a vocabulary of several groups (id g + G * i): c/n averaged over 20,000 positions
    is within 5 standard errors of p for every id drawn more than 100 times, including a ~1.6e-3 id that shares its
    group with the most likely one, and the masked (-inf) ids and the padding past V are never drawn."""
    vocab = 100  # 7 groups of 16 ids, the last 12 of the padded 112 have no mass
    z = torch.linspace(3.0, -6.0, vocab)
    z[7] = -1.0  # group 0 (ids 0, 7, 14, ...) holds the most likely id and a rare one
    z[50:60] = -float("inf")
    p = torch.softmax(z.double(), 0).numpy()
    n, positions = 10, 20_000
    out = _run(z.repeat(positions, 1), Spec(method="sample", n=n, seed=5))
    assert out["ids"].max() < vocab and not np.isin(out["ids"], np.arange(50, 60)).any()
    freq = np.bincount(out["ids"], weights=out["counts"], minlength=vocab) / (n * positions)
    se = np.sqrt(p * (1 - p) / (n * positions))
    well_sampled = n * positions * p > 100
    assert well_sampled[7] and well_sampled.sum() > 30
    assert np.all(np.abs(freq - p)[well_sampled] < 5 * se[well_sampled])


def test_sample_mean_over_seeds_converges_to_p() -> None:
    """The plain RS-KD target c/n, averaged over 300 seeds x 10 positions, is within 5 standard errors of p."""
    z = torch.tensor([2.0, 1.0, 0.0, -1.0, -3.0])
    p = torch.softmax(z.double(), 0).numpy()
    n, seeds, reps = 16, 300, 10
    acc = np.zeros((seeds * reps, len(z)))
    for s in range(seeds):
        out = _run(z.repeat(reps, 1), Spec(method="sample", n=n, seed=s))
        row = np.repeat(np.arange(reps), out["nnz"]) + s * reps
        np.add.at(acc, (row, out["ids"]), out["counts"] / n)
    se = np.sqrt(p * (1 - p) / (n * seeds * reps))
    assert np.all(np.abs(acc.mean(0) - p) < 5 * se)


@pytest.mark.parametrize("method", ["topk", "topp", "sample", "dense"])
def test_results_do_not_depend_on_chunk_size_or_batch_split(rng, method: str) -> None:
    spec = {
        "topk": Spec(method="topk", k=32),
        "topp": Spec(method="topp", k=64, p=0.9),
        "sample": Spec(method="sample", n=50, proposal_temperature=0.8),
        "dense": Spec(method="dense"),
    }[method]
    spec = dataclasses.replace(spec, label_logprob=True, logit_stats=True)
    vocab = 3000 if method == "dense" else 40000
    logits = teacher_like_logits(rng, 24, vocab)
    keys = [bytes([i]) * 16 for i in range(3)]
    labels = torch.from_numpy(rng.integers(-1, vocab, size=24))
    whole = _run(logits, spec, keys, labels=labels)
    tiny_chunks = _run(logits, spec, keys, labels=labels, chunk_elements=vocab)  # one position per chunk
    # batch split: each sequence sparsified on its own
    parts = [_run(logits[i * 8 : (i + 1) * 8], spec, [keys[i]], labels=labels[i * 8 : (i + 1) * 8]) for i in range(3)]
    for name, value in whole.items():
        if value is None:
            continue
        assert np.array_equal(value, tiny_chunks[name]), name
        assert np.array_equal(value, np.concatenate([p[name] for p in parts])), name


@pytest.mark.parametrize("method", ["topk", "sample"])
def test_label_logprob_and_logit_stats(logits, rng, method: str) -> None:
    """label_logprob is the log-softmax at the label (bit-equal to a stored logprob of the same id), NaN where
    there is no label; logit_mean / logit_std are torch's mean and (Bessel-corrected) std of the finite logits."""
    spec = Spec(method=method, **({"k": 16} if method == "topk" else {"n": 20}), label_logprob=True, logit_stats=True)
    logits = logits.clone()
    logits[3, 7] = -float("inf")  # a masked logit: the statistics skip it
    labels = torch.from_numpy(rng.integers(0, logits.shape[1], size=logits.shape[0]))
    labels[-1] = -1
    out = _run(logits, spec, labels=labels)
    ref = torch.log_softmax(logits.double(), dim=-1)
    want = ref.gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1).numpy()
    assert np.isnan(out["label_logprob"][-1]) and not np.isnan(out["label_logprob"][:-1]).any()
    np.testing.assert_allclose(out["label_logprob"][:-1], want[:-1], atol=1e-5)
    if method == "topk":  # wherever the label was kept, the two values are the same float32
        for t, (ids, lp) in enumerate(
            zip(_split(out["ids"], out["nnz"]), _split(out["logprobs"], out["nnz"]), strict=True)
        ):
            hit = np.flatnonzero(ids == int(labels[t]))
            if hit.size:
                assert lp[hit[0]] == out["label_logprob"][t]
    finite = [row[torch.isfinite(row)].double() for row in logits]
    np.testing.assert_allclose(out["logit_mean"], [float(r.mean()) for r in finite], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["logit_std"], [float(r.std()) for r in finite], rtol=1e-6)


def test_label_logprob_needs_labels(logits) -> None:
    with pytest.raises(InvalidInputError, match="needs labels"):
        sparsify(logits, Spec(method="topk", k=4, label_logprob=True))


def test_large_vocabulary_ids_survive(rng) -> None:
    vocab = 262_144
    logits = torch.full((2, vocab), -5.0)
    logits[0, vocab - 1] = 10.0
    logits[1, 131_073] = 10.0
    out = _run(logits, Spec(method="topk", k=1))
    assert out["ids"].tolist() == [vocab - 1, 131_073]
    out = _run(logits, Spec(method="sample", n=5))
    assert vocab - 1 in out["ids"] and 131_073 in out["ids"]


def test_bf16_logits_are_accepted(logits) -> None:
    out = _run(logits.to(torch.bfloat16), Spec(method="topk", k=8))
    ref = torch.logsumexp(logits.to(torch.bfloat16).float(), -1).numpy()
    np.testing.assert_allclose(out["lse"], ref, rtol=1e-6)


def test_bad_inputs() -> None:
    with pytest.raises(InvalidInputError, match=r"floating-point \[N, V\] tensor"):
        sparsify(torch.zeros(3, dtype=torch.int64), Spec(method="dense"))
    with pytest.raises(InvalidInputError, match="needs streams and positions"):
        sparsify(torch.zeros(2, 5), Spec(method="sample", n=3))
    with pytest.raises(InvalidInputError, match="exceeds the teacher's vocabulary"):
        sparsify(torch.zeros(2, 5), Spec(method="topk", k=6))
