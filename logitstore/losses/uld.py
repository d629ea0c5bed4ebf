"""ULD, the universal logit distillation loss (Boizard et al., "Towards Cross-Tokenizer Distillation: the
Universal Logit Distillation Loss for LLMs", 2024), which needs no shared vocabulary.

Per position, the Wasserstein-1 distance between the teacher's and the student's probability vectors with their
ids forgotten: both sorted in decreasing order (the shorter one padded with zeros), then::

    ULD = sum_k | p_(k) - q_(k) |

(the authors' code, ``Nicolas-BZRD/llm-recipes``, at temperature 1 on both sides; they train with
``CE + 1.5 ULD``: here ``(1 - ce_weight) ULD + ce_weight CE``, so ``ce_weight = 0.4`` is their mix, scaled by 0.4).

From a cache: a top-k / top-p cache stores exactly the teacher's largest ``K_t`` probabilities of position t, in
order; a dense cache all of them. Ranks past ``K_t`` are not known one by one, only their total ``r`` (exact, from
the stored lse), so they form one bucket against the student's mass past rank ``K_t``::

    ULD_cache = sum_{k < K_t} | p_(k) - q_(k) |  +  | r - sum_{k >= K_t} q_(k) |

which equals ULD on a dense cache (or top-k with k = V) and is otherwise a lower bound on it, short by at most
``2 r`` (triangle inequality). A ``sample`` cache is refused: its stored ids are a random support, not the top
ranks.

Cross-tokenizer students: :class:`logitstore.align.TokenizerAligner` (``LogitDataset(student_tokenizer=...)``)
re-tokenizes each batch and pairs each student position with the teacher position that predicts the continuation
of the same text (``batch["teacher_position"]``); unpaired positions are skipped. See docs/TRAINING.md for what
that costs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from logitstore.errors import InvalidInputError, SpecMismatchError
from logitstore.losses._common import check_chunk_size, masked_mean, per_position, student_positions
from logitstore.losses.divergence import batch_labels, label_nll, mix_ce


def uld_loss(
    student_logits: torch.Tensor,
    batch: Mapping[str, Any],
    *,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
    chunk_size: int | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """ULD (module docstring) of student logits ``[B, L, V_s]`` against a cached batch; ``L = T`` and ``V_s``
    at least the cache's vocabulary for a student with the teacher's tokenizer, anything for a batch aligned by
    :class:`~logitstore.align.TokenizerAligner`.

    Args:
        temperature: both sides (dense caches only: a truncated cache's tempered tail is unknown).
        ce_weight: mixes in CE on the student's own labels.

    Returns:
        A scalar tensor, the mean over positions paired with a teacher distribution.
    """
    check_chunk_size(chunk_size)
    spec = batch.get("spec")
    if spec is not None and spec.method == "sample":
        raise SpecMismatchError(
            "ULD compares sorted probabilities rank by rank, but a sample cache's stored ids are a random support, "
            "not the teacher's top ranks; use a topk, topp or dense cache"
        )
    dense = spec is not None and spec.method == "dense"
    if not (temperature > 0 and 0.0 <= ce_weight <= 1.0):
        raise InvalidInputError(f"need temperature > 0 and ce_weight in [0, 1], got {temperature}, {ce_weight}")
    if temperature != 1.0 and not dense:
        raise InvalidInputError(
            f"ULD at temperature {temperature} on a {spec.method if spec else 'sparse'} cache: the tempered teacher's "
            "tail is unknown; use temperature=1 or a dense cache"
        )
    lp, mask = batch["target_logprobs"].float(), batch["target_mask"]
    where = batch.get("teacher_position")
    if where is None:
        flat, vocab = student_positions(student_logits, batch)
    else:  # a student with another tokenizer: its own positions and vocabulary
        if student_logits.dim() != 3 or student_logits.shape[:2] != where.shape:
            raise InvalidInputError(
                f"student logits {tuple(student_logits.shape)} do not match the aligned batch: expected [B, L, V_s] "
                f"with B, L = {tuple(where.shape)} (the student's input_ids)"
            )
        paired = (where >= 0).unsqueeze(-1)
        index = where.clamp(min=0).long().unsqueeze(-1).expand(-1, -1, lp.shape[-1])
        lp, mask = lp.gather(1, index), mask.gather(1, index) & paired
        flat, vocab = student_logits.reshape(-1, student_logits.shape[-1]), student_logits.shape[-1]
    n = flat.shape[0]
    labels = batch_labels(batch, labels, ce_weight)
    targets = [
        lp.reshape(n, -1),
        mask.reshape(n, -1),
        None if labels is None or ce_weight == 0 else labels.reshape(n),
    ]

    def run(*a: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return _chunk(*a, temperature=temperature, vocab=vocab)

    uld, ce = per_position(run, flat, targets, chunk_size)
    value = masked_mean(uld, mask.reshape(n, -1).any(-1))
    return mix_ce(value, ce, targets[2], ce_weight)


def _chunk(
    s: torch.Tensor,
    lp: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: float,
    vocab: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position ULD and CE ``([P], [P])`` of ``s [P, V_s]`` against teacher logprobs ``[P, K]``."""
    x = s[:, :vocab].float()
    keep = mask & ~torch.isneginf(lp)
    lt = torch.log_softmax((lp / temperature).masked_fill(~keep, float("-inf")), dim=-1) if temperature != 1 else lp
    p = torch.exp(lt.masked_fill(~keep, float("-inf")))
    p = torch.sort(p, dim=-1, descending=True).values  # stored top ranks are in order already; dense ones are not
    k = p.shape[-1]
    q = torch.softmax(x / temperature, dim=-1)
    q_top = torch.topk(q, min(k, q.shape[-1]), dim=-1).values
    if q_top.shape[-1] < k:  # a student vocabulary smaller than the teacher's entries: pad with zeros, as ULD does
        q_top = torch.cat([q_top, q_top.new_zeros(q_top.shape[0], k - q_top.shape[-1])], dim=-1)
    ranks = torch.arange(k, device=p.device)[None, :] < keep.sum(-1, keepdim=True)
    head = (torch.abs(p - q_top) * ranks).sum(-1)
    p_tail = torch.clamp(1.0 - (p * ranks).sum(-1), min=0.0)
    q_tail = torch.clamp(1.0 - (q_top * ranks).sum(-1), min=0.0)
    uld = head + torch.abs(p_tail - q_tail)
    if labels is None:
        return uld, torch.zeros_like(uld)
    return uld, label_nll(torch.log_softmax(x, dim=-1), labels)
