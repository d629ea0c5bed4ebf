"""What every loss shares: shape checks, the fields a loss needs from the cache, and the chunked, recomputed
evaluation over positions that keeps memory at ``O(B*T*K)`` plus one chunk's ``[chunk, V]``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from logitstore.errors import InvalidInputError, SpecMismatchError

#: "probability zero" as a finite log: exp underflows to exactly 0, and no gradient meets inf - inf.
NEG = -1.0e4
#: automatic chunking keeps temporaries of [positions, V] float32 near this many elements.
CHUNK_ELEMENTS = 1 << 24

#: the precompute flag that stores each optional batch field, for errors that name the fix
FIELD_FLAGS = {
    "label_logprob": "on by default for language models; it is off with --no-label-logprob (and in caches "
    "built before it existed)",
    "logit_mean": "--logit-stats",
    "logit_std": "--logit-stats",
    "target_counts": "--method sample",
}


def require(batch: Mapping[str, Any], name: str, loss: str) -> torch.Tensor:
    """``batch[name]``, or an error naming the missing field and the precompute flag that stores it."""
    value = batch.get(name)
    if value is None:
        raise SpecMismatchError(
            f"{loss} needs the teacher's {name}, which this cache does not store; rebuild it with precompute "
            f"({FIELD_FLAGS.get(name, name)})"
        )
    return value


def student_positions(student_logits: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
    """``[B, T, V_s]`` (or ``[B, V_s]`` for a classifier cache) -> ``([B*T, V_s], vocab)``: the flattened logits
    and the cache's vocabulary (student logits beyond it are ignored)."""
    ids = batch["target_ids"]
    logits = student_logits.unsqueeze(1) if student_logits.dim() == 2 else student_logits
    if logits.dim() != 3 or logits.shape[:2] != ids.shape[:2]:
        raise InvalidInputError(
            f"student logits {tuple(student_logits.shape)} do not match targets {tuple(ids.shape)}: expected "
            f"[B, T, V] with B, T = {tuple(ids.shape[:2])} (or [B, V] for a classifier cache)"
        )
    b, t, v_student = logits.shape
    vocab = int(batch.get("vocab_size", v_student))
    if v_student < vocab:
        raise SpecMismatchError(
            f"the student has {v_student} logits but the batch's targets use ids up to {vocab - 1}: build the "
            f"LogitDataset with student_vocab_size={v_student} (it checks whether the teacher's extra ids are padding)"
        )
    return logits.reshape(b * t, v_student), vocab


def check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise InvalidInputError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")


def per_position(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    flat: torch.Tensor,
    targets: Sequence[torch.Tensor | None],
    chunk_size: int | None,
) -> tuple[torch.Tensor, ...]:
    """Evaluate ``fn(logits_chunk [P, V], *targets_chunk) -> tuple of [P]`` over chunks of positions of ``flat
    [N, V]`` (targets ``[N, ...]`` or None) and concatenate. With gradients, each chunk is recomputed in the
    backward pass, so only one chunk's ``[P, V]`` temporaries exist at a time; chunked and unchunked results are
    equal."""
    positions, v = flat.shape
    per_chunk = chunk_size or max(1, CHUNK_ELEMENTS // max(v, 1))
    recompute = torch.is_grad_enabled() and flat.requires_grad and per_chunk < positions
    parts: list[tuple[torch.Tensor, ...]] = []
    # split, not flat[lo:hi]: each slice's backward would materialize a full [positions, V] gradient
    for piece, lo in zip(flat.split(per_chunk), range(0, positions, per_chunk), strict=True):
        hi = lo + piece.shape[0]
        args = [piece] + [None if x is None else x[lo:hi] for x in targets]
        parts.append(checkpoint(fn, *args, use_reentrant=False) if recompute else fn(*args))
    return tuple(torch.cat(values) for values in zip(*parts, strict=True))


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [N]`` where ``valid [N]`` (0 when nothing is valid)."""
    return (values * valid).sum() / valid.sum().clamp(min=1)


def teacher_label_logprob(batch: Mapping[str, Any], labels: torch.Tensor, loss: str) -> torch.Tensor:
    """``[B, T]`` teacher log-probability of ``labels [B, T]``: the cache's ``label_logprob`` field, or, on a
    dense cache (every logprob stored, e.g. a classifier's), the stored logprob at the label."""
    value = batch.get("label_logprob")
    if value is not None:
        return value.float()
    spec = batch.get("spec")
    if spec is not None and spec.method == "dense":
        safe = labels.clamp(min=0).long().unsqueeze(-1)
        return batch["target_logprobs"].float().gather(-1, safe).squeeze(-1)
    return require(batch, "label_logprob", loss)


def refuse_cross_tokenizer(batch: Mapping[str, Any], loss: str) -> None:
    """Only ULD compares distributions over different vocabularies; every other loss needs one tokenizer."""
    if batch.get("cross_tokenizer"):
        raise SpecMismatchError(
            f"{loss} compares the student and the teacher id by id, but this batch was re-tokenized for a student "
            "with another tokenizer (LogitDataset(student_tokenizer=...)); use kind='uld', the one loss that "
            "compares sorted distributions, or a student with the teacher's tokenizer"
        )
