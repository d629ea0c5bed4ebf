"""Service settings, read from ``LOGITSTORE_*`` environment variables (or passed to ``create_app``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """``LOGITSTORE_STORE=/data/store LOGITSTORE_API_KEY=... uvicorn --factory logitstore.server:create_app``."""

    model_config = SettingsConfigDict(env_prefix="LOGITSTORE_", extra="ignore")

    store: Path = Field(description="directory holding the datasets (one sub-directory each)")
    api_key: SecretStr | None = Field(default=None, description="when set, every /v1 request must carry it")
    max_batch_sequences: int = Field(default=256, ge=1, description="sequences per POST /batch")
    max_positions: int = Field(default=1 << 20, ge=1, description="positions per sequence response")
    max_lookup_tokens: int = Field(default=1 << 20, ge=1, description="input_ids per POST /v1/lookup")
    cache_mb: int = Field(
        default=1024, ge=0, description="MiB of decoded records kept in memory, per worker process (0: none)"
    )
    verify: bool = Field(default=False, description="check each shard's sha256 before its first read")
