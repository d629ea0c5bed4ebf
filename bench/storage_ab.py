"""Encode/decode speed of this tree against another revision, interleaved on the same records (issue 2's
throughput targets on a host whose speed changes from day to day).

Run from the repository root::

    .venv/bin/python bench/storage_ab.py --baseline 433bca0          # the 2026-11-23 storage table's library
    .venv/bin/python bench/storage_ab.py --baseline HEAD~3 --rounds 5

The host behind ``bench/RESULTS.md`` ran 2-3x slower on some days than on others, so absolute tokens/s from two
days cannot be compared, and neither can two runs of ``bench/storage.py`` an hour apart. This script measures
both libraries in one run: it makes top-k 64 and sample n=50 compact records once (synthetic teacher,
``bench/teacher_like.py``, as in ``bench/storage.py``), checks out ``--baseline`` in a temporary git worktree, and
then, for ``--rounds`` rounds, runs each tree in a fresh child process (alternating which goes first), pinned to
one CPU, that times what ``bench/storage.py`` times: ``DatasetWriter`` + ``write`` of every record + ``finish``
(encode) and ``open_dataset`` + iterating every record (decode), best of ``--repeats`` after one warm-up. It
reports each tree's median over rounds and the ratio. A figure measured by ``bench/storage.py`` for the baseline
on another day, times that ratio, estimates what this tree would measure on that day's host.

A dataset of 32,768 tokens is one small shard: its fixed costs (fsyncing a shard's files and directories, the key
index, the manifest) weigh on it as they never do on a job's 1M-token shards. ``--marginal-tokens N`` also times a
dataset of N tokens whose first sequences are the small one and reports the marginal rate, the extra tokens over
the extra time (rows ``... marginal``)::

    .venv/bin/python bench/storage_ab.py --baseline 433bca0 --marginal-tokens 262144
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
METHODS = ("topk64", "sample50")
BACKENDS = ("parquet", "zarr")


def child(tree: str, records_path: str, backends: list[str], repeats: int, workdir: str) -> None:
    """Time encode and decode with the library of ``tree`` (imported from there, not from the venv's install)."""
    sys.path.insert(0, tree)
    import dataclasses

    import logitstore

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with open(records_path, "rb") as f:
        data = pickle.load(f)
    fields = {f.name for f in dataclasses.fields(logitstore.Record)}
    teacher = logitstore.TeacherInfo(name="synthetic", vocab_size=data["vocab"])
    out: dict[str, Any] = {"library": str(Path(logitstore.__file__).parent)}
    for method, raw in data["records"].items():
        records = [logitstore.Record(**{k: v for k, v in r.items() if k in fields}) for r in raw]
        spec = logitstore.Spec(**data["specs"][method], seed=0, encoding=logitstore.COMPACT)
        small = data.get("small_sequences")
        for backend in backends:
            path = Path(workdir) / f"{method}-{backend}"
            timed = _time_encode_decode(logitstore, records[:small], spec, teacher, backend, path, repeats)
            out[f"{method}/{backend}"] = timed
            if small is not None:  # the larger dataset's extra tokens over its extra time: no per-dataset costs
                big = _time_encode_decode(logitstore, records, spec, teacher, backend, path, repeats)
                out[f"{method}/{backend} marginal"] = {k: big[k] - timed[k] for k in timed}
    print(json.dumps(out), flush=True)
    # Revisions before the reader opened local shards with pyarrow's own files (2026-12-03) can abort at exit
    # (pyarrow decode threads releasing Python buffers during finalization); the result is out, so skip teardown.
    os._exit(0)


def _time_encode_decode(
    logitstore: Any, records: list[Any], spec: Any, teacher: Any, backend: str, path: Path, repeats: int
) -> dict[str, float]:
    """Best of ``repeats`` timed encodes and decodes of ``records`` (after one untimed warm-up)."""
    enc, dec, enc_cpu = [], [], []
    for _ in range(repeats + 1):
        shutil.rmtree(path, ignore_errors=True)
        t, c = time.perf_counter(), time.process_time()
        writer = logitstore.DatasetWriter(path, spec=spec, teacher=teacher, backend=backend)
        for r in records:
            writer.write(r)
        writer.finish()
        enc.append(time.perf_counter() - t)
        enc_cpu.append(time.process_time() - c)
        t = time.perf_counter()
        ds = logitstore.open_dataset(path)
        n = sum(len(r) for r in ds)
        ds.close()
        dec.append(time.perf_counter() - t)
    return {
        "tokens": n,
        "encode_s": min(enc[1:]),
        "encode_cpu_s": min(enc_cpu[1:]),  # without the commit's fsync waits (the disk's, not the CPU's)
        "decode_s": min(dec[1:]),
    }


def _marginal_over_baseline(runs: dict[str, list[dict[str, Any]]], whats: dict[str, str]) -> list[dict[str, Any]]:
    """Print and return this tree's marginal rate over the baseline's rate on the small dataset, paired per round:
    times a ``bench/storage.py`` figure of the baseline (measured on a small dataset), it estimates this tree's
    marginal rate on that figure's host."""
    print("\nthis tree's marginal rate / the baseline's rate on the small dataset (median of the rounds' ratios)")
    print("| configuration | " + " | ".join(whats.values()) + " |")
    print("|---|" + "---:|" * len(whats))
    rows = []
    for config in (c for c in runs["this tree"][0] if c.endswith(" marginal")):
        small = config.removesuffix(" marginal")
        ratio = {
            what: statistics.median(
                (this[config]["tokens"] / this[config][f"{what}_s"])
                / (base[small]["tokens"] / base[small][f"{what}_s"])
                for base, this in zip(runs["baseline"], runs["this tree"], strict=True)
            )
            for what in whats
        }
        rows.append({"configuration": f"{config} / baseline {small}", **{f"{w} ratio": v for w, v in ratio.items()}})
        print(f"| {config} | " + " | ".join(f"{ratio[what]:.2f}x" for what in whats) + " |")
    return rows


def make_records(vocab: int, tokens: int, seq_len: int, seed: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "bench"))
    import storage

    num_seqs = max(1, tokens // seq_len)
    vd = storage.build_vocab_data(
        vocab,
        num_seqs,
        seq_len,
        seed,
        512,
        lambda msg: print(msg, file=sys.stderr),
        jobs=min(2, len(storage.allowed_cpus())),
        cpus=storage.allowed_cpus(),
        teacher_kwargs={},
    )
    return {
        "vocab": vocab,
        "specs": {m: storage.METHODS[m] for m in METHODS},
        "records": {m: [dict(vars(r)) for r in vd.methods[m].records] for m in METHODS},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=False, help="git revision to compare with (e.g. 433bca0, HEAD~1)")
    ap.add_argument("--vocab", type=int, default=32_000)
    ap.add_argument("--tokens", type=int, default=32_768, help="tokens per configuration (default 32768)")
    ap.add_argument(
        "--marginal-tokens",
        type=int,
        help="also time a dataset of this many tokens (whose first --tokens are the smaller one) and report the "
        "marginal rate, (extra tokens) / (extra time): what a long job sees, without the per-dataset costs",
    )
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3, help="child runs per tree, interleaved (default 3)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per child and configuration (default 5)")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="directory for storage_ab.json")
    ap.add_argument("--child", nargs=3, metavar=("TREE", "RECORDS", "WORKDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.backends, args.repeats, args.child[2])
        return 0
    if not args.baseline:
        ap.error("--baseline REV is required: the git revision to measure this tree against")
    if args.rounds < 1 or args.repeats < 1:
        ap.error(f"--rounds and --repeats must be >= 1, got {args.rounds} and {args.repeats}")
    if args.marginal_tokens is not None and args.marginal_tokens // args.seq_len <= max(1, args.tokens // args.seq_len):
        ap.error(
            f"--marginal-tokens {args.marginal_tokens} must hold more sequences of --seq-len {args.seq_len} than "
            f"--tokens {args.tokens}; e.g. --marginal-tokens {8 * args.tokens}"
        )
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{args.baseline}^{{commit}}"], capture_output=True, text=True
    )
    if rev.returncode:
        ap.error(f"--baseline {args.baseline!r} is not a commit of {REPO}: {rev.stderr.strip()}")
    baseline_commit = rev.stdout.strip()

    tmp = Path(tempfile.mkdtemp(prefix="logitstore-ab-"))
    worktree = tmp / "baseline"
    try:
        records_path = tmp / "records.pkl"
        with open(records_path, "wb") as f:
            data = make_records(args.vocab, args.marginal_tokens or args.tokens, args.seq_len, args.seed)
            if args.marginal_tokens:
                data["small_sequences"] = max(1, args.tokens // args.seq_len)
            pickle.dump(data, f)
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(worktree), baseline_commit], check=True
        )
        trees = {"baseline": str(worktree), "this tree": str(REPO)}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for i in range(args.rounds):
            order = list(trees) if i % 2 == 0 else list(trees)[::-1]
            for name in order:
                cmd = [sys.executable, __file__, "--child", trees[name], str(records_path), str(tmp)]
                cmd += ["--backends", *args.backends, "--repeats", str(args.repeats)]
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
                if done.returncode:
                    print(done.stderr, file=sys.stderr)
                    return 1
                result = json.loads(done.stdout.strip().splitlines()[-1])  # the last line: anything printed before
                if not result.pop("library").startswith(trees[name]):
                    raise SystemExit(f"{name}: the child imported logitstore from elsewhere than {trees[name]}")
                runs[name].append(result)
                print(f"round {i + 1}/{args.rounds}: {name} done", file=sys.stderr)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)  # if remove failed

    rows = []
    sizes = f"{args.tokens} tokens" + (
        f" (marginal: {args.tokens} -> {args.marginal_tokens})" if args.marginal_tokens else ""
    )
    print(f"baseline {args.baseline} ({baseline_commit[:10]}) vs this tree; V={args.vocab}, {sizes}")
    whats = {"encode": "encode (wall)", "encode_cpu": "encode (CPU time)", "decode": "decode (wall)"}
    print("tokens/s, median over rounds of each child's best run: baseline / this tree (median of the rounds' ratios)")
    print("| configuration | " + " | ".join(whats.values()) + " |")
    print("|---|" + "---:|" * len(whats))
    for config in runs["baseline"][0]:
        rate = {
            (name, what): statistics.median(r[config]["tokens"] / r[config][f"{what}_s"] for r in runs[name])
            for name in trees
            for what in whats
        }
        # each round ran both trees back to back: its ratio is the paired comparison the interleaving is for
        ratio = {
            what: statistics.median(
                base[config][f"{what}_s"] / this[config][f"{what}_s"]  # same tokens: speed ratio = time ratio
                for base, this in zip(runs["baseline"], runs["this tree"], strict=True)
            )
            for what in whats
        }
        rows.append(
            {
                "configuration": config,
                **{f"{what} {name}": v for (name, what), v in rate.items()},
                **{f"{what} ratio": v for what, v in ratio.items()},
            }
        )
        cells = []
        for what in whats:
            a, b = rate[("baseline", what)], rate[("this tree", what)]
            cells.append(f"{a / 1e3:.0f}K / {b / 1e3:.0f}K ({ratio[what]:.2f}x)")
        print(f"| {config} | " + " | ".join(cells) + " |")
    if args.marginal_tokens:
        rows += _marginal_over_baseline(runs, whats)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"baseline": args.baseline, "baseline_commit": baseline_commit, "date": time.strftime("%Y-%m-%d %H:%M")}
    meta.update(
        vocab=args.vocab,
        tokens=args.tokens,
        marginal_tokens=args.marginal_tokens,
        rounds=args.rounds,
        repeats=args.repeats,
        loadavg=os.getloadavg(),
    )
    (args.out / "storage_ab.json").write_text(json.dumps({**meta, "rows": rows, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
