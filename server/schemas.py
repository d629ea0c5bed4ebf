"""Request and response models of the REST API (separate from the manifest dataclasses)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field

#: OpenAPI patterns of path parameters (anchored: JSON Schema patterns are searches, not full matches)
KEY_PATTERN = r"^[0-9a-fA-F]{32}$"


def _json_integer(value: object) -> object:
    """What JSON Schema calls an integer: 3 or 3.0, but not true/false or "3" (which pydantic's lax mode reads as
    ints: ``false`` would be seq_id 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


# (Field before the validator: the other order writes pydantic's "ge" into the JSON schema instead of "minimum")
SeqId = Annotated[int, Field(ge=0), BeforeValidator(_json_integer)]
TokenId = Annotated[int, Field(ge=0, lt=2**31), BeforeValidator(_json_integer)]


class ErrorOut(BaseModel):
    """The body of every error the service answers with (the Python client raises ``error`` again)."""

    detail: str = Field(description="what was wrong, the value seen, and what would work")
    error: str = Field(description="the logitstore.errors class, e.g. SequenceNotFoundError")


class DatasetSummary(BaseModel):
    name: str
    teacher: str
    method: str
    spec: str
    backend: str
    sequences: int
    tokens: int
    bytes_per_token: float


class DatasetList(BaseModel):
    datasets: list[DatasetSummary]


class RecordOut(BaseModel):
    """The logical record (ARCHITECTURE §2); ``logprobs`` entries are null where the teacher's logit was -inf."""

    seq_id: int
    key: str = Field(description="32 hex digits: blake2b-128 of the little-endian int32 input_ids")
    input_ids: list[int]
    lse: list[float]
    nnz: list[int]
    ids: list[int]
    logprobs: list[float | None]
    counts: list[int] | None = None
    proposal_lse: list[float] | None = None
    label_logprob: list[float | None] | None = Field(
        None, description="teacher logprob of the next token; null at the last position (none follows)"
    )
    logit_mean: list[float] | None = None
    logit_std: list[float] | None = None


class RecordList(BaseModel):
    records: list[RecordOut]


class BatchRequest(BaseModel):
    seq_ids: list[SeqId] = Field(min_length=1, description="seq_ids to return, in this order (repeats allowed)")


class LookupRequest(BaseModel):
    input_ids: list[TokenId] = Field(min_length=1, description="the exact token ids of a cached sequence")


class Match(BaseModel):
    dataset: str
    seq_id: int


class LookupResponse(BaseModel):
    matches: list[Match]
    record: RecordOut = Field(description="the record of the first match")


class Health(BaseModel):
    status: str
    datasets: int


def manifest_schema() -> dict[str, Any]:
    return {"type": "object", "description": "the dataset's manifest.json (docs/FORMAT.md)"}
