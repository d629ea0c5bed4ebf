"""Storage benchmark: bytes/token, fidelity and single-core encode/decode speed of logitstore datasets.

Run from the repository root::

    .venv/bin/python bench/storage.py            # default run (32,768 tokens per configuration)
    .venv/bin/python bench/storage.py --quick    # tiny smoke run, well under a minute
    .venv/bin/python bench/storage.py --tokens 65536 --profile

For V = 32,000 and 151,936, methods topk(k=64), topk(k=128), topp(p=0.95, k_max=100) and sample(n=50), backends
parquet and zarr, encodings compact (q16 logprobs, error bound 0.02 nats) and lossless (float32), it measures:

- bytes per token: the manifest's ``stats.bytes_per_token`` (all shard bytes + key index, over all tokens);
- entries per position and mean kept teacher mass (manifest stats);
- KL(teacher || reconstruction) in nats per position, computed in float64 from the dense teacher logits. The
  reconstruction puts the stored (decoded) logprobs on the kept ids and spreads the remaining mass
  ``1 - sum(exp(stored logprobs))`` uniformly over the ``V - nnz`` ids not stored. When that remaining mass is
  <= 0 (possible with q16 codes: a top logprob of -0.01 decodes to 0.0) it is floored at ``REST_FLOOR``; the share
  of such positions is reported;
- max |stored logprob - true teacher logprob| (float64 truth);
- encode throughput (``DatasetWriter`` construction + ``write`` of every record + ``finish``, i.e. records ->
  committed shards + key index + manifest; sparsification excluded) and decode throughput (``open_dataset`` +
  iterating every record), median of ``--repeats`` runs, with the page cache warm (the files were just written);
- sparsification throughput of ``logitstore.sparsify.sparsify`` (for information).

The timed runs use ``torch.set_num_threads(1)`` in a process pinned to a single CPU (``os.sched_setaffinity``) unless
``--no-pin``, so every throughput is a one-core number (library threads, if any, share that core). Logits come from
the synthetic teacher in ``bench/teacher_like.py``, or with ``--teacher DIR --text PATH`` from a real model over a
real corpus (``bench/real_teacher.py``; e.g. the demo teacher kept by ``bench/kd_quality.py``:
``--teacher bench/out/kd_quality/teacher --text bench/out/kd_quality/corpus/heldout.jsonl``). Results: stdout,
``bench/out/storage.md`` and ``bench/out/storage.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import multiprocessing
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_teacher import ModelTeacher  # noqa: E402
from teacher_like import NOISE_STD, PRIOR_WEIGHT, TeacherLike, entropy_and_lse  # noqa: E402

import logitstore  # noqa: E402
from logitstore.rng import position_streams  # noqa: E402
from logitstore.sparsify import sparsify  # noqa: E402

VOCABS = (32_000, 151_936)
BACKENDS = ("parquet", "zarr")
ENCODINGS = {"compact": logitstore.COMPACT, "lossless": logitstore.LOSSLESS}
METHODS: dict[str, dict[str, Any]] = {
    "topk64": {"method": "topk", "k": 64},
    "topk128": {"method": "topk", "k": 128},
    "topp95": {"method": "topp", "p": 0.95, "k": 100},
    "sample50": {"method": "sample", "n": 50},
}
#: Timed runs whose process CPU time / wall time falls below this were slowed by other processes on the machine.
CONTENDED = 0.9
#: Floor on the reconstruction's remaining mass when ``1 - sum(exp(stored logprobs)) <= 0``.
REST_FLOOR = 1e-9
OUT_DIR = Path(__file__).resolve().parent / "out"


# -- data ---------------------------------------------------------------------------------------------------------


@dataclass
class MethodData:
    """Sparsified records of one (V, method) and the float64 truth needed to score their reconstruction."""

    records: list[logitstore.Record] = field(default_factory=list)
    true_logprobs: list[np.ndarray] = field(default_factory=list)  # float64 per entry, from the dense logits
    sparsify_seconds: float = 0.0
    sparsify_sys_seconds: float = 0.0  # kernel time (page faults of fresh temporaries) within sparsify_seconds


@dataclass
class VocabData:
    vocab: int
    teacher: TeacherLike | ModelTeacher
    entropy: np.ndarray  # [P] float64 teacher entropy per position
    methods: dict[str, MethodData]
    seconds: dict[str, float]
    num_tokens: int


def make_spec(method: str, encoding: logitstore.Encoding, seed: int) -> logitstore.Spec:
    return logitstore.Spec(**METHODS[method], seed=seed, encoding=encoding)


def _prepare_sequences(
    vocab: int,
    first: int,
    stop: int,
    seq_len: int,
    seed: int,
    source: dict[str, Any],
    cpu: int | None,
) -> dict[str, Any]:
    """Generate (or run the model), score and sparsify sequences ``first..stop-1`` (in a worker process, one torch
    thread). ``source``: ``{"model": dir, "text": path}`` for a real teacher, else ``{"spike_scale": c,
    "teacher_kwargs": {...}}`` for the synthetic one."""
    torch.set_num_threads(1)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    teacher: TeacherLike | ModelTeacher
    if "model" in source:
        teacher = ModelTeacher(source["model"], source["text"], max_tokens=stop * seq_len)
    else:
        teacher = TeacherLike(vocab, seed=seed, spike_scale=source["spike_scale"], **source["teacher_kwargs"])
    specs = {m: make_spec(m, logitstore.COMPACT, seed) for m in METHODS}
    data = {m: MethodData() for m in METHODS}
    seconds = {"generate": 0.0, "entropy": 0.0}
    entropies = []
    for i in range(first, stop):
        if isinstance(teacher, ModelTeacher):
            input_ids = teacher.input_ids(i, seq_len)
        else:
            input_ids = np.random.default_rng([seed, vocab, i]).integers(0, vocab, size=seq_len, dtype=np.int32)
        key = logitstore.content_key(input_ids)
        streams, positions = position_streams(seed, [key], [seq_len])
        t = time.perf_counter()
        z = teacher.logits(i, seq_len)
        seconds["generate"] += time.perf_counter() - t
        t = time.perf_counter()
        ent, lse64 = entropy_and_lse(z)
        seconds["entropy"] += time.perf_counter() - t
        entropies.append(ent.numpy())
        for m, spec in specs.items():
            t, sys0 = time.perf_counter(), os.times().system
            sparse: dict[str, Any] = sparsify(z, spec, streams=streams, positions=positions).numpy()
            data[m].sparsify_seconds += time.perf_counter() - t
            data[m].sparsify_sys_seconds += os.times().system - sys0
            rows = torch.from_numpy(np.repeat(np.arange(seq_len), sparse["nnz"]))
            ids = torch.from_numpy(sparse["ids"].astype(np.int64))
            data[m].true_logprobs.append((z[rows, ids].double() - lse64[rows]).numpy())
            data[m].records.append(logitstore.Record(seq_id=i, key=key, input_ids=input_ids, **sparse))
        del z
    return {"data": data, "seconds": seconds, "entropy": entropies}


def build_vocab_data(
    vocab: int,
    num_seqs: int,
    seq_len: int,
    seed: int,
    calib: int,
    log: Any,
    *,
    jobs: int,
    cpus: list[int | None],
    teacher_kwargs: dict[str, Any],
    model: ModelTeacher | None = None,
) -> VocabData:
    """Calibrate the synthetic teacher here (or take ``model``'s logits), then generate + sparsify the sequences
    in ``jobs`` worker processes."""
    t0 = time.perf_counter()
    teacher: TeacherLike | ModelTeacher
    if model is not None:
        teacher = model
        model.check_length(num_seqs, seq_len)
        source: dict[str, Any] = {"model": str(model.directory), "text": str(model.text)}
    else:
        teacher = TeacherLike(vocab, seed=seed, calibration_positions=calib, **teacher_kwargs)
        assert teacher.spike_scale is not None
        source = {"spike_scale": teacher.spike_scale, "teacher_kwargs": teacher_kwargs}
    seconds = {"calibrate": time.perf_counter() - t0, "generate": 0.0, "entropy": 0.0}
    log(f"V={vocab}: {teacher.describe()} [{seconds['calibrate']:.1f}s]")
    jobs = max(1, min(jobs, num_seqs))
    bounds = [num_seqs * j // jobs for j in range(jobs + 1)]
    if jobs == 1:  # in this process (on whatever CPU it is pinned to)
        parts = [_prepare_sequences(vocab, 0, num_seqs, seq_len, seed, source, None)]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [
                pool.submit(
                    _prepare_sequences,
                    vocab,
                    bounds[j],
                    bounds[j + 1],
                    seq_len,
                    seed,
                    source,
                    cpus[j % len(cpus)],
                )
                for j in range(jobs)
            ]
            parts = [f.result() for f in futures]
    data = {m: MethodData() for m in METHODS}
    entropies: list[np.ndarray] = []
    for part in parts:
        for m, md in part["data"].items():
            data[m].records += md.records
            data[m].true_logprobs += md.true_logprobs
            data[m].sparsify_seconds += md.sparsify_seconds
            data[m].sparsify_sys_seconds += md.sparsify_sys_seconds
        for k, v in part["seconds"].items():
            seconds[k] += v
        entropies += part["entropy"]
    seconds["prepare_wall"] = time.perf_counter() - t0 - seconds["calibrate"]
    return VocabData(vocab, teacher, np.concatenate(entropies), data, seconds, num_seqs * seq_len)


# -- scoring ------------------------------------------------------------------------------------------------------


def fidelity(decoded: list[logitstore.Record], md: MethodData, entropy: np.ndarray, vocab: int) -> dict[str, float]:
    """KL(teacher || reconstruction) per position and logprob errors, all in float64."""
    nnz = np.concatenate([r.nnz for r in decoded]).astype(np.int64)
    lp_hat = np.concatenate([r.logprobs for r in decoded]).astype(np.float64)
    lp = np.concatenate(md.true_logprobs)
    lp_sparse = np.concatenate([r.logprobs for r in md.records]).astype(np.float64)
    n_pos = nnz.shape[0]
    pos = np.repeat(np.arange(n_pos), nnz)
    p = np.exp(lp)
    kept_true = np.bincount(pos, weights=p, minlength=n_pos)
    kept_plogp = np.bincount(pos, weights=p * lp, minlength=n_pos)
    kept_hat = np.bincount(pos, weights=np.exp(lp_hat), minlength=n_pos)
    kl_kept = np.bincount(pos, weights=p * (lp - lp_hat), minlength=n_pos)
    rest_true = np.clip(1.0 - kept_true, 0.0, None)
    rest_plogp = -entropy - kept_plogp  # sum over the ids not stored of p log p
    missing = (vocab - nnz).astype(np.float64)
    rest_hat = 1.0 - kept_hat
    floored = rest_hat < REST_FLOOR
    rest_hat = np.maximum(rest_hat, REST_FLOOR)
    has_rest = missing > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_rest = np.where(has_rest, rest_plogp - rest_true * np.log(rest_hat / missing), 0.0)
        # Same, but with the teacher's exact remaining mass: isolates the error of the stored values themselves.
        kl_rest_exact = np.where(has_rest & (rest_true > 0), rest_plogp - rest_true * np.log(rest_true / missing), 0.0)
    finite = np.isfinite(lp_hat)
    return {
        "kl": float(np.mean(kl_kept + kl_rest)),
        "kl_exact_rest": float(np.mean(kl_kept + kl_rest_exact)),
        "rest_floored_frac": float(np.mean(floored & has_rest)),
        "max_abs_logprob_err": float(np.max(np.abs(lp_hat[finite] - lp[finite]), initial=0.0)),
        "max_abs_err_vs_sparsify": float(np.max(np.abs(lp_hat[finite] - lp_sparse[finite]), initial=0.0)),
        "mean_kept_mass_f64": float(kept_true.mean()),
    }


def check_roundtrip(decoded: list[logitstore.Record], md: MethodData) -> None:
    """Everything but q16 logprobs must round-trip exactly (a benchmark on wrong data would be meaningless)."""
    if len(decoded) != len(md.records):
        raise AssertionError(f"decoded {len(decoded)} records, wrote {len(md.records)}")
    for a, b in zip(md.records, decoded, strict=True):
        for name in ("input_ids", "lse", "nnz", "ids", "counts"):
            x, y = getattr(a, name), getattr(b, name)
            if (x is None) != (y is None) or (x is not None and not np.array_equal(x, y)):
                raise AssertionError(f"seq {a.seq_id}: {name} did not round-trip")
        if a.key != b.key or a.seq_id != b.seq_id:
            raise AssertionError(f"seq {a.seq_id}: key/seq_id did not round-trip")


def column_bytes(root: Path, backend: str) -> dict[str, int]:
    """Compressed bytes by physical column over all shards, plus per-file overhead and the key index."""
    out: dict[str, int] = {}
    shards = sorted((root / "shards").iterdir())
    for shard in shards:
        if backend == "parquet":
            import pyarrow.parquet as pq

            md = pq.ParquetFile(shard).metadata
            used = 0
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                for j in range(rg.num_columns):
                    col = rg.column(j)
                    name = col.path_in_schema.split(".")[0]
                    out[name] = out.get(name, 0) + col.total_compressed_size
                    used += col.total_compressed_size
            out["(footer/metadata)"] = out.get("(footer/metadata)", 0) + shard.stat().st_size - used
        else:
            for child in shard.iterdir():
                size = (
                    sum(f.stat().st_size for f in child.rglob("*") if f.is_file())
                    if child.is_dir()
                    else child.stat().st_size
                )
                name = child.name if child.is_dir() else "(footer/metadata)"
                out[name] = out.get(name, 0) + size
    out["(key index)"] = (root / "keys.idx").stat().st_size
    return out


# -- one configuration --------------------------------------------------------------------------------------------


def run_config(
    vd: VocabData, method: str, enc_name: str, backend: str, *, seed: int, repeats: int, workdir: Path, keep: bool
) -> dict[str, Any]:
    md = vd.methods[method]
    spec = make_spec(method, ENCODINGS[enc_name], seed)
    teacher = logitstore.TeacherInfo(name="synthetic", vocab_size=vd.vocab)
    enc_wall, enc_cpu, dec_wall, dec_cpu = [], [], [], []
    path = workdir / f"V{vd.vocab}-{method}-{enc_name}-{backend}"
    manifest = None
    for i in range(repeats + 1):  # run 0 is an untimed warm-up (first-touch allocations, lazy imports)
        if path.exists():
            shutil.rmtree(path)
        w0, c0 = time.perf_counter(), time.process_time()
        writer = logitstore.DatasetWriter(path, spec=spec, teacher=teacher, backend=backend)
        for record in md.records:
            writer.write(record)
        manifest = writer.finish()
        if i:
            enc_wall.append(time.perf_counter() - w0)
            enc_cpu.append(time.process_time() - c0)
    decoded: list[logitstore.Record] = []
    for i in range(repeats + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        ds = logitstore.open_dataset(path)
        decoded = [r for r in ds]
        ds.close()
        if i:
            dec_wall.append(time.perf_counter() - w0)
            dec_cpu.append(time.process_time() - c0)
    assert manifest is not None and manifest.stats is not None
    check_roundtrip(decoded, md)
    fid = fidelity(decoded, md, vd.entropy, vd.vocab)
    cols = column_bytes(path, backend)
    if not keep:
        shutil.rmtree(path)
    tokens = vd.num_tokens
    enc_s, dec_s = statistics.median(enc_wall), statistics.median(dec_wall)
    return {
        "vocab": vd.vocab,
        "method": method,
        "spec": spec.describe(),
        "encoding": enc_name,
        "backend": backend,
        "num_tokens": tokens,
        "num_sequences": len(md.records),
        "num_shards": len(manifest.shards),
        "bytes_total": int(sum(s.nbytes for s in manifest.shards) + manifest.key_index.nbytes),
        "bytes_per_token": manifest.stats.bytes_per_token,
        "entries_per_position": manifest.stats.mean_entries_per_position,
        "mean_kept_mass": manifest.stats.mean_kept_mass,
        **fid,
        "encode_tokens_per_s": tokens / enc_s,
        "decode_tokens_per_s": tokens / dec_s,
        "encode_tokens_per_s_best": tokens / min(enc_wall),
        "decode_tokens_per_s_best": tokens / min(dec_wall),
        "encode_cpu_over_wall": sum(enc_cpu) / sum(enc_wall),
        "decode_cpu_over_wall": sum(dec_cpu) / sum(dec_wall),
        "encode_seconds": enc_wall,
        "encode_cpu_seconds": enc_cpu,
        "decode_seconds": dec_wall,
        "decode_cpu_seconds": dec_cpu,
        "column_bytes": cols,
        "column_bytes_per_token": {k: v / tokens for k, v in cols.items()},
    }


def profile_topk64(vd: VocabData, backend: str, seed: int, workdir: Path, top: int = 30) -> dict[str, str]:
    """cProfile of one topk64/compact encode and decode (text reports, sorted by cumulative then total time)."""
    md = vd.methods["topk64"]
    spec = make_spec("topk64", logitstore.COMPACT, seed)
    teacher = logitstore.TeacherInfo(name="synthetic", vocab_size=vd.vocab)
    path = workdir / f"profile-{backend}"
    if path.exists():
        shutil.rmtree(path)
    reports = {}
    prof = cProfile.Profile()
    prof.enable()
    writer = logitstore.DatasetWriter(path, spec=spec, teacher=teacher, backend=backend)
    for record in md.records:
        writer.write(record)
    writer.finish()
    prof.disable()
    reports["encode"] = _profile_text(prof, top)
    prof = cProfile.Profile()
    prof.enable()
    with logitstore.open_dataset(path) as ds:
        n = sum(len(r) for r in ds)
    prof.disable()
    assert n == vd.num_tokens
    reports["decode"] = _profile_text(prof, top)
    shutil.rmtree(path)
    return reports


def _profile_text(prof: cProfile.Profile, top: int) -> str:
    buf = io.StringIO()
    for key in ("cumulative", "tottime"):
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(top)
    return buf.getvalue()


# -- report -------------------------------------------------------------------------------------------------------


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}K"
    return f"{x / 1e3:.1f}K" if x >= 1e3 else f"{x:.0f}"


def fmt_kl(x: float) -> str:
    return f"{x:.4f}" if x >= 1e-3 else f"{x:.2e}"


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        if r["encoding"] != "compact":
            continue
        where = f"V={r['vocab']}, {r['backend']}, compact"
        if r["method"] == "sample50":
            out.append(
                {
                    "target": "sample n=50: <= 25 bytes/token",
                    "config": where,
                    "measured": f"{r['bytes_per_token']:.2f} B/tok",
                    "met": r["bytes_per_token"] <= 25,
                }
            )
        if r["method"] == "topk128":
            ok = r["bytes_per_token"] <= 200 and r["max_abs_logprob_err"] <= 0.02
            out.append(
                {
                    "target": "topk k=128: <= 200 bytes/token, max logprob error <= 0.02",
                    "config": where,
                    "measured": f"{r['bytes_per_token']:.2f} B/tok, err {r['max_abs_logprob_err']:.4f}",
                    "met": ok,
                }
            )
        if r["method"] == "topk64":
            for what in ("encode", "decode"):
                rate, best = r[f"{what}_tokens_per_s"], r[f"{what}_tokens_per_s_best"]
                ratio = r[f"{what}_cpu_over_wall"]
                note = f"; CPU/wall {ratio:.2f}: other processes took CPU time" if ratio < CONTENDED else ""
                out.append(
                    {
                        "target": f"topk k=64: {what} >= 1M tokens/s (one core)",
                        "config": where,
                        "measured": f"{rate / 1e6:.2f}M tok/s median (best {best / 1e6:.2f}M){note}",
                        "met": rate >= 1e6,
                    }
                )
    return out


def render(
    meta: dict[str, Any], vocab_meta: list[dict[str, Any]], results: list[dict[str, Any]], tgt: list[dict[str, Any]]
) -> str:
    lines = ["# logitstore storage benchmark", ""]
    lines += [
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; wall time {meta['wall_seconds']:.0f} s",
        f"- machine: {meta['cpu']} ({meta['cpus_visible']} CPUs visible); python {meta['python']}, "
        f"torch {meta['versions']['torch']}, numpy {meta['versions']['numpy']}, "
        f"pyarrow {meta['versions']['pyarrow']}, zarr {meta['versions']['zarr']}",
        f"- logitstore {meta['versions']['logitstore']} at commit {meta['git']['commit'][:12] or '?'}"
        + (
            f" with uncommitted library changes ({len(meta['git']['library_changes'])} files)"
            if meta["git"]["library_changes"]
            else ""
        )
        + (
            " (at start; **the library changed while the benchmark ran**: worker processes may have imported "
            "other code)"
            if meta["git_at_end"]["library_sha256"] != meta["git"]["library_sha256"]
            else " (library sources unchanged during the run)"
        ),
        f"- **one core**: torch.set_num_threads(1); process pinned to CPU {meta['pinned_cpu']} "
        f"(library threads share it); throughputs are wall-clock, median of {meta['repeats']} runs after one "
        "untimed warm-up, page cache warm; process CPU time / wall time of those runs: "
        + "-".join(f"{x:.2f}" for x in meta["cpu_over_wall"]),
        *(
            [
                f"- **warning**: other processes competed for the CPU during some timed runs (CPU/wall down to "
                f"{meta['cpu_over_wall'][0]:.2f}; load average {meta['loadavg_start'][0]:.1f} at start, "
                f"{meta['loadavg_end'][0]:.1f} at end): their throughputs are pessimistic; per-run times are in "
                "storage.json. Rerun on an idle machine for stable numbers."
            ]
            if meta["cpu_over_wall"] and meta["cpu_over_wall"][0] < CONTENDED
            else []
        ),
        f"- data: {meta['num_sequences']} sequences x T={meta['seq_len']} = {meta['num_tokens']} tokens per "
        + (
            f"configuration; the corpus's own tokens; seed {meta['seed']}"
            if meta.get("model_teacher")
            else f"configuration; random input_ids uniform in [0, V); seed {meta['seed']}"
        ),
        "- real teacher (bench/real_teacher.py): the model's float32 logits over its tokenized corpus, documents "
        "joined with EOS"
        if meta.get("model_teacher")
        else "- synthetic teacher (bench/teacher_like.py): per position z = a*log zipf(id) (exponent 1.1, low id = "
        'frequent) + N(0, sigma^2) on every logit + 8 context "spike" ids drawn from the zipf prior with boost '
        "c*U(0,1)*Exp(1); c calibrated at startup for a mean entropy of 2.5 nats"
        + (f" (overrides: {meta['teacher_overrides']})" if meta["teacher_overrides"] else ""),
    ]
    for vm in vocab_meta:
        q = vm["entropy_quantiles"]
        lines.append(
            f"  - V={vm['vocab']}: {vm['teacher']}; **measured mean entropy {vm['mean_entropy']:.3f} nats** "
            f"(p10 {q['p10']:.3f}, p50 {q['p50']:.2f}, p90 {q['p90']:.2f})"
        )
    lines += [
        "- KL = KL(teacher || reconstruction) nats/position, float64 from the dense logits; reconstruction = "
        "stored logprobs on kept ids + remaining mass 1 - sum(exp(stored)) spread uniformly over the V - nnz "
        f"other ids (floored at {REST_FLOOR:g} when <= 0: column 'rest<=0'); 'KL exact rest' uses the teacher's "
        "true remaining mass instead (error of the stored values alone)",
        "- encode = DatasetWriter(...) + write() every record + finish() (shards + key index + manifest); "
        "decode = open_dataset() + iterate every record. Sparsification excluded (see its own table).",
        "",
        "## Results",
        "",
        "| V | method | encoding | backend | B/token | entries/pos | kept mass | KL | KL exact rest | rest<=0 "
        "| max abs logprob err | encode tok/s | decode tok/s |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['vocab']} | {r['spec']} | {r['encoding']} | {r['backend']} | {r['bytes_per_token']:.2f} | "
            f"{r['entries_per_position']:.2f} | {r['mean_kept_mass']:.4f} | {fmt_kl(r['kl'])} | "
            f"{fmt_kl(r['kl_exact_rest'])} | {100 * r['rest_floored_frac']:.1f}% | "
            f"{r['max_abs_logprob_err']:.2e} | {fmt_rate(r['encode_tokens_per_s'])} | "
            f"{fmt_rate(r['decode_tokens_per_s'])} |"
        )
    lines += ["", "## Targets", "", "| target | configuration | measured | status |", "|---|---|---|---|"]
    for t in tgt:
        lines.append(f"| {t['target']} | {t['config']} | {t['measured']} | {'met' if t['met'] else '**not met**'} |")
    lines += [
        "",
        "## Sparsification throughput (information; torch, one thread, default chunk_elements)",
        "",
        f"Per process: {meta['prepare_jobs']} worker process(es) (one torch thread each, each pinned to its "
        "own CPU) generated and sparsified the data concurrently.",
        "",
        "| V | method | tokens/s | of which kernel (sys) time |",
        "|---:|---|---:|---:|",
    ]
    for vm in vocab_meta:
        for m, rate in vm["sparsify_tokens_per_s"].items():
            lines.append(f"| {vm['vocab']} | {m} | {fmt_rate(rate)} | {100 * vm['sparsify_sys_fraction'][m]:.0f}% |")
    names: list[str] = []
    for r in results:
        for k in r["column_bytes_per_token"]:
            if k not in names:
                names.append(k)
    order = [
        "input_ids",
        "lse",
        "nnz",
        "ids",
        "logprobs",
        "counts",
        "seq_id",
        "key",
        "seq_ids",
        "keys",
        "lengths",
        "input_lengths",
        "num_entries",
        "(footer/metadata)",
        "(key index)",
    ]
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    lines += [
        "",
        "## Bytes per token by physical column (compressed)",
        "",
        "| V | method | encoding | backend | " + " | ".join(names) + " |",
        "|---:|---|---|---|" + "---:|" * len(names),
    ]
    for r in results:
        cells = [f"{r['column_bytes_per_token'][n]:.3f}" if n in r["column_bytes_per_token"] else "" for n in names]
        lines.append(f"| {r['vocab']} | {r['method']} | {r['encoding']} | {r['backend']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------------------------------


def allowed_cpus() -> list[int | None]:
    if not hasattr(os, "sched_getaffinity"):
        return [None]
    return list(sorted(os.sched_getaffinity(0)))


def pin_one_cpu(cpu: int | None) -> int | None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    return cpu


def _cpu_over_wall(results: list[dict[str, Any]]) -> list[float]:
    """[min, max] over configurations of process CPU time / wall time of the timed encode and decode runs."""
    ratios = [sum(r[f"{w}_cpu_seconds"]) / sum(r[f"{w}_seconds"]) for r in results for w in ("encode", "decode")]
    return [min(ratios), max(ratios)] if ratios else []


def git_state() -> dict[str, Any]:
    """Commit of the checkout and whether the library differs from it (others may be editing it)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    import hashlib

    h = hashlib.sha256()
    for f in sorted((root / "logitstore").rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return {
        "commit": git("rev-parse", "HEAD"),
        "library_changes": git("status", "--porcelain", "--", "logitstore").splitlines(),
        "library_sha256": h.hexdigest(),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run (4 sequences of 512 tokens per V)")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per configuration (default 32768)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 2048; 512 with --quick)")
    ap.add_argument("--vocab", type=int, nargs="+", default=list(VOCABS), help="vocabulary sizes")
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed encode/decode runs per configuration, after one untimed warm-up (default 5)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--noise-std",
        type=float,
        default=None,
        help=f"teacher_like noise std (default {NOISE_STD}; lower = top-k ids closer to the low ids)",
    )
    ap.add_argument(
        "--prior-weight",
        type=float,
        default=None,
        help=f"teacher_like weight of the zipf log-prior (default {PRIOR_WEIGHT})",
    )
    ap.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="a Hugging Face causal LM directory: measure its real logits (over --text) instead of the synthetic "
        "teacher's; its vocabulary replaces --vocab",
    )
    ap.add_argument(
        "--text",
        type=Path,
        default=None,
        help="the corpus for --teacher: JSONL with a text field, or plain text (one document per line)",
    )
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="directory for storage.md / storage.json")
    ap.add_argument("--workdir", type=Path, default=None, help="where datasets are written (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the written datasets")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="worker processes for generating + sparsifying the logits (default: 2, or 1 on one CPU); "
        "the timed encode/decode runs always happen in the main process with no workers alive",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile one topk64/compact encode + decode per backend (first V) into --out",
    )
    args = ap.parse_args(argv)
    if (args.teacher is None) != (args.text is None):
        ap.error("--teacher and --text go together: the model directory and the corpus it reads")

    seq_len = args.seq_len or (512 if args.quick else 2048)
    tokens = args.tokens or (4 * seq_len if args.quick else 32_768)
    num_seqs = max(1, math.ceil(tokens / seq_len))
    repeats = args.repeats or (2 if args.quick else 5)
    teacher_kwargs = {
        k: v for k, v in (("noise_std", args.noise_std), ("prior_weight", args.prior_weight)) if v is not None
    }
    calib = 128 if args.quick else 512

    torch.set_num_threads(1)
    cpus = allowed_cpus()
    jobs = args.jobs if args.jobs is not None else min(2, len(cpus))
    worker_cpus: list[int | None] = [None] if args.no_pin else cpus
    pinned = None if args.no_pin else pin_one_cpu(cpus[0])
    start = time.perf_counter()
    git_at_start = git_state()  # the library code this process imported; others may edit it while we run
    loadavg_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else [float("nan")] * 3

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    log(
        f"torch threads = {torch.get_num_threads()}, pinned to CPU {pinned}; {num_seqs} x {seq_len} tokens per "
        f"configuration, {repeats} timed runs each; data preparation in {jobs} worker process(es)"
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="logitstore-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    vocab_meta: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    try:
        model = None if args.teacher is None else ModelTeacher(args.teacher, args.text, max_tokens=tokens)
        for vocab in args.vocab if model is None else [model.vocab_size]:
            vd = build_vocab_data(
                vocab,
                num_seqs,
                seq_len,
                args.seed,
                calib,
                log,
                jobs=jobs,
                cpus=worker_cpus,
                teacher_kwargs=teacher_kwargs,
                model=model,
            )
            q = np.quantile(vd.entropy, [0.1, 0.5, 0.9])
            vocab_meta.append(
                {
                    "vocab": vocab,
                    "teacher": vd.teacher.describe(),
                    "spike_scale": getattr(vd.teacher, "spike_scale", None),
                    "mean_entropy": float(vd.entropy.mean()),
                    "entropy_quantiles": {"p10": float(q[0]), "p50": float(q[1]), "p90": float(q[2])},
                    "seconds": vd.seconds,
                    "sparsify_tokens_per_s": {
                        make_spec(m, logitstore.COMPACT, 0).describe(): vd.num_tokens / vd.methods[m].sparsify_seconds
                        for m in METHODS
                    },
                    "sparsify_sys_fraction": {
                        make_spec(m, logitstore.COMPACT, 0).describe(): vd.methods[m].sparsify_sys_seconds
                        / vd.methods[m].sparsify_seconds
                        for m in METHODS
                    },
                }
            )
            log(
                f"V={vocab}: mean entropy {vd.entropy.mean():.3f} nats (p10 {q[0]:.3f}, p50 {q[1]:.2f}, "
                f"p90 {q[2]:.2f}); prepared in {vd.seconds['prepare_wall']:.1f}s wall; summed over workers: generate "
                f"{vd.seconds['generate']:.1f}s, entropy {vd.seconds['entropy']:.1f}s, "
                + ", ".join(f"{m} {d.sparsify_seconds:.1f}s" for m, d in vd.methods.items())
            )
            for method in METHODS:
                for enc_name in ENCODINGS:
                    for backend in BACKENDS:
                        r = run_config(
                            vd,
                            method,
                            enc_name,
                            backend,
                            seed=args.seed,
                            repeats=repeats,
                            workdir=workdir,
                            keep=args.keep,
                        )
                        results.append(r)
                        log(
                            f"V={vocab} {method:8s} {enc_name:8s} {backend:7s}: {r['bytes_per_token']:8.2f} B/tok, "
                            f"KL {r['kl']:.4f}, err {r['max_abs_logprob_err']:.2e}, "
                            f"enc {fmt_rate(r['encode_tokens_per_s'])}/s, dec {fmt_rate(r['decode_tokens_per_s'])}/s"
                        )
            if args.profile and not profiles:
                for backend in BACKENDS:
                    for what, text in profile_topk64(vd, backend, args.seed, workdir).items():
                        profiles[f"{backend}_{what}"] = text
            del vd
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    import pyarrow
    import zarr

    meta = {
        "command": " ".join([os.path.relpath(sys.executable) if sys.executable else "python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_seconds": time.perf_counter() - start,
        "cpu": cpu_model(),
        "cpus_visible": os.cpu_count(),
        "pinned_cpu": pinned,
        "prepare_jobs": jobs,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pyarrow": pyarrow.__version__,
            "zarr": zarr.__version__,
            "logitstore": logitstore.__version__,
        },
        "repeats": repeats,
        "seq_len": seq_len,
        "num_sequences": num_seqs,
        "num_tokens": num_seqs * seq_len,
        "seed": args.seed,
        "rest_floor": REST_FLOOR,
        "teacher_overrides": teacher_kwargs,
        "model_teacher": None if args.teacher is None else {"directory": str(args.teacher), "text": str(args.text)},
        "cpu_over_wall": _cpu_over_wall(results),
        "git": git_at_start,
        "git_at_end": git_state(),
        "loadavg_start": loadavg_start,
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else [float("nan")] * 3,
    }
    tgt = targets(results)
    text = render(meta, vocab_meta, results, tgt)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "storage.md").write_text(text)
    (args.out / "storage.json").write_text(
        json.dumps({"meta": meta, "vocabs": vocab_meta, "results": results, "targets": tgt}, indent=1)
    )
    for name, report in profiles.items():
        (args.out / f"profile_{name}.txt").write_text(report)
    log(
        f"wrote {args.out / 'storage.md'} and {args.out / 'storage.json'}"
        + (f" and {len(profiles)} profiles" if profiles else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
