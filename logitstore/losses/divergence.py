"""Knowledge-distillation losses that are correct on sparse cached targets.

Notation, per position: student logits ``s [V]``, ``q = softmax(s / tau)``; teacher ``p = softmax(z)`` known on the
stored ids ``S`` (``log p_i`` exact, since the cache normalizes by the exact log-sum-exp); tail mass
``r = 1 - sum_S p_i`` (clamped at 0: q16 logprobs can overshoot by the encoding's error bound).

Divergences (``kind``):

- ``forward_kl``: ``KL(p || q) = sum_i p_i (log p_i - log q_i)``
- ``reverse_kl``: ``KL(q || p) = sum_i q_i (log q_i - log p_i)``
- ``jsd``: generalized Jensen-Shannon, ``beta KL(p || m) + (1 - beta) KL(q || m)``, ``m = beta p + (1 - beta) q``

Tail handling for caches that truncate (topk, topp; and a sample cache under reverse_kl / jsd, whose unique ids
are a support with exact probabilities):

- ``renorm``: the teacher renormalized on S. Forward KL uses the full student (``KL(p~ || q)``, which also pulls
  the student's mass onto S); reverse KL and JSD renormalize the student on S too.
- ``ghost``: the non-stored mass is one extra bucket on both sides: teacher ``r``, student ``sum_{i not in S} q_i``
  (the KL of the coarsened distributions: a lower bound on the full KL).
- ``exact``: the full-vocabulary divergence to the teacher completed from exactly what the cache knows: the
  stored ``p_i`` and the tail mass ``r``, spread uniformly over the other ids (the maximum-entropy completion).
- ``label`` (the label-mass fix of "Sparse Logit Sampling", Anshumann et al. 2025): the tail mass ``r`` goes to the
  ground-truth next token ``y``: target ``t_i = p_i + r [i = y]`` on ``S + {y}``, zero elsewhere. Forward KL and
  JSD only (reverse KL against a target with zeros is infinite); positions without a label (the last one of a
  sequence) use the renormalized stored part.

Reverse KL and JSD with ``ghost`` / ``exact`` need ``r`` exactly and are refused on q16 caches (docs/TRAINING.md).
All three equal the textbook divergence when nothing was cut (a dense cache, or top-k with k = V). Temperatures
other than 1 need the teacher at that temperature, which is known on S but not in the tail: they are exact on a
dense cache and with ``renorm``, and refused with ``ghost`` / ``exact`` on truncated caches.

``sample`` caches under ``forward_kl`` use the unbiased estimator of Random-Sampling KD instead of a tail: with
counts ``c_i`` of ``n`` draws from the proposal ``q~ proportional to exp(z / tau_q)``,
``sum_S w_i (log t_i - log q_i)`` with ``w_i = c_i / n`` and target ``t = q~`` estimates ``KL(q~ || q)``: the
teacher itself when ``tau_q = 1``, the teacher at temperature ``tau`` when ``tau = tau_q``; and for ``tau = 1``
with ``tau_q != 1`` the importance weights ``w_i = (c_i / n) p_i / q~_i`` estimate ``KL(p || q)``. Each is
unbiased, and so is its gradient.

Losses are averaged over the positions that hold a teacher distribution and multiplied by ``tau**2`` (Hinton et
al.), so gradient scales stay comparable across temperatures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch

from logitstore.collate import IGNORE_INDEX
from logitstore.errors import InvalidInputError, SpecMismatchError
from logitstore.losses._common import NEG, check_chunk_size, masked_mean, per_position, student_positions

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
Tail = Literal["renorm", "ghost", "exact", "label"]
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
TAILS = ("renorm", "ghost", "exact", "label")

#: the teacher's tail mass is at least this in ghost / exact tails, so log r stays finite when q16 rounding
#: (or a cache that keeps nearly everything) leaves no mass for the tail.
TAIL_FLOOR = 1.0e-6


def divergence_loss(
    student_logits: torch.Tensor,
    batch: Mapping[str, Any],
    *,
    kind: Divergence = "forward_kl",
    tail: Tail = "ghost",
    temperature: float = 1.0,
    ce_weight: float = 0.0,
    beta: float = 0.5,
    chunk_size: int | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward KL, reverse KL or JSD of a student against a cached teacher batch (module docstring); what
    :func:`logitstore.losses.kd_loss` runs for those kinds.

    Args:
        student_logits: ``[B, T, V_s]`` (or ``[B, V_s]`` for a classifier), any float dtype; ``V_s`` may exceed
            the cache's vocabulary (extra logits are ignored).
        batch: from :func:`logitstore.collate.collate`: targets ``[B, T, K]`` and ``lse [B, T]``, on the student's
            device.
        kind: ``forward_kl`` | ``reverse_kl`` | ``jsd``.
        tail: ``renorm`` | ``ghost`` | ``exact`` | ``label``.
        temperature: softens teacher and student alike; the loss is scaled by ``temperature**2``.
        ce_weight: ``loss = (1 - ce_weight) * KD + ce_weight * CE(labels)`` (CE at temperature 1).
        beta: the JSD mixture weight, in (0, 1).
        chunk_size: positions per chunk (None: about ``CHUNK_ELEMENTS`` logits per chunk); chunks are recomputed
            in the backward pass, and chunked and unchunked results are equal.
        labels: ``[B, T]`` next-token ids for CE and the label tail (default ``batch["labels"]``; -100 is ignored).

    Returns:
        A scalar tensor (float32).
    """
    _check_options(kind, tail, temperature, ce_weight, beta, chunk_size)
    flat, vocab = student_positions(student_logits, batch)
    ids, logprobs, mask = batch["target_ids"], batch["target_logprobs"], batch["target_mask"]
    spec = batch.get("spec")
    counts = batch.get("target_counts")
    dense = spec is not None and spec.method == "dense"
    sampled = counts is not None and kind == "forward_kl"
    mode = "renorm" if dense else ("sampled" if sampled else tail)
    weights, log_target = None, None
    if sampled:
        weights, log_target = _sample_targets(batch, temperature)
    elif mode in ("ghost", "exact") and kind != "forward_kl" and spec is not None and not spec.encoding.lossless:
        raise InvalidInputError(
            f"kind={kind!r} with tail={tail!r} on a cache with q16 logprobs: the tail mass 1 - sum(p) is only known "
            f"to within the encoding's error bound ({spec.encoding.error_bound} nats per entry), and the "
            f"{kind} tail term weighs that error by the student's tail mass; use tail='renorm', kind='forward_kl' "
            "(which weighs it by the small teacher tail), or a cache built with --encoding lossless"
        )
    elif temperature != 1.0 and mode != "renorm":
        raise InvalidInputError(
            f"temperature {temperature} with tail={tail!r}: the teacher's tempered distribution is unknown beyond "
            f"the stored entries of a {spec.method if spec else 'sparse'} cache; use tail='renorm', temperature=1, "
            "or a dense cache"
        )
    labels = batch_labels(batch, labels, ce_weight)
    if mode == "label":
        if labels is None:
            raise InvalidInputError(
                "tail='label' gives the tail mass to the label, but the batch has none (a classifier cache); pass "
                "labels=[B] class ids, or use tail='ghost'"
            )
        if kind == "reverse_kl":
            raise InvalidInputError(
                "tail='label' with kind='reverse_kl': the label-mass target is zero outside the stored ids and the "
                "label, so KL(student || target) is infinite; use kind='forward_kl' or 'jsd', or another tail"
            )

    positions = flat.shape[0]
    targets = [
        ids.reshape(positions, -1).long(),
        logprobs.reshape(positions, -1).float(),
        mask.reshape(positions, -1),
        None if weights is None else weights.reshape(positions, -1),
        None if log_target is None else log_target.reshape(positions, -1),
        None if labels is None or (ce_weight == 0 and mode != "label") else labels.reshape(positions),
    ]

    def run(*a: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return _chunk(*a, mode=mode, kind=kind, temperature=temperature, beta=beta, vocab=vocab, ce=ce_weight > 0)

    kd_pos, ce_pos = per_position(run, flat, targets, chunk_size)
    valid = mask.reshape(positions, -1).any(-1)
    return mix_ce(masked_mean(kd_pos, valid) * temperature**2, ce_pos, targets[5], ce_weight)


def batch_labels(batch: Mapping[str, Any], labels: torch.Tensor | None, ce_weight: float = 0.0) -> torch.Tensor | None:
    """``labels`` or the batch's, as ``[B, T]`` (a classifier's ``[B]`` becomes ``[B, 1]``); None if neither,
    which ``ce_weight > 0`` refuses."""
    if labels is None:
        labels = batch.get("labels")
    if labels is not None and labels.dim() == 1:
        labels = labels.unsqueeze(1)
    if ce_weight > 0 and labels is None:
        raise InvalidInputError(
            "ce_weight > 0 needs labels: the batch has none (a classifier cache); pass labels=[B] class ids"
        )
    return labels


def mix_ce(kd: torch.Tensor, ce_pos: torch.Tensor, labels: torch.Tensor | None, ce_weight: float) -> torch.Tensor:
    """``(1 - ce_weight) * kd + ce_weight * CE``, CE averaged over the positions that have a label; ``kd`` itself
    when ``ce_weight`` is 0 (``labels`` may then be None)."""
    if ce_weight == 0:
        return kd
    assert labels is not None  # batch_labels refuses ce_weight > 0 without labels
    return (1.0 - ce_weight) * kd + ce_weight * masked_mean(ce_pos, labels != IGNORE_INDEX)


def _check_options(kind: str, tail: str, temperature: float, ce_weight: float, beta: float, chunk: int | None) -> None:
    if kind not in DIVERGENCES:
        raise InvalidInputError(f"kind must be one of {', '.join(DIVERGENCES)}, got {kind!r}")
    if tail not in TAILS:
        raise InvalidInputError(f"tail must be one of {', '.join(TAILS)}, got {tail!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise InvalidInputError(f"temperature must be a positive number, got {temperature!r}")
    if not (0.0 <= ce_weight <= 1.0):
        raise InvalidInputError(f"ce_weight must be in [0, 1], got {ce_weight!r}")
    if not (0.0 < beta < 1.0):
        raise InvalidInputError(f"beta must be in (0, 1) (0 and 1 are the two KLs), got {beta!r}")
    check_chunk_size(chunk)


def _sample_targets(batch: Mapping[str, Any], temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[B, T, K]`` and log-targets ``[B, T, K]`` of the sampled forward-KL estimator."""
    spec = batch["spec"]
    counts, logprobs, mask = batch["target_counts"], batch["target_logprobs"].float(), batch["target_mask"]
    tau_q = float(spec.proposal_temperature)
    weights = counts.float() / float(spec.n)
    if tau_q == 1.0:
        if temperature != 1.0:
            raise SpecMismatchError(
                f"temperature {temperature} on a sample cache drawn at proposal temperature 1: the draws estimate "
                f"the teacher at temperature 1 only; use temperature=1, or rebuild the cache with "
                f"--proposal-temperature {temperature}"
            )
        return weights, logprobs
    # log q~_i = z_i / tau_q - proposal_lse, with z_i = log p_i + lse
    log_proposal = (logprobs + batch["lse"].float().unsqueeze(-1)) / tau_q - batch["proposal_lse"].float().unsqueeze(-1)
    log_proposal = log_proposal.masked_fill(~mask, NEG)
    if temperature == tau_q:
        return weights, log_proposal
    if temperature == 1.0:
        ratio = torch.exp((logprobs - log_proposal).masked_fill(~mask, 0.0))
        return weights * ratio, logprobs
    raise SpecMismatchError(
        f"temperature {temperature} on a sample cache drawn at proposal temperature {tau_q}: the draws estimate the "
        f"teacher at temperature 1 (importance weighted) or at {tau_q} only; use one of those"
    )


def _chunk(
    s: torch.Tensor,
    ids: torch.Tensor,
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None,
    log_target: torch.Tensor | None,
    labels: torch.Tensor | None,
    *,
    mode: str,
    kind: str,
    temperature: float,
    beta: float,
    vocab: int,
    ce: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position KD and CE terms ``([P], [P])`` of one chunk of ``P`` positions (``s [P, V_s]``); CE is zero
    unless ``ce``."""
    x = s[:, :vocab].float()
    log_q1 = x - torch.logsumexp(x, dim=-1, keepdim=True)
    log_q = log_q1 if temperature == 1.0 else torch.log_softmax(x / temperature, dim=-1)
    log_q = log_q.clamp(min=NEG)  # a student logit of -inf (a masked id) is probability zero, not NaN
    safe_ids = ids.masked_fill(~mask, 0)
    lq = log_q.gather(-1, safe_ids).masked_fill(~mask, NEG)  # [P, K]
    zero = ~mask | torch.isneginf(logprobs)
    lp = logprobs.masked_fill(zero, NEG)

    if mode == "sampled":
        assert weights is not None and log_target is not None
        kd = (weights * (log_target - lq)).masked_fill(~mask, 0.0).sum(-1)
    elif mode == "renorm":
        a = torch.log_softmax((logprobs / temperature).masked_fill(zero, NEG), dim=-1).masked_fill(zero, NEG)
        b = lq if kind == "forward_kl" else torch.log_softmax(lq, dim=-1).masked_fill(~mask, NEG)
        kd = _divergence(a, b, kind, beta)
    elif mode == "ghost":
        # the student's tail summed over the non-stored ids themselves: 1 - sum_S q_i underflows in float32
        # when the student's tail is tiny, which is exactly when the tail term matters most for reverse KL
        everything = (mask.sum(-1) >= vocab).unsqueeze(-1)
        log_r = _log_tail_mass(lp).unsqueeze(-1).masked_fill(everything, NEG)
        log_q_tail = torch.logsumexp(without_ids(log_q, ids, mask), dim=-1, keepdim=True).masked_fill(everything, NEG)
        kd = _divergence(torch.cat([lp, log_r], dim=-1), torch.cat([lq, log_q_tail], dim=-1), kind, beta)
    elif mode == "label":
        assert labels is not None
        kd = _divergence(_label_mass_target(lp, ids, mask, labels, vocab), log_q, kind, beta)
    else:  # exact: the full vocabulary, the tail mass spread uniformly over the non-stored ids
        stored = mask.sum(-1)
        log_r = _log_tail_mass(lp)
        others = (vocab - stored).clamp(min=1)
        log_u = torch.where(stored < vocab, log_r - torch.log(others.float()), torch.full_like(log_r, NEG))
        full = log_u.unsqueeze(-1).expand(-1, vocab + 1).clone()  # column `vocab` catches masked entries
        full.scatter_(-1, ids.masked_fill(~mask, vocab), lp)
        kd = _divergence(full[:, :vocab], log_q, kind, beta)

    if labels is None or not ce:
        return kd, torch.zeros_like(kd)
    return kd, label_nll(log_q1, labels)


def label_nll(log_q: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[P]`` ``-log_q[label]`` (``log_q [P, V]``), 0 where the label is ``IGNORE_INDEX``."""
    has = labels != IGNORE_INDEX
    return -log_q.gather(-1, labels.masked_fill(~has, 0).unsqueeze(-1)).squeeze(-1) * has


def _label_mass_target(
    lp: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, vocab: int
) -> torch.Tensor:
    """``[P, V]`` log of the label-mass target: stored ``lp [P, K]`` at ``ids``, plus the tail mass on the label
    ``labels [P]``; ``NEG`` elsewhere. Positions without a label get the stored part renormalized."""
    everything = mask.sum(-1) >= vocab
    log_r = _log_tail_mass(lp).masked_fill(everything, NEG).unsqueeze(-1)
    full = lp.new_full((lp.shape[0], vocab + 1), NEG)  # column `vocab` catches padding and missing labels
    full.scatter_(-1, ids.masked_fill(~mask, vocab), lp)
    has = (labels != IGNORE_INDEX) & (labels >= 0) & (labels < vocab)
    slot = labels.masked_fill(~has, vocab).unsqueeze(-1)
    full.scatter_(-1, slot, torch.logaddexp(full.gather(-1, slot), log_r))
    target = full[:, :vocab]
    renormed = target - torch.logsumexp(target, dim=-1, keepdim=True)
    return torch.where(has.unsqueeze(-1), target, renormed.clamp(min=NEG))


def without_ids(log_q: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[P, V]`` copy of ``log_q [P, V]`` with the stored ids ``ids [P, K]`` set to ``NEG`` (no gradient flows
    to them)."""
    vocab = log_q.shape[-1]
    out = torch.cat([log_q, log_q.new_full((log_q.shape[0], 1), NEG)], dim=-1)  # column `vocab` catches padding
    return out.scatter(-1, ids.masked_fill(~mask, vocab), NEG)[:, :vocab]


def _log_tail_mass(lp: torch.Tensor) -> torch.Tensor:
    """``[P]`` log of the teacher's non-stored mass, floored at ``TAIL_FLOOR``."""
    kept = torch.exp(lp).sum(-1)
    return torch.log(torch.clamp(1.0 - kept, min=TAIL_FLOOR))


def _divergence(a: torch.Tensor, b: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """``[P]`` divergence between teacher log-probabilities ``a`` and student ``b`` over the last dim (``NEG``
    stands for probability zero)."""
    if kind == "forward_kl":
        return (torch.exp(a) * (a - b)).sum(-1)
    if kind == "reverse_kl":
        return (torch.exp(b) * (b - a)).sum(-1)
    log_m = torch.logaddexp(a + math.log(beta), b + math.log(1.0 - beta))
    return beta * (torch.exp(a) * (a - log_m)).sum(-1) + (1.0 - beta) * (torch.exp(b) * (b - log_m)).sum(-1)
