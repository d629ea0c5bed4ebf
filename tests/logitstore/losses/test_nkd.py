"""NKD against the authors' formula on full logits, the ghost tail by hand, and its refusals."""

from __future__ import annotations

import pytest
import torch

from logitstore import LOSSLESS, Spec
from logitstore.errors import InvalidInputError, SpecMismatchError
from logitstore.losses import kd_loss, nkd_loss
from tests.logitstore.losses.conftest import V, batch_for


def reference(z: torch.Tensor, s: torch.Tensor, labels: torch.Tensor, gamma: float, tau: float) -> torch.Tensor:
    """The authors' NKDLoss (yzd-v/cls_KD) over the positions with a label, on full logits ``[B, T, V]``."""
    has = labels != -100
    z, s, y = z[has].double(), s[has].double(), labels[has][:, None]
    s_t = torch.log_softmax(s, -1).gather(1, y)
    t_t = torch.softmax(z, -1).gather(1, y)
    loss_t = -(t_t * s_t).mean()
    keep = torch.ones_like(s).scatter_(1, y, 0).bool()
    n = s.shape[0]
    log_s = torch.log_softmax(s[keep].reshape(n, -1) / tau, -1)
    p_t = torch.softmax(z[keep].reshape(n, -1) / tau, -1)
    return loss_t - gamma * tau**2 * (p_t * log_s).sum(-1).mean()


@pytest.mark.parametrize("tail", ["ghost", "renorm"])
@pytest.mark.parametrize(("gamma", "tau"), [(1.5, 1.0), (3.5, 3.0)])
@pytest.mark.parametrize("cache", ["dense", "topk=V", "dense without label_logprob"])
def test_a_cache_with_everything_equals_the_reference(logits, tail, gamma, tau, cache):
    z, s = logits
    spec = Spec(method="dense", encoding=LOSSLESS) if cache.startswith("dense") else Spec(method="topk", k=V)
    batch = batch_for(spec, z, label_logprob="without" not in cache)
    if tail == "ghost" and tau != 1 and cache == "topk=V":
        with pytest.raises(InvalidInputError, match="tempered non-target tail mass is unknown"):
            nkd_loss(s, batch, gamma=gamma, temperature=tau, tail=tail)
        return
    got = nkd_loss(s, batch, gamma=gamma, temperature=tau, tail=tail)
    want = reference(z, s, batch["labels"], gamma, tau)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    via_kind = kd_loss(s, batch, kind="nkd", gamma=gamma, temperature=tau, tail=tail)
    assert via_kind.item() == got.item()


def test_ghost_tail_by_hand():
    """Top-k: exact non-target probabilities on the stored ids, the rest of the non-target mass as one bucket."""
    torch.manual_seed(1)
    z = torch.randn(1, 3, V) * 2
    s = torch.randn(1, 3, V, requires_grad=True)
    batch = batch_for(Spec(method="topk", k=5, encoding=LOSSLESS), z, label_logprob=True)
    got = nkd_loss(s, batch, gamma=2.0)
    total = torch.zeros((), dtype=torch.float64)
    for t in range(2):  # the last position has no label
        y = int(batch["labels"][0, t])
        p = torch.softmax(z[0, t].double(), -1)
        log_q = torch.log_softmax(s[0, t].double(), -1)
        stored = [i for i in batch["target_ids"][0, t].tolist() if i != y]
        others = [i for i in range(V) if i not in stored and i != y]
        log_qn = log_q - torch.log1p(-log_q[y].exp())  # normalized non-target student
        t_hat = p[stored] / (1 - p[y])
        ce = (t_hat * log_qn[stored]).sum() + (1 - t_hat.sum()) * torch.logsumexp(log_qn[others], 0)
        total = total + (-p[y] * log_q[y] - 2.0 * ce)
    assert got.item() == pytest.approx((total / 2).item(), rel=1e-5)
    got.backward()
    assert torch.isfinite(s.grad).all() and s.grad[0, 2].abs().sum() == 0  # no label, no gradient


def test_missing_fields_and_bad_options_are_named(logits):
    z, s = logits
    topk = batch_for(Spec(method="topk", k=8), z)
    with pytest.raises(SpecMismatchError, match="needs the teacher's label_logprob.*--no-label-logprob"):
        nkd_loss(s, topk)
    with pytest.raises(InvalidInputError, match="tail must be 'ghost' or 'renorm'"):
        nkd_loss(s, topk, tail="exact")
    with pytest.raises(InvalidInputError, match="kind='nkd' takes no beta"):
        kd_loss(s, topk, kind="nkd", beta=0.3)
    classifier = batch_for(Spec(method="dense", encoding=LOSSLESS), z[:, :1])
    classifier.pop("labels")
    with pytest.raises(InvalidInputError, match="NKD needs labels"):
        nkd_loss(s[:, :1], classifier)
