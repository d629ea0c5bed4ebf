"""The ``logitstore`` command: thin subcommands, each parsing arguments and calling one library function.

This is the one module allowed to reach ``logitstore.server`` and ``logitstore.workers``, and only lazily inside
the subcommand that needs them, so ``inspect`` and ``verify`` never pay for importing ray or fastapi.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from logitstore.errors import LogitStoreError


def _cmd_verify(args: argparse.Namespace) -> int:
    from logitstore.verify import verify_dataset

    report = verify_dataset(args.path, deep=not args.quick)
    for problem in report.problems:
        print(f"FAIL {problem}", file=sys.stderr)
    if report.ok:
        print(
            f"OK {report.location}: {report.shards_checked} shard(s), {report.sequences_checked} sequence(s) "
            f"checked{' (checksums only)' if args.quick else ''}"
        )
        return 0
    print(f"{len(report.problems)} problem(s) in {report.location}", file=sys.stderr)
    return 1


def _cmd_inspect(args: argparse.Namespace) -> int:
    from logitstore.inspect import format_summary, summarize

    summary = summarize(args.path)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from logitstore.report import build_report

    index = build_report(
        args.path,
        args.out,
        max_positions=args.max_positions,
        max_audit_positions=args.max_audit_positions,
        seed=args.seed,
    )
    print(index)
    return 0


def _cmd_precompute(args: argparse.Namespace) -> int:
    from logitstore.workers import load_config_file, make_spec, precompute
    from logitstore.workers.config import PrecomputeConfig

    if args.config:
        config = load_config_file(args.config)
    else:
        missing = [
            flag
            for flag, value in (
                ("--teacher", args.teacher),
                ("--data", args.data),
                ("--out", args.out),
                ("--method", args.method),
            )
            if value is None
        ]
        if missing:
            print(f"error: {', '.join(missing)} required (or --config FILE)", file=sys.stderr)
            return 2
        spec = make_spec(
            args.method,
            k=args.k,
            p=args.p,
            k_min=args.k_min,
            n=args.n,
            proposal_temperature=args.proposal_temperature,
            seed=args.seed,
            encoding=args.encoding,
            label_logprob=False if args.no_label_logprob else None,
            logit_stats=args.logit_stats,
            teacher=args.teacher,
        )
        config = PrecomputeConfig(
            teacher=args.teacher,
            data=args.data,
            out=args.out,
            spec=spec,
            seq_len=args.seq_len,
            backend=args.backend,
            tokenizer=args.tokenizer,
            text_column=args.text_column,
            pack=not args.no_pack,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            ray_address=args.ray_address,
            overwrite=args.overwrite,
            sequences_per_shard=args.sequences_per_shard,
            max_attempts=args.max_attempts,
            progress=not args.quiet,
            audit_fraction=args.audit_fraction,
        )
    result = precompute(config)
    print(result.summary())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from logitstore.workers.demo import run_demo

    run_demo(Path(args.workdir), quick=args.quick)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from logitstore.server.serve import serve

    serve(
        args.store,
        host=args.host,
        port=args.port,
        workers=args.workers,
        api_key=args.api_key,
        max_batch_sequences=args.max_batch,
        verify=args.verify,
        log_level=args.log_level,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logitstore", description="Offline teacher-logit cache for distillation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("verify", help="check every checksum and structural invariant of a dataset")
    p.add_argument("path", help="dataset directory or fsspec URL")
    p.add_argument("--quick", action="store_true", help="checksums only; do not decode every record")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("precompute", help="run a teacher over a corpus and write a sparse-logit dataset (resumable)")
    p.add_argument("--config", help="YAML or JSON file with the options below (flags are then ignored)")
    p.add_argument("--teacher", help="Hugging Face causal LM directory, or a classifier as module:factory")
    p.add_argument("--data", help="corpus: Parquet, JSONL, text file(s), or a datasets save_to_disk directory")
    p.add_argument("--out", help="dataset directory to write, STORE/NAME")
    p.add_argument("--method", choices=["topk", "topp", "sample", "dense"])
    p.add_argument("--k", type=int, help="topk: entries per position; topp: maximum entries")
    p.add_argument("--p", type=float, help="topp: probability mass to reach")
    p.add_argument("--k-min", type=int, help="topp: minimum entries per position")
    p.add_argument("--n", type=int, help="sample: draws per position")
    p.add_argument("--proposal-temperature", type=float, help="sample: temperature of the proposal (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument(
        "--encoding",
        choices=["compact", "lossless"],
        default="compact",
        help="compact: 16-bit logprobs within 0.02 nats (default); lossless: float32",
    )
    p.add_argument(
        "--no-label-logprob",
        action="store_true",
        help="do not store the teacher's logprob of each next token (stored by default for language models; the "
        "label-mass tail, NKD and the sampled-label losses need it; ~1-2 bytes/token)",
    )
    p.add_argument(
        "--logit-stats",
        action="store_true",
        help="also store the mean and std of the raw logits per position (logit-standardized KD; ~8 bytes/token)",
    )
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (default 2048)")
    p.add_argument("--no-pack", action="store_true", help="one document per sequence, truncated, instead of packing")
    p.add_argument("--backend", choices=["parquet", "zarr"], default="parquet")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the teacher's)")
    p.add_argument("--text-column", default="text", help="text field of Parquet/JSONL/datasets corpora")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per teacher forward (default 8)")
    p.add_argument("--num-workers", type=int, help="actors (default: one per GPU, else 1)")
    p.add_argument("--sequences-per-shard", type=int, help="default: about 64M stored entries per shard")
    p.add_argument("--max-attempts", type=int, default=3, help="attempts per shard before the job fails")
    p.add_argument("--ray-address", help="join an existing Ray cluster instead of starting an embedded one")
    p.add_argument("--overwrite", action="store_true", help="replace a complete dataset at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--audit-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="also keep the full distribution (float16) of this random fraction of positions in audit/, for "
        "`logitstore report` (default 0). Costs about F x tokens x V x 2 bytes: F=0.001 over 1B tokens at "
        "V=152K is ~300 GB, so aim for F x tokens of a few thousand positions",
    )
    p.set_defaults(func=_cmd_precompute)

    p = sub.add_parser(
        "demo",
        help="the whole product on the Python docs, nothing downloaded: teacher training, two caches, the service, "
        "CE vs KD students, reports (about 10 minutes on 2 cores)",
    )
    p.add_argument("--workdir", default=".demo", help="where the corpus, teacher, store and reports go (default .demo)")
    p.add_argument("--quick", action="store_true", help="tiny models and budgets (about 2 minutes; what the tests run)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("serve", help="serve a store over REST (records, lookups, raw shards for remote loaders)")
    p.add_argument("--store", required=True, help="directory holding the datasets")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--api-key", help="require this key (or set LOGITSTORE_API_KEY, which keeps it out of ps)")
    p.add_argument("--max-batch", type=int, help="sequences per batch request (default 256)")
    p.add_argument("--verify", action="store_true", help="check each shard's sha256 before its first read")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("inspect", help="summarize a dataset: teacher, method, size, bytes/token, kept mass")
    p.add_argument("path", help="dataset directory or fsspec URL")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "report",
        help="HTML page with plots: teacher entropy, kept mass, entries, bytes per field, and k/n trade-offs "
        "measured on the audited positions (needs matplotlib: pip install 'logitstore[report]')",
    )
    p.add_argument("path", help="dataset directory or fsspec URL")
    p.add_argument("--out", required=True, help="directory to write index.html, its PNGs and report.json into")
    p.add_argument(
        "--max-positions",
        type=int,
        default=100_000,
        help="positions (whole sequences, seeded sample) read for the per-position plots (default 100000)",
    )
    p.add_argument(
        "--max-audit-positions",
        type=int,
        default=1_000,
        help="full distributions (audit sidecar, or a dense cache's rows) used for the k/n curves (default 1000; "
        "about 12 ms each at V=152K on 2 vCPUs)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sample of sequences and audited rows")
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LogitStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
