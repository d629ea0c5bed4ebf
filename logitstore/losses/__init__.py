"""Knowledge-distillation losses that are correct on sparse cached targets, one module per family:

- :mod:`~logitstore.losses.divergence`: forward KL, reverse KL, generalized JSD, with the tails a truncated cache
  needs (``renorm``, ``ghost``, ``exact``, and the label-mass fix ``label``) and the unbiased sampled estimator of
  Random-Sampling KD on ``sample`` caches.
- :mod:`~logitstore.losses.nkd`: NKD, normalized KD (target term + normalized non-target term).
- :mod:`~logitstore.losses.standardized`: logit-standardized KD (z-scored logits before the softmax).
- :mod:`~logitstore.losses.sel`: squared error of log-probabilities on sampled labels (Zhao & Zhu).
- :mod:`~logitstore.losses.uld`: ULD, sorted-probability Wasserstein distance, also across tokenizers.

:func:`kd_loss` selects any of them by ``kind``; each also has its own function. Every loss takes the student's
logits ``[B, T, V_s]`` and a batch from :func:`logitstore.collate.collate` (or a ``LogitDataset``), says plainly
when the cache lacks a field it needs (naming the field and the precompute flag that stores it), and evaluates
positions in chunks recomputed in the backward pass, so memory stays ``O(B*T*K)`` plus one chunk's ``[chunk, V]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from logitstore.errors import InvalidInputError
from logitstore.losses._common import CHUNK_ELEMENTS, NEG, refuse_cross_tokenizer
from logitstore.losses.divergence import DIVERGENCES, TAIL_FLOOR, TAILS, Tail, divergence_loss
from logitstore.losses.nkd import nkd_loss
from logitstore.losses.sel import SOURCES, sel_loss
from logitstore.losses.standardized import standardized_kd_loss
from logitstore.losses.uld import uld_loss

Kind = Literal["forward_kl", "reverse_kl", "jsd", "nkd", "standardized_kd", "sel", "uld"]
KINDS = (*DIVERGENCES, "nkd", "standardized_kd", "sel", "uld")

__all__ = [
    "CHUNK_ELEMENTS",
    "DIVERGENCES",
    "KINDS",
    "NEG",
    "SOURCES",
    "TAILS",
    "TAIL_FLOOR",
    "divergence_loss",
    "kd_loss",
    "nkd_loss",
    "sel_loss",
    "standardized_kd_loss",
    "uld_loss",
]


def kd_loss(
    student_logits: torch.Tensor,
    batch: Mapping[str, Any],
    *,
    kind: Kind = "forward_kl",
    tail: Tail | None = None,
    temperature: float | None = None,
    ce_weight: float = 0.0,
    beta: float | None = None,
    gamma: float | None = None,
    source: str | None = None,
    chunk_size: int | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distillation loss of a student against a cached teacher batch.

    Args:
        student_logits: ``[B, T, V_s]`` (or ``[B, V_s]`` for a classifier), any float dtype.
        batch: from :func:`logitstore.collate.collate` / a ``LogitDataset``, on the student's device.
        kind: ``forward_kl`` | ``reverse_kl`` | ``jsd`` (:func:`divergence_loss`), ``nkd`` (:func:`nkd_loss`),
            ``standardized_kd`` (:func:`standardized_kd_loss`), ``sel`` (:func:`sel_loss`), ``uld``
            (:func:`uld_loss`).
        tail: for the divergences (default ``ghost``) and NKD (``ghost`` | ``renorm``).
        temperature: default 1 for every kind (pass 2 for the standardized KD paper's setting); SEL has none.
        ce_weight: ``(1 - ce_weight) * loss + ce_weight * CE(labels)``.
        beta: JSD's mixture weight (default 0.5). gamma: NKD's non-target weight (default 1.5).
        source: SEL's sampled labels (``auto`` | ``draws`` | ``label``).
        chunk_size: positions per chunk (None: automatic); results do not depend on it.
        labels: ``[B, T]`` next-token ids (default ``batch["labels"]``; -100 is ignored).

    Returns:
        A scalar tensor (float32).
    """
    if kind not in KINDS:
        raise InvalidInputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    given = {"tail": tail, "beta": beta, "gamma": gamma, "source": source, "temperature": temperature}
    takes = {
        "forward_kl": {"tail", "beta", "temperature"},
        "reverse_kl": {"tail", "beta", "temperature"},
        "jsd": {"tail", "beta", "temperature"},
        "nkd": {"tail", "gamma", "temperature"},
        "standardized_kd": {"temperature"},
        "sel": {"source"},
        "uld": {"temperature"},
    }[kind]
    stray = sorted(name for name, value in given.items() if value is not None and name not in takes)
    if stray:
        raise InvalidInputError(
            f"kind={kind!r} takes no {', '.join(stray)}; it takes {', '.join(sorted(takes)) or 'no options'} "
            "(besides ce_weight, chunk_size, labels)"
        )
    common: dict[str, Any] = {"ce_weight": ce_weight, "chunk_size": chunk_size, "labels": labels}
    if temperature is not None:
        common["temperature"] = temperature
    if kind in DIVERGENCES:
        refuse_cross_tokenizer(batch, f"kind={kind!r}")
        beta = 0.5 if beta is None else beta
        return divergence_loss(student_logits, batch, kind=kind, tail=tail or "ghost", beta=beta, **common)  # type: ignore[arg-type]
    if kind == "nkd":
        gamma = 1.5 if gamma is None else gamma
        return nkd_loss(student_logits, batch, tail=tail or "ghost", gamma=gamma, **common)  # type: ignore[arg-type]
    if kind == "standardized_kd":
        common.setdefault("temperature", 1.0)
        return standardized_kd_loss(student_logits, batch, **common)
    if kind == "sel":
        return sel_loss(student_logits, batch, source=source or "auto", **common)  # type: ignore[arg-type]
    return uld_loss(student_logits, batch, **common)
