"""`logitstore report`: its numbers against direct numpy computations on the distributions that were written, and
the page: index.html, the PNGs it references, report.json, the CLI."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from logitstore import LOSSLESS, DatasetWriter, Spec, open_dataset
from logitstore.cli import main
from logitstore.errors import InvalidInputError
from logitstore.report import K_GRID, N_GRID, TOP_P, analyze, build_report
from tests.conftest import random_input_ids, sparse_record, teacher, teacher_like_logits

V = 96
T = 20


def write(root: Path, spec: Spec, rng, *, n: int = 10, fraction: float = 0.0, backend: str = "parquet"):
    """A dataset of ``n`` sequences of teacher-like logits; returns the float64 softmax ``[n * T, V]`` of every
    position (seq_id-major) and the audited rows as they were stored (float16)."""
    probs, audited = [], []
    with DatasetWriter(
        root, spec=spec, teacher=teacher(V), backend=backend, audit_fraction=fraction, shard_entries=4000
    ) as w:
        for seq_id in range(n):
            logits = teacher_like_logits(rng, T, V)
            record = sparse_record(spec, logits, seq_id=seq_id, input_ids=random_input_ids(rng, T, V))
            lp = torch.log_softmax(logits.double(), -1).numpy()
            probs.append(np.exp(lp))
            rows = lp[w.audit_positions(record)].astype(np.float32)
            audited.append(rows.astype(np.float16))
            w.write(record, audit_logprobs=rows if fraction else None)
    return np.concatenate(probs), np.concatenate(audited)


def entropy(p: np.ndarray) -> np.ndarray:
    return np.array([-sum(x * np.log(x) for x in row if x > 0) for row in p])


def reference_curves(p: np.ndarray, ks, ns) -> dict[str, np.ndarray]:
    """The audit quantities one row at a time, written out plainly."""
    out: dict[str, list] = {name: [] for name in ("mass", "renorm", "tail", "topp", "unique", "kept", "sqerr")}
    for row in p:
        row = row / row.sum()
        s = np.sort(row)[::-1]
        out["mass"].append([s[:k].sum() for k in ks])
        out["renorm"].append([-np.log(s[:k].sum()) for k in ks])
        tails = []
        for k in ks:
            t = s[k:]
            r = t.sum()
            uniform = r / len(t) if len(t) else 0.0
            tails.append(sum(x * np.log(x / uniform) for x in t if x > 0))
        out["tail"].append(tails)
        out["topp"].append([next(i + 1 for i in range(len(s)) if s[: i + 1].sum() >= q) for q in TOP_P])
        out["unique"].append([sum(1 - (1 - x) ** n for x in row) for n in ns])
        out["kept"].append([sum(x * (1 - (1 - x) ** n) for x in row) for n in ns])
        out["sqerr"].append([(1 - (row**2).sum()) / n for n in ns])
    return {name: np.array(v) for name, v in out.items()}


def test_dense_cache_exact_entropy_and_its_own_rows_as_the_audit(tmp_path, rng) -> None:
    p, _ = write(tmp_path / "dense", Spec(method="dense", encoding=LOSSLESS), rng)
    report = analyze(tmp_path / "dense")
    pos = report.positions
    assert pos.entropy_kind == "exact" and pos.entropy_upper is None and pos.positions == len(p) == 10 * T
    np.testing.assert_allclose(pos.entropy, entropy(p), rtol=1e-5)
    np.testing.assert_allclose(pos.kept_mass, 1.0, atol=1e-5)
    assert np.all(pos.entries == V)
    a = report.audit
    assert a is not None and a.source == "dense" and a.positions == len(p)
    assert a.ks == [k for k in K_GRID if k <= V] + [V] and a.ns == list(N_GRID)
    ref = reference_curves(p, a.ks, a.ns)
    np.testing.assert_allclose(a.entropy, entropy(p), rtol=1e-5)
    np.testing.assert_allclose(a.topk_mass, ref["mass"], rtol=1e-5)
    np.testing.assert_allclose(a.topk_kl_renorm, ref["renorm"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.topk_kl_tail, ref["tail"], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(a.topp_entries, ref["topp"])
    np.testing.assert_allclose(a.sample_unique, ref["unique"], rtol=1e-5)
    np.testing.assert_allclose(a.sample_mass, ref["kept"], rtol=1e-5)
    np.testing.assert_allclose(a.sample_sqerr, ref["sqerr"], rtol=1e-5)
    assert np.all(a.topk_kl_tail[:, -1] == 0) and np.allclose(a.topk_mass[:, -1], 1)  # k = V keeps everything
    assert any("dense cache is its own audit" in n for n in report.notes)


@pytest.mark.parametrize("backend", ["parquet", "zarr"])
@pytest.mark.parametrize("spec", [Spec(method="sample", n=24), Spec(method="topk", k=6)])
def test_bytes_by_field_add_up_to_the_files(tmp_path, rng, backend, spec) -> None:
    """Every physical column counts towards its record field: a top-k Parquet shard's ids_raw is part of ids and
    logprobs_escapes of logprobs (format_version 2), so the per-entry bytes behind the k / n estimates are whole."""
    write(tmp_path / "ds", spec, rng, backend=backend)
    ds = open_dataset(tmp_path / "ds")
    m = ds.manifest
    s = analyze(tmp_path / "ds").storage
    by_name = {f.name: f for f in s.fields}
    entry_fields = {"ids", "logprobs", "counts"} if spec.method == "sample" else {"ids", "logprobs"}
    assert {"input_ids", "lse", "nnz", "keys.idx", *entry_fields} <= set(by_name)
    assert {f.name for f in s.fields if f.per_entry} == entry_fields
    assert not {"ids_raw", "logprobs_escapes"} & set(by_name)
    assert sum(f.nbytes for f in s.fields) == sum(sh.nbytes for sh in m.shards) + m.key_index.nbytes
    assert s.bytes_per_token == pytest.approx(m.stats.bytes_per_token)
    entries = sum(sh.num_entries for sh in m.shards)
    entry_bytes = sum(by_name[n].nbytes for n in entry_fields)
    assert s.bytes_per_entry == pytest.approx(entry_bytes / entries)
    assert s.estimate(m.stats.mean_entries_per_position) == pytest.approx(m.stats.bytes_per_token)
    if backend == "parquet":  # the column chunks pyarrow reports for the logprobs field
        expected = 0
        for sh in m.shards:
            md = pq.ParquetFile(tmp_path / "ds" / sh.path).metadata
            for g in range(md.num_row_groups):
                for c in range(md.num_columns):
                    column = md.row_group(g).column(c)
                    if column.path_in_schema.split(".")[0] in ("logprobs", "logprobs_escapes"):  # blob, list leaf
                        expected += column.total_compressed_size
        assert by_name["logprobs"].nbytes == expected


def test_topk_entropy_bounds_bracket_the_true_entropy(tmp_path, rng) -> None:
    k = 8
    p, _ = write(tmp_path / "topk", Spec(method="topk", k=k, encoding=LOSSLESS), rng)
    pos = analyze(tmp_path / "topk").positions
    assert pos.entropy_kind == "bounds" and pos.entropy_upper is not None
    true = entropy(p)
    s = -np.sort(-p, axis=1)
    stored = -(s[:, :k] * np.log(s[:, :k])).sum(1)
    tail = 1 - s[:, :k].sum(1)
    np.testing.assert_allclose(pos.kept_mass, s[:, :k].sum(1), rtol=1e-5)
    np.testing.assert_allclose(pos.entropy, stored + tail * -np.log(s[:, k - 1]), rtol=1e-4)
    np.testing.assert_allclose(pos.entropy_upper, stored + tail * np.log((V - k) / tail), rtol=1e-4)
    assert np.all(pos.entropy <= true + 1e-5) and np.all(true <= pos.entropy_upper + 1e-5)
    assert report_has_no_audit(tmp_path / "topk")


def report_has_no_audit(path: Path) -> bool:
    return analyze(path).audit is None


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sample_entropy_is_the_unbiased_draw_average(tmp_path, rng, temperature) -> None:
    n = 40
    spec = Spec(method="sample", n=n, proposal_temperature=temperature, encoding=LOSSLESS)
    p, _ = write(tmp_path / "s", spec, rng, n=30)
    ds = open_dataset(tmp_path / "s")
    pos = analyze(tmp_path / "s").positions
    assert pos.entropy_kind == "estimate"
    expected = []
    for rec in ds:
        for t in range(len(rec)):
            a, b = rec.offsets[t], rec.offsets[t + 1]
            lp = rec.logprobs[a:b].astype(np.float64)
            w = rec.counts[a:b] / n
            if temperature != 1.0:
                logq = (lp + rec.lse[t]) / temperature - rec.proposal_lse[t]
                w = w * np.exp(lp - logq)
            expected.append(float((w * -lp).sum()))
    np.testing.assert_allclose(pos.entropy, expected, rtol=1e-5)
    # unbiased: over 600 positions the mean sits within a few standard errors of the true mean entropy
    err = pos.entropy - entropy(p)
    assert abs(err.mean()) < 4 * err.std() / np.sqrt(len(err)) + 1e-3


def test_audit_curves_come_from_the_stored_rows(tmp_path, rng) -> None:
    spec = Spec(method="topk", k=12, seed=7)
    _, rows = write(tmp_path / "a", spec, rng, fraction=0.2)
    report = analyze(tmp_path / "a")
    a = report.audit
    assert a is not None and a.source == "audit" and a.positions == len(rows) > 10
    assert 12 in a.ks
    ref = reference_curves(np.exp(rows.astype(np.float64)), a.ks, a.ns)
    np.testing.assert_allclose(a.topk_mass, ref["mass"], rtol=1e-6)
    np.testing.assert_allclose(a.topk_kl_tail, ref["tail"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(a.sample_unique, ref["unique"], rtol=1e-6)
    # the top-k(12) mass of the audited rows is what the shards store at those positions (q16: within 2%)
    i = a.ks.index(12)
    assert abs(a.topk_mass[:, i].mean() - report.positions.kept_mass.mean()) < 0.05
    capped = analyze(tmp_path / "a", max_audit_positions=7)
    assert capped.audit is not None and capped.audit.positions == 7
    np.testing.assert_array_equal(
        capped.audit.topk_mass, analyze(tmp_path / "a", max_audit_positions=7).audit.topk_mass
    )
    assert any("7 of the" in note for note in capped.notes)


def test_a_large_dataset_is_sampled_deterministically(tmp_path, rng) -> None:
    write(tmp_path / "big", Spec(method="topk", k=4), rng, n=40)
    one = analyze(tmp_path / "big", max_positions=100, seed=1)
    two = analyze(tmp_path / "big", max_positions=100, seed=1)
    other = analyze(tmp_path / "big", max_positions=100, seed=2)
    assert one.positions.sequences == 5 and one.positions.positions == 5 * T
    np.testing.assert_array_equal(one.positions.entropy, two.positions.entropy)
    assert not np.array_equal(one.positions.entropy, other.positions.entropy)
    assert any("5 of 40 sequences" in note for note in one.notes)
    with pytest.raises(InvalidInputError, match="max_positions must be an integer >= 1, got 0"):
        analyze(tmp_path / "big", max_positions=0)


def _page_links(index: Path) -> set[str]:
    return set(re.findall(r'src="([^"]+)"', index.read_text()))


def test_page_references_every_png_and_each_exists(tmp_path, rng, capsys) -> None:
    write(tmp_path / "ds", Spec(method="sample", n=16, seed=2), rng, fraction=0.3)
    assert main(["report", str(tmp_path / "ds"), "--out", str(tmp_path / "out")]) == 0
    index = Path(capsys.readouterr().out.strip())
    assert index == tmp_path / "out" / "index.html"
    links = _page_links(index)
    pngs = {p.name for p in (tmp_path / "out").glob("*.png")}
    assert (
        links
        == pngs
        == {
            "entropy.png",
            "kept_mass.png",
            "entries.png",
            "bytes.png",
            "audit_topk.png",
            "audit_sample.png",
            "budget.png",
        }
    )
    for name in pngs:
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = index.read_text()
    m = open_dataset(tmp_path / "ds").manifest
    for fact in (
        "test-teacher",
        m.spec.describe(),
        f"{m.num_sequences:,}",
        f"{m.num_tokens:,}",
        f"{m.stats.bytes_per_token:.2f}",
    ):
        assert fact in text
    numbers = json.loads((tmp_path / "out" / "report.json").read_text())
    assert numbers["summary"]["audit_positions"] == m.audit.num_positions
    assert [row["n"] for row in numbers["audit"]["sample"]] == list(N_GRID)


def test_page_without_an_audit_says_how_to_get_one(tmp_path, rng) -> None:
    write(tmp_path / "ds", Spec(method="topp", p=0.9, k=30), rng, n=3, backend="zarr")
    index = Path(build_report(tmp_path / "ds", tmp_path / "out"))
    assert _page_links(index) == {p.name for p in (tmp_path / "out").glob("*.png")}
    assert "audit_topk.png" not in _page_links(index) and "--audit-fraction" in index.read_text()


def test_missing_matplotlib_names_the_extra(tmp_path, rng, monkeypatch, capsys) -> None:
    write(tmp_path / "ds", Spec(method="topk", k=4), rng, n=2)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["report", str(tmp_path / "ds"), "--out", str(tmp_path / "out")]) == 2
    assert "pip install 'logitstore[report]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unreadable_sidecar_leaves_a_note_not_a_crash_and_urls_work(tmp_path, rng) -> None:
    write(tmp_path / "ds", Spec(method="topk", k=4), rng, n=4, fraction=0.5)
    url = (tmp_path / "ds").as_uri()  # file:// through fsspec, as for any remote store
    assert analyze(url).audit is not None
    for f in (tmp_path / "ds" / "audit").iterdir():
        f.unlink()
    report = analyze(url)
    assert report.audit is None and any("audit sidecar could not be read" in n for n in report.notes)
    text = Path(build_report(url, tmp_path / "out")).read_text()
    assert "could not be read at this location" in text and "audit sidecar could not be read here" in text
