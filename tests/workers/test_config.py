"""Precompute options -> a validated config: spec defaults that depend on the teacher, and config files."""

from __future__ import annotations

import json

import pytest

from logitstore.errors import InvalidInputError
from logitstore.workers import load_config_file
from logitstore.workers.config import config_from_mapping, make_spec


def test_label_logprob_defaults_on_for_language_models_and_off_for_classifiers(tmp_path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    base = {"data": "corpus.jsonl", "out": "store/ds", "method": "topk", "k": 8}
    assert config_from_mapping({**base, "teacher": str(model_dir)}).spec.label_logprob
    assert not config_from_mapping({**base, "teacher": "pkg.module:make"}).spec.label_logprob
    off = config_from_mapping({**base, "teacher": str(model_dir), "label_logprob": False})
    assert not off.spec.label_logprob and not off.spec.logit_stats
    stats = config_from_mapping({**base, "teacher": str(model_dir), "spec": {"logit_stats": True}})
    assert stats.spec.logit_stats


def test_flags_from_a_config_file(tmp_path) -> None:
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"teacher": "m:f", "data": "d", "out": "o", "method": "dense", "logit_stats": True}))
    spec = load_config_file(config).spec
    assert spec.logit_stats and not spec.label_logprob
    with pytest.raises(InvalidInputError, match="label_logprob must be true or false"):
        make_spec("dense", label_logprob="yes")  # type: ignore[arg-type]


def test_the_sparsifier_and_codec_versions_are_part_of_a_jobs_identity() -> None:
    """A job started by a logitstore whose sparsifiers or codec could give other bytes is not resumed by this one."""
    from logitstore.codec import CODEC_VERSION
    from logitstore.sparsify import ALGORITHM_VERSION

    config = config_from_mapping({"teacher": "m:f", "data": "d", "out": "o", "method": "topk", "k": 4})
    assert config.identity()["sparsify_version"] == ALGORITHM_VERSION
    assert config.identity()["codec_version"] == CODEC_VERSION
