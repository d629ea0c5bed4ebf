"""logitstore.workers: the Ray precompute job (ARCHITECTURE §4).

``precompute(...)`` runs a teacher over a corpus on an embedded (or existing) Ray cluster and writes a complete,
resumable dataset. Importing this package does not import ray; running a job does.
"""

from __future__ import annotations

from logitstore.workers.config import PrecomputeConfig, load_config_file, make_spec
from logitstore.workers.job import JobFailedError, PrecomputeResult, precompute

__all__ = ["JobFailedError", "PrecomputeConfig", "PrecomputeResult", "load_config_file", "make_spec", "precompute"]
