"""Squared error on the log-probabilities of sampled labels (Zhao & Zhu, "Towards the Fundamental Limits of
Knowledge Transfer over Finite Domains", ICLR 2024, eq. 4.6, ``SEL_ptl``).

When the teacher reveals, for sampled labels ``a_i``, only its probabilities ``p(a_i)`` (the "partial soft labels"
of the paper), cross-entropy weighted by them is asymptotically biased (its minimizer is proportional to ``p^2``);
the squared error of the *normalized* logits is not::

    SEL = (1 / n) sum_i 1/2 (log q(a_i) - log p(a_i))^2,   q = softmax(s)

It is zero exactly when the student matches the teacher on every observed label, and the paper shows it reaches
the minimax rate ``|S||A| / n`` (versus ``sqrt(|S||A| / n)`` for hard labels). The paper sums over samples; here
the sum is divided by the draws per position so the scale does not depend on ``n``.

Sampled labels from a cache (``source``):

- ``draws``: a ``sample`` cache's ``n`` draws per position (ids with counts; any proposal temperature: the
  minimizer does not depend on how the labels were drawn, only the weighting does).
- ``label``: the token that actually follows, with the teacher's ``label_logprob`` (any cache that stores it): one
  sample per position, from the data rather than the teacher, which leaves the minimizer unchanged.
- ``auto``: ``draws`` on a sample cache, else ``label``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from logitstore.collate import IGNORE_INDEX
from logitstore.errors import InvalidInputError
from logitstore.losses._common import (
    NEG,
    check_chunk_size,
    masked_mean,
    per_position,
    refuse_cross_tokenizer,
    require,
    student_positions,
    teacher_label_logprob,
)
from logitstore.losses.divergence import batch_labels, label_nll, mix_ce

SOURCES = ("auto", "draws", "label")


def sel_loss(
    student_logits: torch.Tensor,
    batch: Mapping[str, Any],
    *,
    source: Literal["auto", "draws", "label"] = "auto",
    ce_weight: float = 0.0,
    chunk_size: int | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """SEL on sampled labels (module docstring) of student logits ``[B, T, V_s]`` (or ``[B, V_s]``).

    Returns:
        A scalar tensor, the mean over positions that have sampled labels.
    """
    refuse_cross_tokenizer(batch, "the sampled-label squared error")
    check_chunk_size(chunk_size)
    if source not in SOURCES:
        raise InvalidInputError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if not 0.0 <= ce_weight <= 1.0:
        raise InvalidInputError(f"ce_weight must be in [0, 1], got {ce_weight!r}")
    flat, vocab = student_positions(student_logits, batch)
    n = flat.shape[0]
    labels = batch_labels(batch, labels, ce_weight)
    if source == "auto":
        source = "draws" if batch.get("target_counts") is not None else "label"
    if source == "draws":
        spec = batch.get("spec")
        counts = require(batch, "target_counts", "SEL with source='draws'")
        weights = counts.float() / float(spec.n if spec is not None else counts.sum(-1, keepdim=True).clamp(min=1))
        ids, lp, mask = batch["target_ids"].long(), batch["target_logprobs"].float(), batch["target_mask"]
    else:
        if labels is None:
            raise InvalidInputError("SEL with source='label' needs labels: pass labels=[B] for a classifier cache")
        label_lp = teacher_label_logprob(batch, labels, "SEL with source='label'").float()
        mask = ((labels != IGNORE_INDEX) & torch.isfinite(label_lp)).unsqueeze(-1)
        ids, lp, weights = labels.clamp(min=0).long().unsqueeze(-1), label_lp.unsqueeze(-1), mask.float()
    targets = [
        ids.reshape(n, -1),
        lp.reshape(n, -1),
        mask.reshape(n, -1),
        weights.reshape(n, -1),
        None if labels is None or ce_weight == 0 else labels.reshape(n),
    ]

    def run(*a: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return _chunk(*a, vocab=vocab)

    sel, ce = per_position(run, flat, targets, chunk_size)
    value = masked_mean(sel, mask.reshape(n, -1).any(-1))
    return mix_ce(value, ce, targets[4], ce_weight)


def _chunk(
    s: torch.Tensor,
    ids: torch.Tensor,
    lp: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    vocab: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position weighted squared error and CE ``([P], [P])`` of ``s [P, V_s]`` against samples ``[P, K]``."""
    log_q = torch.log_softmax(s[:, :vocab].float(), dim=-1)
    keep = mask & torch.isfinite(lp)
    lq = log_q.clamp(min=NEG).gather(-1, ids.masked_fill(~keep, 0))
    sel = (0.5 * weights * torch.square(lq - lp.masked_fill(~keep, 0.0)) * keep).sum(-1)
    if labels is None:
        return sel, torch.zeros_like(sel)
    return sel, label_nll(log_q, labels)
