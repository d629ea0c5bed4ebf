"""Shard backends, chosen by the manifest's ``backend`` field through one registry."""

from __future__ import annotations

from logitstore.formats.base import ShardReader, ShardWriter
from logitstore.formats.parquet import ParquetShardReader, ParquetShardWriter
from logitstore.formats.zarr import ZarrShardReader, ZarrShardWriter

WRITERS: dict[str, type[ShardWriter]] = {"parquet": ParquetShardWriter, "zarr": ZarrShardWriter}
READERS: dict[str, type[ShardReader]] = {"parquet": ParquetShardReader, "zarr": ZarrShardReader}

__all__ = ["READERS", "WRITERS", "ShardReader", "ShardWriter"]
