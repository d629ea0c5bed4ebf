"""A deterministic synthetic "teacher-like" logit generator for storage benchmarks.

Per position ``t`` the logits over a vocabulary of ``V`` ids are::

    z[t, i] = prior_weight * log(zipf(i))                # shared "unigram" prior, low id = frequent token (BPE)
              + noise_std * N(0, 1)[t, i]                # i.i.d. Gaussian noise on every logit
              + sum_j  c * u[t] * E[t, j] * [i == s[t, j]]   # context-specific "spikes"

where ``zipf(i) ∝ (i + 1) ** -zipf_exponent`` (exponent 1.1), the ``num_spikes`` spike ids ``s[t, j]`` are drawn
(with replacement) from that same Zipf prior, ``u[t] ~ U(0, 1)`` is a per-position confidence, ``E[t, j] ~ Exp(1)``
a per-spike boost, and ``c`` (``spike_scale``) a single constant per vocabulary size, calibrated at construction by
bisection so that the mean entropy of ``softmax(z)`` over a fixed calibration sample is ``target_entropy`` (2.5
nats, like an LLM on natural text). The Gaussian noise (std 3) makes the top-k ids of a position spread well beyond
the most frequent ids (median top-64 id ~ 700-850) and gives each position its own tail ordering; the spikes and
the random confidence give a broad, LLM-like spread of entropies (many near-deterministic positions, some 5-6 nats).

Everything is a pure function of ``(seed, vocab_size, sequence index)`` (torch CPU generators), so reruns see the
same logits. The tail is somewhat heavier than a typical LLM's (top-128 mass ~0.89 on average), so top-k
KL numbers are on the pessimistic side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Default shape constants (see the module docstring).
ZIPF_EXPONENT = 1.1
PRIOR_WEIGHT = 1.0
NOISE_STD = 3.0
NUM_SPIKES = 8
TARGET_ENTROPY = 2.5


def entropy_and_lse(z: torch.Tensor, rows: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 entropy (nats) and log-sum-exp of every row of ``z [N, V]``, a few rows at a time."""
    n = z.shape[0]
    ent = torch.empty(n, dtype=torch.float64)
    lse = torch.empty(n, dtype=torch.float64)
    for a in range(0, n, rows):
        zd = z[a : a + rows].double()
        m = zd.amax(dim=-1, keepdim=True)
        zd.sub_(m)
        e = torch.exp(zd)
        s = e.sum(dim=-1)
        e.mul_(zd)
        log_s = s.log()
        ent[a : a + rows] = log_s - e.sum(dim=-1) / s
        lse[a : a + rows] = log_s + m[:, 0]
    return ent, lse


@dataclass
class TeacherLike:
    """Synthetic teacher for one vocabulary size; :meth:`logits` gives sequence ``index``'s ``[T, V]`` logits."""

    vocab_size: int
    seed: int = 0
    zipf_exponent: float = ZIPF_EXPONENT
    prior_weight: float = PRIOR_WEIGHT
    noise_std: float = NOISE_STD
    num_spikes: int = NUM_SPIKES
    target_entropy: float = TARGET_ENTROPY
    calibration_positions: int = 512
    spike_scale: float | None = None  # calibrated in __post_init__ when None
    calibrated_entropy: float = field(default=float("nan"), init=False)
    _log_prior: torch.Tensor = field(init=False, repr=False)
    _cdf: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ranks = torch.arange(1, self.vocab_size + 1, dtype=torch.float64)
        log_prior = -self.zipf_exponent * torch.log(ranks)
        log_prior -= torch.logsumexp(log_prior, 0)
        self._log_prior = log_prior.float()
        self._cdf = torch.cumsum(log_prior.exp(), 0)
        if self.spike_scale is None:
            self.spike_scale = self._calibrate()

    def _generator(self, index: int) -> torch.Generator:
        # A distinct, fixed stream per (seed, vocab_size, sequence index); index -1 is the calibration sample.
        mixed = (self.seed * 1_000_003 + self.vocab_size) * 1_000_033 + (index + 1)
        return torch.Generator().manual_seed(mixed % (2**63))

    def _parts(self, index: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``base [T, V]`` (prior + noise), spike ids ``[T, S]`` and unscaled spike boosts ``[T, S]``."""
        g = self._generator(index)
        base = torch.empty(length, self.vocab_size, dtype=torch.float32)
        base.normal_(0.0, self.noise_std, generator=g)
        base.add_(self._log_prior, alpha=self.prior_weight)
        u = torch.rand(length, self.num_spikes, dtype=torch.float64, generator=g) * self._cdf[-1]
        spikes = torch.searchsorted(self._cdf, u).clamp_(max=self.vocab_size - 1)
        confidence = torch.rand(length, 1, generator=g)
        boosts = confidence * torch.empty(length, self.num_spikes).exponential_(generator=g)
        return base, spikes, boosts

    def _calibrate(self) -> float:
        base, spikes, boosts = self._parts(-1, self.calibration_positions)

        def mean_entropy(c: float) -> float:
            z = base.clone().scatter_add_(1, spikes, boosts * c)
            return float(entropy_and_lse(z, rows=16)[0].mean())

        lo, hi = 0.0, 64.0
        if mean_entropy(lo) <= self.target_entropy:
            raise ValueError(
                f"without spikes the mean entropy is already <= {self.target_entropy} nats; lower prior_weight "
                "or noise_std"
            )
        while mean_entropy(hi) > self.target_entropy:
            hi *= 2
        for _ in range(14):  # resolution hi / 2**14, far below the sampling noise of the calibration
            mid = 0.5 * (lo + hi)
            if mean_entropy(mid) > self.target_entropy:
                lo = mid
            else:
                hi = mid
        c = 0.5 * (lo + hi)
        self.calibrated_entropy = mean_entropy(c)
        return c

    def logits(self, index: int, length: int) -> torch.Tensor:
        """``[length, V] float32`` teacher logits of sequence ``index`` (deterministic)."""
        base, spikes, boosts = self._parts(index, length)
        assert self.spike_scale is not None
        return base.scatter_add_(1, spikes, boosts * self.spike_scale)

    def describe(self) -> str:
        return (
            f"z = {self.prior_weight:g}*log zipf(id; s={self.zipf_exponent:g}) + N(0, {self.noise_std:g}^2) "
            f"+ {self.num_spikes} spikes ~ zipf, boost = c*U(0,1)*Exp(1), c = {self.spike_scale:.4g} "
            f"(calibrated: mean entropy {self.calibrated_entropy:.3f} nats on {self.calibration_positions} "
            f"positions, target {self.target_entropy:g})"
        )
