"""Logit-standardized KD (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024).

Teacher and student logits are each z-scored per position before the tempered softmax,
``Z(v) = (v - mean(v)) / (std(v) + eps)`` (``std`` Bessel-corrected, ``eps = 1e-7``, as the authors'
``normalize``), and the loss is ``tau^2 KL(softmax(Z(z) / tau) || softmax(Z(s) / tau))``. The student then matches
the teacher's logit *shape*, not its scale. The authors use ``tau = 2`` with a large KD weight (9) beside CE.

From a cache: the teacher's raw logits on the stored ids are ``z_i = log p_i + lse``, standardized with the stored
``logit_mean`` / ``logit_std`` (precompute ``--logit-stats``; a dense cache without them standardizes its own
stored logprobs, which is the same thing: z-scoring removes the shift). Since a softmax ignores shifts, the
standardized teacher is ``softmax(z / (tau (std + eps)))``: a per-position temperature. Its tail at that
temperature is unknown, so the stored entries are renormalized (forward KL with the full standardized student,
as ``tail='renorm'``); exact on a dense cache or top-k with k = V.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from logitstore.errors import InvalidInputError
from logitstore.losses._common import (
    NEG,
    check_chunk_size,
    masked_mean,
    per_position,
    refuse_cross_tokenizer,
    require,
    student_positions,
)
from logitstore.losses.divergence import batch_labels, label_nll, mix_ce
from logitstore.sparsify import logit_stats

EPS = 1e-7


def standardized_kd_loss(
    student_logits: torch.Tensor,
    batch: Mapping[str, Any],
    *,
    temperature: float = 2.0,
    ce_weight: float = 0.0,
    chunk_size: int | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logit-standardized KD (module docstring) of student logits ``[B, T, V_s]`` (or ``[B, V_s]``).

    Args:
        temperature: the base temperature applied after standardization (the paper's 2).
        ce_weight: mixes in CE on the labels (``(1 - w) KD + w CE``).

    Returns:
        A scalar tensor, the mean over positions that hold a teacher distribution, times ``temperature**2``.
    """
    refuse_cross_tokenizer(batch, "logit-standardized KD")
    check_chunk_size(chunk_size)
    if not (temperature > 0 and 0.0 <= ce_weight <= 1.0):
        raise InvalidInputError(f"need temperature > 0 and ce_weight in [0, 1], got {temperature}, {ce_weight}")
    flat, vocab = student_positions(student_logits, batch)
    n = flat.shape[0]
    ids, lp, mask = batch["target_ids"], batch["target_logprobs"].float(), batch["target_mask"]
    spec = batch.get("spec")
    if batch.get("logit_std") is None and spec is not None and spec.method == "dense":
        # logprobs are the logits shifted by lse, so they have the same std (masked entries are -inf: skipped)
        std = logit_stats(lp.reshape(-1, lp.shape[-1]))[1].reshape(lp.shape[:-1])
    else:
        std = require(batch, "logit_std", "logit-standardized KD").float()
    labels = batch_labels(batch, labels, ce_weight)
    targets = [
        ids.reshape(n, -1).long(),
        lp.reshape(n, -1),
        mask.reshape(n, -1),
        std.reshape(n),
        None if labels is None or ce_weight == 0 else labels.reshape(n),
    ]

    def run(*a: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return _chunk(*a, temperature=temperature, vocab=vocab)

    kd, ce = per_position(run, flat, targets, chunk_size)
    value = masked_mean(kd, mask.reshape(n, -1).any(-1)) * temperature**2
    return mix_ce(value, ce, targets[4], ce_weight)


def standardize(v: torch.Tensor) -> torch.Tensor:
    """``[P, V]`` z-scored rows: ``(v - mean) / (std + EPS)``, ``std`` Bessel-corrected (the paper's code)."""
    return (v - v.mean(dim=-1, keepdim=True)) / (v.std(dim=-1, keepdim=True) + EPS)


def _chunk(
    s: torch.Tensor,
    ids: torch.Tensor,
    lp: torch.Tensor,
    mask: torch.Tensor,
    std: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: float,
    vocab: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position KL and CE ``([P], [P])`` of ``s [P, V_s]`` against targets ``[P, K]`` and ``std [P]``."""
    x = s[:, :vocab].float()
    log_q = torch.log_softmax(standardize(x) / temperature, dim=-1).clamp(min=NEG)
    keep = mask & ~torch.isneginf(lp)
    scale = (temperature * (std + EPS))[:, None]
    a = torch.log_softmax((lp / scale).masked_fill(~keep, NEG), dim=-1).masked_fill(~keep, NEG)
    b = log_q.gather(-1, ids.masked_fill(~keep, 0)).masked_fill(~keep, NEG)
    kl = (torch.exp(a) * (a - b)).sum(-1)
    if labels is None:
        return kl, torch.zeros_like(kl)
    return kl, label_nll(torch.log_softmax(x, dim=-1), labels)
