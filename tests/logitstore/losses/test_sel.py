"""The sampled-label squared error (Zhao & Zhu): the formula by hand, and its point: a student fit to sampled
labels with SEL recovers the teacher, while CE weighted by the revealed probabilities converges to p^2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logitstore import LOSSLESS, Spec
from logitstore.collate import collate
from logitstore.errors import InvalidInputError, SpecMismatchError
from logitstore.losses import kd_loss, sel_loss
from tests.conftest import sparse_record
from tests.logitstore.losses.conftest import batch_for


def test_draws_by_hand(logits):
    z, s = logits
    batch = batch_for(Spec(method="sample", n=12, encoding=LOSSLESS), z)
    got = sel_loss(s, batch)
    log_p, log_q = torch.log_softmax(z.double(), -1), torch.log_softmax(s.double(), -1)
    ids, counts, mask = batch["target_ids"].long(), batch["target_counts"].double(), batch["target_mask"]
    sq = 0.5 * (log_q.gather(-1, ids) - log_p.gather(-1, ids)) ** 2
    want = (counts / 12 * sq * mask).sum(-1).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert kd_loss(s, batch, kind="sel").item() == got.item()


@pytest.mark.parametrize("method", ["topk", "sample"])
def test_label_source_by_hand(logits, method):
    z, s = logits
    spec = Spec(method="topk", k=4) if method == "topk" else Spec(method="sample", n=8)
    batch = batch_for(spec, z, label_logprob=True)
    got = sel_loss(s, batch, source="label")
    labels = batch["labels"]
    has = labels != -100
    y = labels.clamp(min=0)[..., None]
    diff = torch.log_softmax(s.double(), -1).gather(-1, y) - torch.log_softmax(z.double(), -1).gather(-1, y)
    want = (0.5 * diff.squeeze(-1) ** 2)[has].mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-3, abs=1e-4)  # q16 label logprobs


def _fit(loss_fn, p: torch.Tensor, steps: int = 600) -> torch.Tensor:
    s = torch.zeros(1, 1, len(p), requires_grad=True)
    opt = torch.optim.Adam([s], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(s).backward()
        opt.step()
    return torch.softmax(s.detach()[0, 0].double(), -1)


def test_sel_recovers_the_teacher_where_probability_weighted_ce_learns_p_squared():
    """The paper's Lemma 4.2 / Theorem 4.4 in miniature: 4,000 draws from a 10-way teacher (every label observed)."""
    rng = np.random.default_rng(0)
    z = torch.from_numpy(rng.normal(0, 1.5, size=(1, 10)).astype(np.float32))
    p = torch.softmax(z[0].double(), -1)
    spec = Spec(method="sample", n=4000, encoding=LOSSLESS)
    tokens = np.array([1], dtype=np.int32)
    rec = sparse_record(spec, z, seq_id=0, input_ids=tokens)
    assert len(rec.ids) == 10
    batch = collate([rec], spec=spec, vocab_size=10)
    sel = _fit(lambda s: sel_loss(s, batch), p)
    # the "natural" alternative: cross-entropy on the draws, weighted by the revealed p(a_i)
    counts, log_p = batch["target_counts"].double(), batch["target_logprobs"].double()
    weighted_ce = _fit(lambda s: -(counts * log_p.exp() * torch.log_softmax(s.double(), -1)).sum(), p)
    tv = lambda a, b: 0.5 * float((a - b).abs().sum())  # noqa: E731
    assert tv(sel, p) < 0.01
    assert tv(weighted_ce, p**2 / (p**2).sum()) < 0.02 and tv(weighted_ce, p) > 0.1


def test_refusals(logits):
    z, s = logits
    topk = batch_for(Spec(method="topk", k=4), z)
    with pytest.raises(SpecMismatchError, match="target_counts, which this cache does not store.*--method sample"):
        sel_loss(s, topk, source="draws")
    with pytest.raises(SpecMismatchError, match="label_logprob"):
        sel_loss(s, topk)
    with pytest.raises(InvalidInputError, match="kind='sel' takes no temperature"):
        kd_loss(s, topk, kind="sel", temperature=2.0)
    with pytest.raises(InvalidInputError, match="source must be one of"):
        sel_loss(s, topk, source="teacher")
