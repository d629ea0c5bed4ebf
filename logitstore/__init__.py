"""logitstore: an offline teacher-logit cache for knowledge distillation."""

from __future__ import annotations

from logitstore.dataset import Dataset, open_dataset
from logitstore.errors import LogitStoreError
from logitstore.keys import content_key
from logitstore.manifest import CorpusInfo, Manifest, ShardInfo, TeacherInfo, TokenizerInfo
from logitstore.record import Record
from logitstore.spec import COMPACT, LOSSLESS, Encoding, Spec
from logitstore.writer import DatasetWriter

__version__ = "0.1.0"

__all__ = [
    "COMPACT",
    "LOSSLESS",
    "CorpusInfo",
    "Dataset",
    "DatasetWriter",
    "Encoding",
    "LogitStoreError",
    "Manifest",
    "Record",
    "ShardInfo",
    "Spec",
    "TeacherInfo",
    "TokenizerInfo",
    "content_key",
    "open_dataset",
]
