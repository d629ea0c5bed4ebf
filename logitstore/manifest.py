"""The dataset manifest (``manifest.json``): the source of truth for everything a reader needs.

A dataset directory looks like::

    <dataset>/manifest.json    written last, atomically: its presence means the dataset is complete
    <dataset>/keys.idx         content-key index (sorted keys -> seq_id)
    <dataset>/shards/00000.parquet | shards/00000.zarr/
    <dataset>/audit/00000.parquet  optional: full distributions of a random fraction of positions (one per shard)
    <dataset>/_job/            state of an in-progress precompute job
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from logitstore.errors import InvalidInputError, ManifestVersionError
from logitstore.fs import fsync_dir
from logitstore.spec import Spec

#: The newest format this release writes. 2 (2026-12-03): Parquet shards may store rank-order ids' lowest byte
#: plane uncompressed and q16 gaps as nibbles (docs/FORMAT.md); Zarr datasets are still written as 1.
FORMAT_VERSION = 2
#: Every format this release reads.
READABLE_FORMAT_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
KEY_INDEX_NAME = "keys.idx"
SHARDS_DIR = "shards"
AUDIT_DIR = "audit"
JOB_DIR = "_job"
BACKENDS = ("parquet", "zarr")
Backend = Literal["parquet", "zarr"]


def parse_backend(value: str) -> Backend:
    if value not in BACKENDS:
        raise InvalidInputError(f"unknown backend {value!r}: expected one of {', '.join(BACKENDS)}")
    return value  # type: ignore[return-value]


def shard_relpath(index: int, backend: Backend) -> str:
    """Path of shard ``index`` relative to the dataset root, e.g. ``shards/00007.parquet``."""
    return f"{SHARDS_DIR}/{index:05d}.{'parquet' if backend == 'parquet' else 'zarr'}"


def audit_relpath(index: int) -> str:
    """Path of shard ``index``'s audit sidecar relative to the dataset root, e.g. ``audit/00007.parquet``."""
    return f"{AUDIT_DIR}/{index:05d}.parquet"


class _Dict:
    """to_dict / from_dict for flat frozen dataclasses; unknown keys are refused."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload,no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        if not isinstance(data, dict):
            raise InvalidInputError(f"manifest field {cls.__name__} must be a JSON object, got {data!r}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise InvalidInputError(f"unknown {cls.__name__} field(s) {sorted(unknown)} in manifest")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidInputError(f"manifest {cls.__name__} is incomplete: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class TeacherInfo(_Dict):
    """The model whose logits are stored. ``vocab_size`` is the logit dimension, which may exceed the
    tokenizer's (padded vocabularies such as 152,064 vs 151,936)."""

    name: str
    vocab_size: int
    revision: str | None = None
    dtype: str | None = None


@dataclass(frozen=True, kw_only=True)
class TokenizerInfo(_Dict):
    name: str | None = None
    vocab_size: int | None = None
    vocab_hash: str | None = None
    special_token_ids: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class CorpusInfo(_Dict):
    fingerprint: str | None = None
    seq_len: int | None = None
    packing: str | None = None
    num_sequences: int = 0
    num_tokens: int = 0


@dataclass(frozen=True, kw_only=True)
class FileInfo(_Dict):
    """A file (or a Zarr group directory) of the dataset, with its size and sha256."""

    path: str
    nbytes: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class ShardInfo(_Dict):
    """A committed shard: sequences ``first_seq .. first_seq + num_sequences - 1``."""

    path: str
    first_seq: int
    num_sequences: int
    num_tokens: int
    num_entries: int
    kept_mass_sum: float
    nbytes: int
    sha256: str
    #: sequences per write group (one Parquet row group / one Zarr append each), so readers can align their reads
    #: to what the shard decodes at once; empty in manifests written before it existed.
    row_groups: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "row_groups", tuple(int(n) for n in self.row_groups))  # JSON lists -> tuple


@dataclass(frozen=True, kw_only=True)
class AuditFileInfo(_Dict):
    """One shard's audit sidecar: ``num_positions`` full-vocabulary rows, with its size and sha256."""

    path: str
    num_positions: int
    nbytes: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class AuditInfo:
    """The audit sidecar: the full teacher distribution (log-softmax, ``dtype``) of the positions chosen with
    probability ``fraction`` by :func:`logitstore.rng.audit_uniforms` under the spec's seed; ``files[i]`` belongs
    to ``shards[i]``."""

    fraction: float
    files: tuple[AuditFileInfo, ...]
    dtype: str = "float16"

    def __post_init__(self) -> None:
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0.0 < f <= 1.0):
            raise InvalidInputError(f"manifest audit fraction must be in (0, 1], got {f!r}")
        if self.dtype not in ("float16", "float32"):
            raise InvalidInputError(f"manifest audit dtype must be float16 or float32, got {self.dtype!r}")
        object.__setattr__(self, "fraction", float(f))
        object.__setattr__(self, "files", tuple(self.files))

    @property
    def num_positions(self) -> int:
        return sum(f.num_positions for f in self.files)

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "dtype": self.dtype, "files": [f.to_dict() for f in self.files]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditInfo:
        if not isinstance(data, dict):
            raise InvalidInputError(f"manifest field audit must be a JSON object, got {data!r}")
        unknown = set(data) - {"fraction", "dtype", "files"}
        if unknown:
            raise InvalidInputError(f"unknown audit field(s) {sorted(unknown)} in manifest")
        try:
            return cls(
                fraction=data["fraction"],
                dtype=data.get("dtype", "float16"),
                files=tuple(AuditFileInfo.from_dict(f) for f in data["files"]),
            )
        except KeyError as exc:
            raise InvalidInputError(f"manifest audit is missing the required field {exc.args[0]!r}") from None


@dataclass(frozen=True, kw_only=True)
class Stats(_Dict):
    bytes_per_token: float
    mean_kept_mass: float
    mean_entries_per_position: float

    @classmethod
    def from_shards(cls, shards: list[ShardInfo], key_index_nbytes: int = 0) -> Stats:
        tokens = sum(s.num_tokens for s in shards)
        if tokens == 0:
            return cls(bytes_per_token=0.0, mean_kept_mass=0.0, mean_entries_per_position=0.0)
        return cls(
            bytes_per_token=(sum(s.nbytes for s in shards) + key_index_nbytes) / tokens,
            mean_kept_mass=sum(s.kept_mass_sum for s in shards) / tokens,
            mean_entries_per_position=sum(s.num_entries for s in shards) / tokens,
        )


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """Everything a reader needs to interpret a dataset (ARCHITECTURE §2; format_version 1 or 2, docs/FORMAT.md)."""

    name: str
    backend: Backend
    teacher: TeacherInfo
    spec: Spec
    shards: tuple[ShardInfo, ...]
    key_index: FileInfo
    tokenizer: TokenizerInfo = field(default_factory=TokenizerInfo)
    corpus: CorpusInfo = field(default_factory=CorpusInfo)
    stats: Stats | None = None
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    #: the optional audit sidecar (``--audit-fraction``); None, and absent from the JSON, when there is none
    audit: AuditInfo | None = None

    def __post_init__(self) -> None:
        parse_backend(self.backend)
        object.__setattr__(self, "shards", tuple(self.shards))
        if self.audit is not None and len(self.audit.files) != len(self.shards):
            raise InvalidInputError(
                f"the manifest lists {len(self.audit.files)} audit file(s) for {len(self.shards)} shard(s); "
                "there is one per shard"
            )
        expected = 0
        for s in self.shards:
            if s.first_seq != expected:
                raise InvalidInputError(
                    f"shard {s.path} starts at seq_id {s.first_seq}, expected {expected}: shards must cover "
                    "0..N-1 contiguously and in order"
                )
            expected += s.num_sequences
        if self.stats is None:
            object.__setattr__(self, "stats", Stats.from_shards(list(self.shards), self.key_index.nbytes))

    @property
    def num_sequences(self) -> int:
        return sum(s.num_sequences for s in self.shards)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.shards)

    @property
    def vocab_size(self) -> int:
        return self.teacher.vocab_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "created_at": self.created_at,
            "backend": self.backend,
            "teacher": self.teacher.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "spec": self.spec.to_dict(),
            "corpus": self.corpus.to_dict(),
            "shards": [s.to_dict() for s in self.shards],
            "key_index": self.key_index.to_dict(),
            "stats": self.stats.to_dict() if self.stats else None,
            "extra": self.extra,
            # written only when present, so a dataset without an audit stays readable by older releases
            **({"audit": self.audit.to_dict()} if self.audit is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("format_version")
        if version not in READABLE_FORMAT_VERSIONS:
            raise ManifestVersionError(
                f"manifest format_version {version!r} is not supported: this logitstore reads format_version "
                f"{' and '.join(map(str, READABLE_FORMAT_VERSIONS))}; upgrade logitstore (or rebuild the dataset) "
                "to read it"
            )
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidInputError(f"unknown manifest field(s) {sorted(unknown)}")
        try:
            return cls(
                format_version=version,
                name=data["name"],
                created_at=data["created_at"],
                backend=data["backend"],
                teacher=TeacherInfo.from_dict(data["teacher"]),
                tokenizer=TokenizerInfo.from_dict(data.get("tokenizer") or {}),
                spec=Spec.from_dict(data["spec"]),
                corpus=CorpusInfo.from_dict(data.get("corpus") or {}),
                shards=tuple(ShardInfo.from_dict(s) for s in data["shards"]),
                key_index=FileInfo.from_dict(data["key_index"]),
                stats=Stats.from_dict(data["stats"]) if data.get("stats") else None,
                extra=data.get("extra") or {},
                audit=AuditInfo.from_dict(data["audit"]) if data.get("audit") is not None else None,
            )
        except KeyError as exc:
            raise InvalidInputError(f"manifest is missing the required field {exc.args[0]!r}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"manifest.json is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidInputError("manifest.json must hold a JSON object")
        return cls.from_dict(data)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a uniquely named ``.partial`` + fsync + rename: readers see all or
    nothing, and concurrent writers of the same path never share a temporary file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
