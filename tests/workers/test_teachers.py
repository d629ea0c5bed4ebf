"""Teachers compute exactly the logits of the model's own forward, or refuse."""

from __future__ import annotations

import pytest
import torch

from logitstore.errors import InvalidInputError
from logitstore.workers.teachers import CausalLMTeacher


@pytest.fixture(scope="module")
def granite_dir(tmp_path_factory):
    """Granite divides its logits by config.logits_scaling inside forward()."""
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    config = GraniteConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        logits_scaling=8.0,
    )
    d = tmp_path_factory.mktemp("granite")
    GraniteForCausalLM(config).save_pretrained(d)
    return d


def test_chunked_head_equals_the_models_own_logits(granite_dir) -> None:
    teacher = CausalLMTeacher(granite_dir)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    ours = torch.cat([c for _, _, c in teacher.logit_chunks(ids, torch.ones_like(ids), 4)], dim=1)
    with torch.no_grad():
        ref = teacher.model(input_ids=ids).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_an_unknown_logit_transform_is_refused(granite_dir, monkeypatch) -> None:
    original = CausalLMTeacher.logit_chunks

    def skewed(self, input_ids, attention_mask, chunk):
        for t0, t1, logits in original(self, input_ids, attention_mask, chunk):
            yield t0, t1, logits * 2.0

    monkeypatch.setattr(CausalLMTeacher, "logit_chunks", skewed)
    with pytest.raises(InvalidInputError, match="chunked LM head differs from the model's own logits"):
        CausalLMTeacher(granite_dir)
