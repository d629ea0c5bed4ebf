"""The precompute job's configuration: one frozen dataclass, built from keyword arguments, CLI flags or a
YAML/JSON file, and checked before any teacher compute."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from logitstore.audit import parse_audit_fraction
from logitstore.codec import CODEC_VERSION
from logitstore.errors import InvalidInputError
from logitstore.manifest import parse_backend
from logitstore.sparsify import ALGORITHM_VERSION
from logitstore.spec import Encoding, Spec, parse_encoding

SPEC_KEYS = (
    "method",
    "k",
    "p",
    "k_min",
    "n",
    "proposal_temperature",
    "seed",
    "encoding",
    "label_logprob",
    "logit_stats",
)


@dataclass(frozen=True, kw_only=True)
class PrecomputeConfig:
    """Everything that defines a precompute job. ``out`` is the dataset directory (``STORE/NAME``)."""

    teacher: str
    data: str
    out: str
    spec: Spec
    seq_len: int = 2048
    backend: str = "parquet"
    tokenizer: str | None = None
    text_column: str = "text"
    pack: bool = True
    batch_size: int = 8
    num_workers: int | None = None
    ray_address: str | None = None
    overwrite: bool = False
    sequences_per_shard: int | None = None
    max_attempts: int = 3
    progress: bool = True
    #: fraction of positions whose full distribution goes to the audit sidecar (``logitstore report``); about
    #: ``audit_fraction * tokens * V * 2`` bytes
    audit_fraction: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_backend(self.backend)
        # Paths are made absolute once, here, so the driver, the actors and a resumed job all agree on them.
        object.__setattr__(self, "teacher", _absolute(self.teacher))
        object.__setattr__(self, "data", str(Path(self.data).resolve()) if Path(self.data).exists() else self.data)
        if self.tokenizer is not None:
            object.__setattr__(self, "tokenizer", _absolute(self.tokenizer))
        for name, lo in (("seq_len", 1), ("batch_size", 1), ("max_attempts", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise InvalidInputError(f"{name} must be an integer >= {lo}, got {value!r}")
        for name in ("num_workers", "sequences_per_shard"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
        object.__setattr__(self, "audit_fraction", parse_audit_fraction(self.audit_fraction))
        if self.audit_fraction > 0 and self.spec.method == "dense":
            raise InvalidInputError(
                f"audit_fraction={self.audit_fraction} applies to sparse methods: a dense dataset already stores every "
                "distribution; drop --audit-fraction (or pick topk, topp or sample)"
            )

    def identity(self) -> dict[str, Any]:
        """What must not change between a job and its resumption (the rest, like worker count, may)."""
        # audit_fraction only when set, so jobs started before the option existed still resume
        audit = {"audit_fraction": self.audit_fraction} if self.audit_fraction > 0 else {}
        return {
            "teacher": _absolute(self.teacher),
            "data": str(Path(self.data).resolve()),
            "spec": self.spec.to_dict(),
            "seq_len": self.seq_len,
            "backend": self.backend,
            "tokenizer": None if self.tokenizer is None else _absolute(self.tokenizer),
            "text_column": self.text_column,
            "pack": self.pack,
            "batch_size": self.batch_size,
            "sequences_per_shard": self.sequences_per_shard,
            # shards computed by another version of the sparsifiers or the codec may differ bit for bit: never mix them
            "sparsify_version": ALGORITHM_VERSION,
            "codec_version": CODEC_VERSION,
            **audit,
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec"] = self.spec.to_dict()
        return d


def _absolute(location: str) -> str:
    """A local path made absolute (actors on other nodes or in other directories resolve it the same way);
    ``module:factory`` teachers are returned unchanged."""
    path = Path(location)
    return str(path.resolve()) if path.exists() else location


def make_spec(
    method: str,
    *,
    k: int | None = None,
    p: float | None = None,
    k_min: int | None = None,
    n: int | None = None,
    proposal_temperature: float | None = None,
    seed: int = 0,
    encoding: str | Encoding | dict[str, Any] = "compact",
    label_logprob: bool | None = None,
    logit_stats: bool = False,
    teacher: str | None = None,
) -> Spec:
    """A :class:`Spec` from flat options, as the CLI and config files give them (None = not given).

    ``label_logprob`` defaults to True for a language-model teacher and False for a classifier (``teacher`` given
    as ``module:factory``), which has no next token."""
    if label_logprob is None:
        label_logprob = teacher is None or not _is_classifier(teacher)
    kwargs: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "encoding": parse_encoding(encoding),
        "label_logprob": label_logprob,
        "logit_stats": logit_stats,
    }
    for name, value in (("k", k), ("p", p), ("k_min", k_min), ("n", n)):
        if value is not None:
            kwargs[name] = value
    if proposal_temperature is not None:
        kwargs["proposal_temperature"] = proposal_temperature
    return Spec(**kwargs)


def config_from_mapping(data: dict[str, Any], *, source: str = "config") -> PrecomputeConfig:
    """A config from a flat mapping (a YAML/JSON file): spec options may sit at the top level or under 'spec'."""
    data = dict(data)
    raw_spec = data.pop("spec", {}) or {}
    if not isinstance(raw_spec, dict):
        raise InvalidInputError(
            f"'spec' in {source} must be a mapping such as {{method: topk, k: 64}}, got {raw_spec!r}"
        )
    spec_data = dict(raw_spec)
    unknown_spec = set(spec_data) - set(SPEC_KEYS)
    if unknown_spec:
        raise InvalidInputError(f"unknown spec option(s) {sorted(unknown_spec)} in {source}; known: {list(SPEC_KEYS)}")
    for key in SPEC_KEYS:
        if key in data:
            spec_data[key] = data.pop(key)
    known = {f.name for f in fields(PrecomputeConfig)} - {"spec"}
    unknown = set(data) - known
    if unknown:
        raise InvalidInputError(
            f"unknown option(s) {sorted(unknown)} in {source}; known: {sorted(known | set(SPEC_KEYS))}"
        )
    if "method" not in spec_data:
        raise InvalidInputError(f"{source} does not name a method (topk, topp, sample or dense)")
    for required in ("teacher", "data", "out"):
        if required not in data:
            raise InvalidInputError(f"{source} is missing the required option {required!r}")
    return PrecomputeConfig(spec=make_spec(**spec_data, teacher=data["teacher"]), **data)


def teacher_kind(teacher: str) -> str:
    """``hf`` for a model directory, ``classifier`` for ``module:factory``."""
    if Path(teacher).exists():
        return "hf"
    if ":" in teacher and not teacher.startswith(("/", ".")):
        return "classifier"
    raise InvalidInputError(
        f"teacher {teacher!r} does not exist: pass a local Hugging Face model directory or module:factory"
    )


def _is_classifier(teacher: str) -> bool:
    try:
        return teacher_kind(teacher) == "classifier"
    except InvalidInputError:  # a missing teacher is reported, with its fix, by the job's input checks
        return False


def load_config_file(path: str | Path) -> PrecomputeConfig:
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidInputError(f"{path} is not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} must hold a mapping of option names to values")
    return config_from_mapping(data, source=str(path))
