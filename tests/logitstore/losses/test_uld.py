"""ULD against the sorted-probability formula on full logits, the tail bucket's bound, and its refusals."""

from __future__ import annotations

import pytest
import torch

from logitstore import LOSSLESS, Spec
from logitstore.errors import InvalidInputError, SpecMismatchError
from logitstore.losses import kd_loss, uld_loss
from tests.logitstore.losses.conftest import V, batch_for


def reference(z: torch.Tensor, s: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """The authors' ULD (Nicolas-BZRD/llm-recipes): sum of |sorted p - sorted q| per position, mean."""
    p = torch.softmax(z.double() / tau, -1).sort(-1, descending=True).values
    q = torch.softmax(s.double() / tau, -1).sort(-1, descending=True).values
    return (p - q).abs().sum(-1).mean()


@pytest.mark.parametrize(
    ("spec", "tau"),
    [
        (Spec(method="dense", encoding=LOSSLESS), 1.0),
        (Spec(method="dense", encoding=LOSSLESS), 2.0),
        (Spec(method="topk", k=V, encoding=LOSSLESS), 1.0),
        (Spec(method="topp", p=1.0, k=V, encoding=LOSSLESS), 1.0),
    ],
    ids=["dense", "dense-tau2", "topk=V", "topp=1"],
)
def test_a_cache_with_everything_equals_the_reference(logits, spec, tau):
    z, s = logits
    batch = batch_for(spec, z)
    got = uld_loss(s, batch, temperature=tau)
    assert got.item() == pytest.approx(reference(z, s, tau).item(), rel=1e-4)
    assert kd_loss(s, batch, kind="uld", temperature=tau).item() == got.item()


@pytest.mark.parametrize("k", [1, 4, 16])
def test_truncated_cache_is_a_lower_bound_within_twice_the_tail(logits, k):
    z, s = logits
    batch = batch_for(Spec(method="topk", k=k, encoding=LOSSLESS), z)
    s = s.clone().requires_grad_(True)
    got = uld_loss(s, batch)
    p = torch.softmax(z.double(), -1)
    r = 1 - p.sort(-1, descending=True).values[..., :k].sum(-1)
    full = reference(z, s.detach())
    assert full.item() - 2 * r.mean().item() - 1e-6 <= got.item() <= full.item() + 1e-6
    q = torch.softmax(s.detach().double(), -1).sort(-1, descending=True).values
    head = (p.sort(-1, descending=True).values[..., :k] - q[..., :k]).abs().sum(-1)
    by_hand = (head + (r - q[..., k:].sum(-1)).abs()).mean()
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-4)
    got.backward()
    assert torch.isfinite(s.grad).all()


def test_refusals(logits):
    z, s = logits
    with pytest.raises(SpecMismatchError, match="sample cache's stored ids are a random support"):
        uld_loss(s, batch_for(Spec(method="sample", n=8), z))
    with pytest.raises(InvalidInputError, match="tempered teacher's tail is unknown"):
        uld_loss(s, batch_for(Spec(method="topk", k=4), z), temperature=2.0)
    with pytest.raises(InvalidInputError, match="kind='uld' takes no tail"):
        kd_loss(s, batch_for(Spec(method="topk", k=4), z), kind="uld", tail="ghost")
