"""Corpora in every supported format become the same packed sequences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from logitstore.errors import InvalidInputError
from logitstore.workers.corpus import detect_format, iter_documents, pack_corpus

DOCS = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota kappa"]
VOCAB = {w: i + 10 for i, w in enumerate(" ".join(DOCS).split())}
EOS = 2


def tokenize(text: str) -> list[int]:
    return [VOCAB[w] for w in text.split()]


def _pack(path: Path, tmp: Path, **kw) -> list[list[int]]:
    corpus = pack_corpus(iter_documents(path), tokenize, tmp / "packed", seq_len=kw.pop("seq_len", 4), eos_id=EOS, **kw)
    reader = corpus.open()
    return [reader[i].tolist() for i in range(len(reader))]


def _formats(tmp: Path) -> dict[str, Path]:
    jsonl = tmp / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    parquet_text = tmp / "text.parquet"
    pq.write_table(pa.table({"text": DOCS}), parquet_text)
    parquet_ids = tmp / "ids.parquet"
    pq.write_table(pa.table({"input_ids": [tokenize(d) for d in DOCS]}), parquet_ids)
    text_dir = tmp / "texts"
    text_dir.mkdir()
    for i, d in enumerate(DOCS):
        (text_dir / f"{i:02d}.txt").write_text(d)
    import datasets

    hf = tmp / "hf"
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(hf))
    return {"jsonl": jsonl, "parquet": parquet_text, "parquet-ids": parquet_ids, "text": text_dir, "hf": hf}


def test_every_format_packs_to_the_same_sequences(tmp_path) -> None:
    expected = [[10, 11, 12, EOS], [13, 14, EOS, 15], [16, 17, 18, 19], [EOS]]
    for name, path in _formats(tmp_path).items():
        assert _pack(path, tmp_path / name) == expected, name


def test_no_pack_keeps_one_truncated_document_per_sequence(tmp_path) -> None:
    path = _formats(tmp_path)["jsonl"]
    assert _pack(path, tmp_path / "np", pack=False, seq_len=3) == [[10, 11, 12], [13, 14], [15, 16, 17]]


def test_fingerprint_depends_on_content_and_layout(tmp_path) -> None:
    path = _formats(tmp_path)["jsonl"]
    a = pack_corpus(iter_documents(path), tokenize, tmp_path / "a", seq_len=4, eos_id=EOS)
    b = pack_corpus(iter_documents(path), tokenize, tmp_path / "b", seq_len=4, eos_id=EOS)
    c = pack_corpus(iter_documents(path), tokenize, tmp_path / "c", seq_len=5, eos_id=EOS)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert np.load(tmp_path / "a" / "sequences.npy").tolist() == [0, 4, 8, 12, 13]


def test_bad_corpora(tmp_path) -> None:
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(InvalidInputError, match=r"suffix '\.csv'"):
        detect_format(tmp_path / "x.csv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(InvalidInputError, match=r"bad\.jsonl:2 is not valid JSON"):
        list(iter_documents(bad))
    other = tmp_path / "other.jsonl"
    other.write_text('{"body": "x"}\n')
    with pytest.raises(InvalidInputError, match="no field 'text'.*--text-column"):
        list(iter_documents(other))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no .parquet, .jsonl or .txt files"):
        detect_format(tmp_path / "empty")
