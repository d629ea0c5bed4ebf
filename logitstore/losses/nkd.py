"""NKD, normalized knowledge distillation (Yang et al., "From Knowledge Distillation to Self-Knowledge
Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels", ICCV 2023).

Per position with label ``y``, teacher ``p``, student ``q = softmax(s)``, and the *normalized non-target*
distributions at temperature ``tau`` (the label removed, the rest renormalized):
``p^_i = softmax_{j != y}(z_j / tau)_i``, ``q^_i = softmax_{j != y}(s_j / tau)_i``::

    NKD = -p_y log q_y  -  gamma tau^2 sum_{i != y} p^_i log q^_i

both terms cross-entropies, as in the authors' code (``yzd-v/cls_KD``, ``NKDLoss``), so the value is not 0 at the
optimum; the gradient is that of the KL form. The paper trains with ``CE + NKD``: here
``(1 - ce_weight) NKD + ce_weight CE``.

From a cache: ``p_y`` is exact from ``label_logprob`` (or the stored logprob on a dense cache). The non-target part
is known on the stored ids ``S \\ {y}``; its tail:

- ``ghost`` (temperature 1): the non-target tail mass ``(1 - p_y - sum_{S \\ y} p_i) / (1 - p_y)`` is exact, and is
  one bucket against the student's normalized non-target mass outside ``S`` (the cross-entropy of the coarsened
  distributions).
- ``renorm``: the stored non-target teacher entries renormalized (any temperature).

Both equal the formula on a dense cache (or top-k with k = V). Positions without a label are skipped.
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
    student_positions,
    teacher_label_logprob,
)
from logitstore.losses.divergence import TAIL_FLOOR, batch_labels, label_nll, mix_ce, without_ids


def nkd_loss(
    student_logits: torch.Tensor,
    batch: Mapping[str, Any],
    *,
    gamma: float = 1.5,
    temperature: float = 1.0,
    tail: Literal["ghost", "renorm"] = "ghost",
    ce_weight: float = 0.0,
    chunk_size: int | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """NKD (module docstring) of student logits ``[B, T, V_s]`` (or ``[B, V_s]``) against a cached batch.

    Args:
        gamma: weight of the non-target term (the paper's default 1.5).
        temperature: of the non-target term only (the target term is at temperature 1).
        tail: ``ghost`` (temperature 1 only) or ``renorm``.
        ce_weight: mixes in CE on the labels.
        labels: ``[B, T]`` (``[B]`` for a classifier), default ``batch["labels"]``.

    Returns:
        A scalar tensor, the mean over positions that have a label and a teacher distribution.
    """
    refuse_cross_tokenizer(batch, "NKD")
    check_chunk_size(chunk_size)
    if tail not in ("ghost", "renorm"):
        raise InvalidInputError(f"NKD's tail must be 'ghost' or 'renorm', got {tail!r}")
    if not (temperature > 0 and gamma >= 0 and 0.0 <= ce_weight <= 1.0):
        raise InvalidInputError(
            f"NKD needs temperature > 0, gamma >= 0 and ce_weight in [0, 1]; got {temperature}, {gamma}, {ce_weight}"
        )
    spec = batch.get("spec")
    dense = spec is not None and spec.method == "dense"
    if tail == "ghost" and temperature != 1.0 and not dense:
        raise InvalidInputError(
            f"NKD with tail='ghost' at temperature {temperature}: the tempered non-target tail mass is unknown "
            "beyond the stored entries; use temperature=1 or tail='renorm'"
        )
    flat, vocab = student_positions(student_logits, batch)
    labels = batch_labels(batch, labels)
    if labels is None:
        raise InvalidInputError("NKD needs labels: the batch has none (a classifier cache); pass labels=[B]")
    label_lp = teacher_label_logprob(batch, labels, "NKD")
    n = flat.shape[0]
    ids, lp, mask = batch["target_ids"], batch["target_logprobs"], batch["target_mask"]
    targets = [
        ids.reshape(n, -1).long(),
        lp.reshape(n, -1).float(),
        mask.reshape(n, -1),
        labels.reshape(n),
        label_lp.reshape(n),
    ]

    def run(*a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _chunk(*a, gamma=gamma, temperature=temperature, ghost=tail == "ghost" and not dense, vocab=vocab)

    nkd, ce = per_position(run, flat, targets, chunk_size)
    has = (labels.reshape(n) != IGNORE_INDEX) & ~torch.isnan(label_lp.reshape(n)) & mask.reshape(n, -1).any(-1)
    value = masked_mean(nkd, has)
    return mix_ce(value, ce, labels.reshape(n), ce_weight)


def _chunk(
    s: torch.Tensor,
    ids: torch.Tensor,
    lp: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    label_lp: torch.Tensor,
    *,
    gamma: float,
    temperature: float,
    ghost: bool,
    vocab: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position NKD and CE ``([P], [P])`` of ``s [P, V_s]`` against targets ``[P, K]`` and labels ``[P]``."""
    x = s[:, :vocab].float()
    log_q = torch.log_softmax(x, dim=-1).clamp(min=NEG)
    has = (labels != IGNORE_INDEX) & ~torch.isnan(label_lp)
    y = labels.masked_fill(~has, 0).long()
    p_y = torch.exp(label_lp.nan_to_num(nan=NEG).clamp(min=NEG))
    target = -p_y * log_q.gather(-1, y[:, None]).squeeze(-1)

    # the student's normalized non-target distribution at the temperature: the label's column removed
    xt = (x / temperature).scatter(-1, y[:, None], NEG)
    log_q_nt = (xt - torch.logsumexp(xt, dim=-1, keepdim=True)).clamp(min=NEG)
    keep = mask & (ids != y[:, None]) & ~torch.isneginf(lp)
    lq = log_q_nt.gather(-1, ids.masked_fill(~keep, 0)).masked_fill(~keep, NEG)
    if ghost:
        # exact non-target probabilities p_i / (1 - p_y) on S \ {y}, and the rest of that mass as one bucket
        log_rest = torch.log(torch.clamp(1.0 - p_y, min=TAIL_FLOOR))
        lt = (lp - log_rest[:, None]).masked_fill(~keep, NEG)
        tail = torch.clamp(1.0 - torch.exp(lt).sum(-1), min=0.0)
        everything = keep.sum(-1) >= vocab - 1
        outside = without_ids(log_q_nt, ids, keep).scatter(-1, y[:, None], NEG)
        log_q_tail = torch.logsumexp(outside, dim=-1)
        tail_term = torch.where(everything, torch.zeros_like(tail), tail * log_q_tail)
        non_target = (torch.exp(lt) * lq).sum(-1) + tail_term
    else:
        lt = torch.log_softmax((lp / temperature).masked_fill(~keep, NEG), dim=-1).masked_fill(~keep, NEG)
        non_target = (torch.exp(lt) * lq).sum(-1)
    nkd = (target - gamma * temperature**2 * non_target) * has
    return nkd, label_nll(torch.log_softmax(x, dim=-1), labels)
