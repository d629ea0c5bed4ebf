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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logitstore", description="Offline teacher-logit cache for distillation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("verify", help="check every checksum and structural invariant of a dataset")
    p.add_argument("path", help="dataset directory or fsspec URL")
    p.add_argument("--quick", action="store_true", help="checksums only; do not decode every record")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("inspect", help="summarize a dataset: teacher, method, size, bytes/token, kept mass")
    p.add_argument("path", help="dataset directory or fsspec URL")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_inspect)
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
