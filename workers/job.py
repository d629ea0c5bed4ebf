"""The precompute driver: checks, corpus packing, shard plan, Ray actors, retries, resume, manifest.

Re-running the same job resumes it: shards with a valid commit record are kept, the rest are computed, and the
result is byte-identical to an uninterrupted run. The manifest is written only when every shard is committed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitstore.compat import tokenizer_fingerprint
from logitstore.errors import DatasetExistsError, InvalidInputError, LogitStoreError
from logitstore.fs import digest, resolve
from logitstore.manifest import (
    AUDIT_DIR,
    JOB_DIR,
    MANIFEST_NAME,
    SHARDS_DIR,
    AuditFileInfo,
    AuditInfo,
    CorpusInfo,
    Manifest,
    ShardInfo,
    TeacherInfo,
    TokenizerInfo,
    audit_relpath,
    shard_relpath,
    write_atomic,
)
from logitstore.workers.config import PrecomputeConfig, config_from_mapping
from logitstore.workers.corpus import PackedCorpus, detect_format, iter_documents, load_packed, pack_corpus
from logitstore.workers.shard import COMMITS_DIR, ShardTask, audit_record_path, commit_record_path
from logitstore.workers.teachers import describe_max_positions, read_model_config, teacher_kind
from logitstore.writer import finalize, local_root, prepare_output

LOCK_NAME = ".lock"
#: A shard is sized to hold about this many entries (~100-200 MB compressed for LLM top-k caches).
TARGET_SHARD_ENTRIES = 1 << 26


class JobFailedError(LogitStoreError, RuntimeError):
    """A shard failed on every attempt; the message names the shard and the last cause."""


class JobLockedError(LogitStoreError, RuntimeError):
    """Another process holds the job lock of this dataset."""


@dataclass(frozen=True)
class PrecomputeResult:
    manifest: Manifest
    shards_computed: int
    shards_reused: int
    wall_time: float

    def summary(self) -> str:
        m = self.manifest
        assert m.stats is not None
        audit = (
            f"audit      {m.audit.num_positions:,} positions (fraction {m.audit.fraction:g}) in "
            f"{m.audit.nbytes / 2**20:,.1f} MiB under {AUDIT_DIR}/ (not counted in bytes/token)\n"
            if m.audit is not None
            else ""
        )
        return (
            f"dataset    {m.name}: {m.spec.describe()} of {m.teacher.name}\n"
            f"sequences  {m.num_sequences:,}   tokens {m.num_tokens:,}   shards {len(m.shards)} "
            f"({self.shards_computed} computed, {self.shards_reused} reused)\n"
            f"storage    {m.stats.bytes_per_token:.1f} bytes/token   entries/position "
            f"{m.stats.mean_entries_per_position:.2f}   mean kept mass {m.stats.mean_kept_mass:.4f}\n"
            f"{audit}"
            f"wall time  {self.wall_time:.1f} s"
        )


def precompute(config: PrecomputeConfig | None = None, /, **options: Any) -> PrecomputeResult:
    """Run (or resume) a precompute job. Pass a :class:`PrecomputeConfig`, or its options as keywords, e.g.
    ``precompute(teacher="models/t", data="corpus.jsonl", out="store/ds", method="topk", k=64)``."""
    if config is None:
        config = config_from_mapping(options, source="precompute() arguments")
    elif options:
        raise InvalidInputError("pass either a PrecomputeConfig or keyword options, not both")
    start = time.perf_counter()
    root = local_root(config.out)
    plan_inputs = _check_inputs(config, root)
    root.mkdir(parents=True, exist_ok=True)
    job_dir = root / JOB_DIR
    # The lock lives beside _job/, never inside it: --overwrite and the final cleanup delete _job/ while locked.
    with _JobLock(root / LOCK_NAME):
        if (root / MANIFEST_NAME).exists():  # checked again under the lock: another job may have finished
            if not config.overwrite:
                raise DatasetExistsError(
                    f"a complete dataset already exists at {root}; pass --overwrite to replace it, or choose "
                    "another --out"
                )
            prepare_output(root, overwrite=True)
        job_dir.mkdir(exist_ok=True)
        _check_identity(job_dir, config, plan_inputs["teacher_revision"])
        (root / SHARDS_DIR).mkdir(exist_ok=True)
        corpus = load_packed(job_dir / "corpus") or _pack(config, job_dir, plan_inputs)
        tasks = _plan(config, corpus, plan_inputs["vocab_size"])
        done = _committed(root, job_dir, tasks, config)
        todo = [t for t in tasks if t.index not in done]
        computed = _run(config, todo, root, job_dir, corpus) if todo else {}
        shards = [done.get(t.index) or computed[t.index] for t in tasks]
        audit = _audit_info(config, job_dir, tasks)
        teacher_info = TeacherInfo(**json.loads((job_dir / "teacher.json").read_text()))
        manifest = finalize(
            root,
            backend=config.backend,  # type: ignore[arg-type]
            spec=config.spec,
            teacher=teacher_info,
            shards=shards,
            tokenizer=plan_inputs["tokenizer_info"],
            corpus=CorpusInfo(
                fingerprint=corpus.fingerprint,
                seq_len=config.seq_len,
                packing="packed" if config.pack else "truncated",
                num_sequences=corpus.num_sequences,
                num_tokens=corpus.num_tokens,
            ),
            audit=audit,
        )
        _remove_partials(root)
        shutil.rmtree(job_dir, ignore_errors=True)
    return PrecomputeResult(manifest, len(computed), len(done), time.perf_counter() - start)


# -- checks before any compute ------------------------------------------------------------------------------------


def _check_inputs(config: PrecomputeConfig, root: Path) -> dict[str, Any]:
    """Every check that can fail fast, each with the fix; returns what planning needs."""
    if (root / MANIFEST_NAME).exists() and not config.overwrite:
        raise DatasetExistsError(
            f"a complete dataset already exists at {root}; pass --overwrite to replace it, or choose another --out"
        )
    kind = teacher_kind(config.teacher)
    if kind == "classifier" and config.spec.label_logprob:
        raise InvalidInputError(
            f"label_logprob is the teacher's logprob of the next token, which a classifier ({config.teacher}) "
            "does not have; set label_logprob=False (--no-label-logprob)"
        )
    detect_format(Path(config.data))
    if kind == "hf":
        model_config = read_model_config(Path(config.teacher))
        vocab = model_config.get("vocab_size")
        if not isinstance(vocab, int):
            raise InvalidInputError(f"{config.teacher}/config.json has no integer vocab_size")
        max_positions = describe_max_positions(model_config)
        if max_positions is not None and config.seq_len > max_positions:
            raise InvalidInputError(
                f"seq_len {config.seq_len} exceeds the teacher's {max_positions} positions; use --seq-len "
                f"{max_positions} or less"
            )
        eos = model_config.get("eos_token_id")
        model_eos = eos[0] if isinstance(eos, list) and eos else eos
    else:
        vocab = None
        model_eos = None
    tokenizer = _load_tokenizer(config, kind)
    if kind == "classifier":
        import torch

        from logitstore.workers.teachers import ClassifierTeacher

        vocab = ClassifierTeacher(config.teacher, device=torch.device("cpu")).vocab_size
    assert vocab is not None
    config.spec.check_vocab(vocab)
    tokenizer_info = TokenizerInfo()
    if tokenizer is not None:
        tokenizer_info = _tokenizer_info(tokenizer, config.tokenizer or config.teacher)
        if kind == "hf" and tokenizer_info.vocab_size is not None and tokenizer_info.vocab_size > vocab:
            raise InvalidInputError(
                f"the tokenizer has {tokenizer_info.vocab_size} ids but the teacher's logit dimension is {vocab}: "
                "token ids would fall outside the vocabulary; use the tokenizer the teacher was trained with "
                "(a model vocabulary padded beyond the tokenizer's is fine)"
            )
    if kind == "hf":
        from logitstore.workers.teachers import weights_fingerprint

        teacher_revision: str | None = weights_fingerprint(Path(config.teacher))
    else:
        teacher_revision = None
    return {
        "teacher_revision": teacher_revision,
        "vocab_size": vocab,
        "tokenizer": tokenizer,
        "tokenizer_info": tokenizer_info,
        "kind": kind,
        "model_eos": model_eos if isinstance(model_eos, int) else None,
    }


def _load_tokenizer(config: PrecomputeConfig, kind: str) -> Any:
    source = config.tokenizer or (config.teacher if kind == "hf" else None)
    if source is None:
        return None
    if not Path(source).exists():
        raise InvalidInputError(f"tokenizer directory {source!r} does not exist; pass --tokenizer DIR")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 -- transformers raises many types here
        if config.tokenizer is None:
            return None  # the teacher directory has no tokenizer: fine for a pre-tokenized corpus
        raise InvalidInputError(f"cannot load a tokenizer from {source!r}: {exc}") from None


def _tokenizer_info(tokenizer: Any, name: str) -> TokenizerInfo:
    vocab_hash = tokenizer_fingerprint(tokenizer)
    specials = {
        attr.removesuffix("_token_id"): value
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
        if isinstance(value := getattr(tokenizer, attr, None), int)
    }
    return TokenizerInfo(name=name, vocab_size=len(tokenizer), vocab_hash=vocab_hash, special_token_ids=specials)


def _check_identity(job_dir: Path, config: PrecomputeConfig, teacher_revision: str | None) -> None:
    path = job_dir / "job.json"
    identity = {**config.identity(), "teacher_revision": teacher_revision}
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
        started = (job_dir / "corpus" / "corpus.json").exists() or any((job_dir / COMMITS_DIR).glob("*.json"))
        if previous != identity and started:
            changed = sorted(k for k in identity if previous.get(k) != identity.get(k))
            if not config.overwrite:
                versions = [k for k in changed if k.endswith("_version")]
                how = (
                    f"it was started by a logitstore whose {' and '.join(versions)} differs from this one's: finish "
                    "it with that version"
                    if versions
                    else "re-run it with the same options to resume"
                )
                raise InvalidInputError(
                    f"{job_dir.parent} holds an unfinished job with different {', '.join(changed)}; {how}, or pass "
                    "--overwrite to discard it"
                )
            shutil.rmtree(job_dir / "corpus", ignore_errors=True)
            shutil.rmtree(job_dir / COMMITS_DIR, ignore_errors=True)
            shutil.rmtree(job_dir.parent / SHARDS_DIR, ignore_errors=True)
            shutil.rmtree(job_dir.parent / AUDIT_DIR, ignore_errors=True)
    write_atomic(path, json.dumps(identity, indent=2).encode())


class _JobLock:
    """An exclusive flock on ``<out>/.lock``; the OS releases it when the holder dies, even by SIGKILL."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> _JobLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise JobLockedError(
                f"another precompute job is writing {self.path.parent} (lock {self.path}); wait for it or stop it first"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


# -- corpus and plan ----------------------------------------------------------------------------------------------


def _pack(config: PrecomputeConfig, job_dir: Path, inputs: dict[str, Any]) -> PackedCorpus:
    tokenizer = inputs["tokenizer"]

    def tokenize(text: str) -> list[int]:
        if tokenizer is None:
            raise InvalidInputError(
                "the corpus holds text but no tokenizer was found; pass --tokenizer DIR (or a pre-tokenized "
                "Parquet/JSONL corpus with input_ids)"
            )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if eos is None:
        eos = inputs["model_eos"]  # a pre-tokenized corpus: the teacher's config names its EOS
    pack = config.pack and inputs["kind"] == "hf"
    return pack_corpus(
        iter_documents(Path(config.data), text_column=config.text_column),
        tokenize,
        job_dir / "corpus",
        seq_len=config.seq_len,
        eos_id=eos,
        pack=pack,
        id_limit=inputs["vocab_size"] if inputs["kind"] == "hf" else None,
    )


def _plan(config: PrecomputeConfig, corpus: PackedCorpus, vocab_size: int) -> list[ShardTask]:
    per = config.sequences_per_shard
    if per is None:
        entries_per_seq = config.seq_len * config.spec.max_entries(vocab_size)
        per = max(1, min(100_000, TARGET_SHARD_ENTRIES // max(1, entries_per_seq)))
    return [
        ShardTask(index=i, first_seq=s, num_sequences=min(per, corpus.num_sequences - s))
        for i, s in enumerate(range(0, corpus.num_sequences, per))
    ]


def _committed(root: Path, job_dir: Path, tasks: list[ShardTask], config: PrecomputeConfig) -> dict[int, ShardInfo]:
    """Shards whose commit record exists and whose file still has the recorded size and sha256."""
    done: dict[int, ShardInfo] = {}
    fs, _ = resolve(str(root))
    for task in tasks:
        record = commit_record_path(job_dir, task.index)
        if not record.exists():
            continue
        info = ShardInfo.from_dict(json.loads(record.read_text()))
        path = root / info.path
        if (
            info.path == shard_relpath(task.index, config.backend)  # type: ignore[arg-type]
            and info.first_seq == task.first_seq
            and info.num_sequences == task.num_sequences
            and path.exists()
            and digest(fs, str(path)) == (info.nbytes, info.sha256)
            and (config.audit_fraction == 0 or _audit_committed(root, job_dir, task, fs))
        ):
            done[task.index] = info
    return done


def _audit_committed(root: Path, job_dir: Path, task: ShardTask, fs: Any) -> bool:
    record = audit_record_path(job_dir, task.index)
    if not record.exists():
        return False
    info = AuditFileInfo.from_dict(json.loads(record.read_text()))
    path = root / info.path
    return (
        info.path == audit_relpath(task.index) and path.exists() and digest(fs, str(path)) == (info.nbytes, info.sha256)
    )


def _audit_info(config: PrecomputeConfig, job_dir: Path, tasks: list[ShardTask]) -> AuditInfo | None:
    """The sidecars the actors committed, one per shard (None without an audit)."""
    if config.audit_fraction == 0:
        return None
    files = tuple(AuditFileInfo.from_dict(json.loads(audit_record_path(job_dir, t.index).read_text())) for t in tasks)
    return AuditInfo(fraction=config.audit_fraction, files=files)


def _remove_partials(root: Path) -> None:
    for folder in (SHARDS_DIR, AUDIT_DIR):
        for leftover in (root / folder).glob("*.partial"):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


# -- execution ----------------------------------------------------------------------------------------------------


def _run(
    config: PrecomputeConfig, todo: list[ShardTask], root: Path, job_dir: Path, corpus: PackedCorpus
) -> dict[int, ShardInfo]:
    from logitstore.workers.ray_pool import run_shards

    return run_shards(config, todo, root=root, job_dir=job_dir, corpus=corpus)
