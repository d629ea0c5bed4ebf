"""Cross-tokenizer alignment: a student with another tokenizer, paired positions that predict the same text,
ULD on the aligned batch by hand, and the relaxed check only for ULD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logitstore import DatasetWriter, Spec, TokenizerInfo
from logitstore.compat import tokenizer_fingerprint
from logitstore.errors import SpecMismatchError
from logitstore.losses import kd_loss, uld_loss
from logitstore.torch import LogitDataset
from logitstore.workers.checkpoints import train_bpe_tokenizer
from tests.conftest import CORPUS, sparse_record, teacher, teacher_like_logits


@pytest.fixture(scope="module")
def cross(tmp_path_factory):
    """A top-k cache over CORPUS tokenized by a 200-id BPE, and a student BPE of 120 ids (other merges)."""
    root = tmp_path_factory.mktemp("cross")
    teacher_tok, student_tok = train_bpe_tokenizer(CORPUS, 200), train_bpe_tokenizer(CORPUS, 120)
    teacher_tok.save_pretrained(root / "teacher_tok")
    student_tok.save_pretrained(root / "student_tok")
    spec = Spec(method="topk", k=8)
    info = TokenizerInfo(
        name=str(root / "teacher_tok"), vocab_size=len(teacher_tok), vocab_hash=tokenizer_fingerprint(teacher_tok)
    )
    rng = np.random.default_rng(0)
    with DatasetWriter(root / "ds", spec=spec, teacher=teacher(200), tokenizer=info) as w:
        for i, text in enumerate(CORPUS):
            ids = np.asarray(teacher_tok(text)["input_ids"], dtype=np.int32)
            w.write(sparse_record(spec, teacher_like_logits(rng, len(ids), 200), seq_id=i, input_ids=ids))
    return root, teacher_tok, student_tok


def test_paired_positions_predict_the_continuation_of_the_same_text(cross):
    root, teacher_tok, student_tok = cross
    ds = LogitDataset(root / "ds", batch_size=4, shuffle=False, student_tokenizer=root / "student_tok")
    batch = next(iter(ds))
    assert batch["cross_tokenizer"] and 0.3 < batch["aligned_fraction"] <= 1.0
    teacher_ids, student_ids = batch["teacher_input_ids"], batch["input_ids"]
    pairs = 0
    for b in range(student_ids.shape[0]):
        for j, t in enumerate(batch["teacher_position"][b].tolist()):
            if t >= 0:
                s_text = student_tok.decode(student_ids[b, : j + 1].tolist())
                t_text = teacher_tok.decode(teacher_ids[b, : t + 1].tolist())
                assert s_text == t_text
                pairs += 1
    assert pairs > 10


def test_uld_on_an_aligned_batch_by_hand(cross):
    root, _, student_tok = cross
    ds = LogitDataset(root / "ds", batch_size=4, shuffle=False, student_tokenizer=student_tok)
    batch = next(iter(ds))
    b, length = batch["input_ids"].shape
    s = torch.randn(b, length, len(student_tok), generator=torch.Generator().manual_seed(0), requires_grad=True)
    got = uld_loss(s, batch)
    terms = []
    for i in range(b):
        for j, t in enumerate(batch["teacher_position"][i].tolist()):
            if t < 0:
                continue
            p = batch["target_logprobs"][i, t].double().exp()  # rank order: the teacher's top 8, descending
            q = torch.softmax(s[i, j].detach().double(), -1).sort(descending=True).values
            terms.append((p - q[:8]).abs().sum() + ((1 - p.sum()).clamp(min=0) - q[8:].sum()).abs())
    assert got.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-4)
    got.backward()
    unpaired = batch["teacher_position"] < 0
    assert s.grad[unpaired].abs().sum() == 0 and s.grad[~unpaired].abs().sum() > 0
    with pytest.raises(SpecMismatchError, match="re-tokenized for a student with another tokenizer"):
        kd_loss(s, batch, kind="forward_kl")


def test_the_teacher_tokenizer_must_be_the_caches(cross):
    root, _, student_tok = cross
    with pytest.raises(SpecMismatchError, match="is not the tokenizer cache"):
        LogitDataset(root / "ds", batch_size=4, student_tokenizer=student_tok, teacher_tokenizer=student_tok)
