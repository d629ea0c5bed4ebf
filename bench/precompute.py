"""Precompute benchmark: what the job costs beside the teacher's own forward pass.

Run from the repository root::

    .venv/bin/python bench/precompute.py            # default (~5 minutes on 2 cores)
    .venv/bin/python bench/precompute.py --quick    # smoke run

Teacher: a Llama of ~9M parameters (hidden 128, 4 layers, vocabulary 32,000) built from a config with a fixed
seed and saved as an ordinary Hugging Face checkpoint; its output head is scaled so the distributions are peaked
like a trained LM's. Corpus: random token ids in a Parquet ``input_ids`` column. All numbers are ratios measured
side by side in this one run:

1. sparsification cost per token relative to one ``torch.logsumexp`` pass over the same logits (targets: topk
   <= 1.3x, sample <= 1.5x);
2. end-to-end job throughput (``precompute`` on an already running Ray, so cluster start-up is excluded but actor
   start, teacher load, sparsify, encode and commit are included) relative to the bare teacher forward including
   the LM head over the same sequences in the same batches (target >= 0.85); the same with the fixed costs
   excluded (the job minus a job on a quarter of the corpus, on the same Ray: actor start, imports, teacher load,
   packing and finalization cancel); the steady state: one shard computed
   in-process (forward + chunked head + sparsify + encode + commit) against the bare forward of the same
   sequences; and the ceiling any exact job can reach on this teacher, ``forward / (forward + exp of every logit
   once)`` (for a few-million-parameter teacher on a CPU the LM head is most of the forward, and every logit needs
   one exponential for the lse);
3. peak resident memory of the job (the kernel's high-water mark of the driver plus that of each actor) when the
   corpus grows 10x (target growth <= 1.2x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 32_000


def build_teacher(directory: Path) -> None:
    from logitstore.workers.checkpoints import save_llama

    save_llama(directory, vocab_size=VOCAB, hidden_size=128, num_layers=4, max_positions=2048, head_scale=40.0)


def write_corpus(path: Path, sequences: int, seq_len: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, size=(sequences, seq_len - 1), dtype=np.int64)
    pq.write_table(pa.table({"input_ids": [row.tolist() for row in ids]}), path)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def sparsify_costs(teacher_dir: Path, seq_len: int, repeats: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    from logitstore import Spec
    from logitstore.rng import position_streams
    from logitstore.sparsify import sparsify

    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    ids = torch.randint(3, VOCAB, (1, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits[0].contiguous()
    streams, positions = position_streams(0, [bytes(16)], [seq_len])
    base = best_of(lambda: torch.logsumexp(logits, dim=-1), repeats)
    # the floor of any exact method: exp of every logit, in cache-sized chunks into a reused buffer
    buf = torch.empty((32, VOCAB))
    exp_pass = best_of(lambda: [torch.exp(logits[i : i + 32], out=buf) for i in range(0, seq_len, 32)], repeats)
    out = {"logsumexp_s": base, "exp_s": exp_pass, "tokens": seq_len}
    for name, spec in (
        ("topk64", Spec(method="topk", k=64)),
        ("sample50", Spec(method="sample", n=50)),
        ("topp95", Spec(method="topp", p=0.95, k=100)),
    ):
        t = best_of(lambda spec=spec: sparsify(logits, spec, streams=streams, positions=positions), repeats)
        out[name] = t / base
    return out


def bare_forward(teacher_dir: Path, corpus: Path, batch_size: int) -> float:
    import pyarrow.parquet as pq
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    rows = pq.read_table(corpus).column("input_ids").to_pylist()
    start = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(rows), batch_size):
            model(torch.tensor(rows[b : b + batch_size])).logits.float()
    return time.perf_counter() - start


def steady_state(teacher_dir: Path, corpus: Path, work: Path, seq_len: int, batch_size: int) -> dict[str, float]:
    """Seconds for the same 32 sequences, each stage on top of the previous one, after a warm-up, interleaved
    (so a host that slows down mid-run biases no stage) and best of 3: ``forward`` (the bare model, full logits),
    ``body`` (the transformer without its LM head), ``head`` (body + the job's chunked LM head), ``sparsify``
    (+ the job's sparsify call per chunk) and ``shard`` (the whole :func:`compute_shard`: + records, encode and
    commit)."""
    from logitstore import Spec
    from logitstore.sparsify import sparsify
    from logitstore.workers.corpus import SequenceReader, iter_documents, pack_corpus
    from logitstore.workers.shard import CHUNK_ELEMENTS, ShardTask, compute_shard
    from logitstore.workers.teachers import CausalLMTeacher

    teacher = CausalLMTeacher(teacher_dir)
    job = work / "steady-job"
    pack_corpus(iter_documents(corpus), lambda text: [], job / "corpus", seq_len=seq_len, eos_id=2)
    reader = SequenceReader(job / "corpus")
    (work / "steady" / "shards").mkdir(parents=True, exist_ok=True)
    n = min(32, len(reader))
    spec = Spec(method="topk", k=64, label_logprob=True)  # what the job stores for a language model by default
    batches = [
        torch.tensor([reader[i].tolist() for i in range(b, min(n, b + batch_size))]) for b in range(0, n, batch_size)
    ]
    chunk = max(1, CHUNK_ELEMENTS // (batch_size * VOCAB))

    def shard() -> None:
        compute_shard(
            ShardTask(1, 0, n),
            teacher=teacher,
            corpus=reader,
            spec=spec,
            backend="parquet",
            root=work / "steady",
            job_dir=job,
            batch_size=batch_size,
        )

    def forward() -> None:
        with torch.inference_mode():
            for ids in batches:
                teacher.model(ids).logits.float()

    def body() -> None:
        with torch.inference_mode():
            for ids in batches:
                teacher.model.base_model(input_ids=ids)

    def head(then_sparsify: bool = False) -> None:
        for ids in batches:
            for _, _, logits in teacher.logit_chunks(ids, torch.ones_like(ids), chunk):
                if then_sparsify:
                    flat = logits.reshape(-1, VOCAB)
                    sparsify(flat, spec, labels=torch.zeros(flat.shape[0], dtype=torch.int64))

    stages = {"forward": forward, "body": body, "head": head, "sparsify": lambda: head(True), "shard": shard}
    for fn in stages.values():
        fn()
    best = dict.fromkeys(stages, float("inf"))
    for _ in range(3):
        for name, fn in stages.items():
            best[name] = min(best[name], best_of(fn, 1))
    best["tokens"] = n * seq_len
    return best


def job_time(teacher_dir: Path, corpus: Path, out: Path, seq_len: int, batch_size: int) -> float:
    from logitstore.workers import precompute

    start = time.perf_counter()
    precompute(
        teacher=str(teacher_dir),
        data=str(corpus),
        out=str(out),
        method="topk",
        k=64,
        seq_len=seq_len,
        batch_size=batch_size,
        sequences_per_shard=16,
        progress=False,
        overwrite=True,
    )
    return time.perf_counter() - start


_RSS_CHILD = r"""
import sys, threading, time, psutil
from logitstore.workers import precompute

def hwm(pid):
    # the kernel's high-water mark of resident memory: a true peak, whatever the sampling rate
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0

peaks = {}
stop = False
def watch():
    while not stop:
        for p in psutil.process_iter(["cmdline"]):
            try:
                if "ShardWorker" in " ".join(p.info["cmdline"] or []):
                    peaks[p.pid] = max(peaks.get(p.pid, 0), hwm(p.pid))
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)
t = threading.Thread(target=watch, daemon=True); t.start()
teacher, data, out, seq_len = sys.argv[1:5]
precompute(teacher=teacher, data=data, out=out, method="topk", k=64, seq_len=int(seq_len), batch_size=4,
           sequences_per_shard=16, progress=False, overwrite=True)
stop = True; t.join()
print("PEAK", hwm("self") + sum(peaks.values()))
"""


def peak_rss(teacher_dir: Path, corpus: Path, out: Path, seq_len: int) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(teacher_dir), str(corpus), str(out), str(seq_len)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return int(proc.stdout.split("PEAK")[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=9, help="best-of repeats for the sparsify timings")
    args = parser.parse_args()
    seq_len = 256 if args.quick else 512
    sequences = 16 if args.quick else 128
    batch = 4
    work = Path(tempfile.mkdtemp(prefix="logitstore-bench-"))
    teacher = work / "teacher"
    build_teacher(teacher)
    corpus = work / "corpus.parquet"
    write_corpus(corpus, sequences, seq_len)

    costs = sparsify_costs(teacher, 1024 if not args.quick else 256, 3 if args.quick else args.repeats)

    import ray

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    steady = steady_state(teacher, corpus, work, seq_len, batch)
    steady_shard, steady_forward = steady["shard"], steady["forward"]
    forward = bare_forward(teacher, corpus, batch)
    job = job_time(teacher, corpus, work / "ds", seq_len, batch)
    small, big = work / "small.parquet", work / "big.parquet"
    write_corpus(small, sequences // 4, seq_len)
    write_corpus(big, sequences // 4 * 10, seq_len)
    job_small = job_time(teacher, small, work / "ds-small", seq_len, batch)
    ray.shutdown()
    tokens = sequences * seq_len
    # exp of every logit once, at the bare forward's per-token cost: the best any exact job can do
    exp_per_token = costs["exp_s"] / costs["tokens"]
    ceiling = (forward / tokens) / (forward / tokens + exp_per_token)
    # the rate of the extra tokens the full corpus's job computes over a quarter-size job in the same Ray session:
    # the fixed costs of a job (actor start, imports, teacher load, packing, finalization) cancel
    small_tokens = sequences // 4 * seq_len
    marginal_rate = (tokens - small_tokens) / (job - job_small)
    fixed = job_small - small_tokens / marginal_rate

    rss_small = peak_rss(teacher, small, work / "rss-small", seq_len)
    rss_big = peak_rss(teacher, big, work / "rss-big", seq_len)

    rows = [
        ("sparsify topk64 / logsumexp", f"{costs['topk64']:.2f}x", "<= 1.3x", costs["topk64"] <= 1.3),
        ("sparsify sample50 / logsumexp", f"{costs['sample50']:.2f}x", "<= 1.5x", costs["sample50"] <= 1.5),
        ("sparsify topp(0.95,100) / logsumexp", f"{costs['topp95']:.2f}x", "-", None),
        (
            "job throughput / bare forward",
            f"{forward / job:.2f} ({tokens / job:,.0f} vs {tokens / forward:,.0f} tok/s)",
            ">= 0.85",
            forward / job >= 0.85,
        ),
        (
            "job throughput / bare forward, fixed costs excluded (full corpus job minus a quarter-size one)",
            f"{marginal_rate * forward / tokens:.2f} ({marginal_rate:,.0f} tok/s; fixed costs {fixed:.1f} s a job)",
            ">= 0.85",
            marginal_rate * forward / tokens >= 0.85,
        ),
        (
            "ceiling: forward / (forward + exp of every logit once)",
            f"{ceiling:.2f} ({1e6 * forward / tokens:.0f} vs {1e6 * exp_per_token:.0f} us/token)",
            "-",
            None,
        ),
        (
            "steady state: bare forward / one shard (no fixed costs)",
            f"{steady_forward / steady_shard:.2f} ({steady_shard:.2f} s vs {steady_forward:.2f} s forward)",
            "-",
            None,
        ),
        (
            "where a shard's time goes, us/token: body / + LM head (chunked) / + sparsify / + records, encode, commit",
            " / ".join(
                f"{1e6 * (steady[b] - (steady[a] if a else 0.0)) / steady['tokens']:.0f}"
                for a, b in ((None, "body"), ("body", "head"), ("head", "sparsify"), ("sparsify", "shard"))
            )
            + f" (bare forward {1e6 * steady['forward'] / steady['tokens']:.0f})",
            "-",
            None,
        ),
        (
            "peak RSS growth, corpus x10",
            f"{rss_big / rss_small:.2f}x ({rss_small / 2**20:.0f} -> {rss_big / 2**20:.0f} MiB)",
            "<= 1.2x",
            rss_big / rss_small <= 1.2,
        ),
    ]
    lines = [
        "# logitstore precompute benchmark",
        "",
        f"- command: `.venv/bin/python bench/precompute.py{' --quick' if args.quick else ''}`",
        f"- teacher: Llama ~9M parameters, V={VOCAB}, fp32 on CPU ({torch.get_num_threads()} torch threads); "
        f"corpus {sequences} x {seq_len} random tokens; batch {batch}; topk k=64, parquet",
        f"- sparsify measured on {costs['tokens']} positions of real teacher logits "
        f"(logsumexp {costs['logsumexp_s'] * 1e3:.1f} ms)",
        "",
        "| measure | value | target | met |",
        "|---|---:|---:|---|",
    ]
    for name, value, target, met in rows:
        lines.append(f"| {name} | {value} | {target} | {'-' if met is None else ('yes' if met else '**no**')} |")
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "precompute.md").write_text(text + "\n")
    (out / "precompute.json").write_text(
        json.dumps(
            {
                "costs": costs,
                "forward_s": forward,
                "job_s": job,
                "steady": steady,
                "ceiling": ceiling,
                "job_small_s": job_small,
                "marginal_rate": marginal_rate,
                "tokens": tokens,
                "rss_small": rss_small,
                "rss_big": rss_big,
            }
        )
    )


if __name__ == "__main__":
    main()
