"""Request and response models of the REST API (separate from the manifest dataclasses)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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


class RecordList(BaseModel):
    records: list[RecordOut]


class BatchRequest(BaseModel):
    seq_ids: list[int] = Field(min_length=1, description="seq_ids to return, in this order")


class LookupRequest(BaseModel):
    input_ids: list[int] = Field(min_length=1, description="the exact token ids of a cached sequence")


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
