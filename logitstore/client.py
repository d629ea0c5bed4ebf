"""A typed Python client of the caching service; returns the same objects as ``open_dataset`` on disk.

    with Client("http://127.0.0.1:8000", api_key=None) as c:
        c.datasets()                       # summaries
        rec = c.sequence("topk64", 3)      # Record (Arrow IPC on the wire)
        c.batch("topk64", [1, 5, 9])       # [Record, ...]
        ds = c.open_dataset("topk64")      # a Dataset reading the shards through /files (HTTP Range)

Errors come back as the same :mod:`logitstore.errors` classes the service raised (404 -> ``SequenceNotFoundError``
etc.), with the service's message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from logitstore import errors
from logitstore.closeable import Closeable
from logitstore.dataset import Dataset
from logitstore.keys import parse_key
from logitstore.manifest import Manifest
from logitstore.record import Record
from logitstore.wire import ARROW_STREAM, record_from_json, records_from_arrow


class Client(Closeable):
    """``api_key`` defaults to the ``LOGITSTORE_API_KEY`` environment variable, as for ``open_dataset``."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        api_key = api_key or os.environ.get("LOGITSTORE_API_KEY") or None
        self.api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    # -- endpoints --------------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def datasets(self) -> list[dict[str, Any]]:
        """Name, teacher, method, spec, backend, sequences, tokens and bytes/token of every dataset."""
        return self._json("GET", "/v1/datasets")["datasets"]  # type: ignore[no-any-return]

    def manifest(self, name: str) -> Manifest:
        return Manifest.from_dict(self._json("GET", f"/v1/datasets/{name}"))

    def sequence(self, name: str, seq_id: int, *, start: int | None = None, stop: int | None = None) -> Record:
        """One record, or its positions ``start..stop-1``."""
        params = {k: v for k, v in (("start", start), ("stop", stop)) if v is not None}
        return self._records("GET", f"/v1/datasets/{name}/sequences/{seq_id}", params=params)[0]

    def batch(self, name: str, seq_ids: Sequence[int]) -> list[Record]:
        return self._records("POST", f"/v1/datasets/{name}/batch", json={"seq_ids": [int(i) for i in seq_ids]})

    def by_key(self, name: str, key: bytes | str) -> Record:
        return self._records("GET", f"/v1/datasets/{name}/keys/{parse_key(key).hex()}")[0]

    def lookup(self, input_ids: Sequence[int] | np.ndarray) -> tuple[list[tuple[str, int]], Record]:
        """Which ``(dataset, seq_id)`` hold exactly ``input_ids``, and the first one's record."""
        body = self._json("POST", "/v1/lookup", json={"input_ids": [int(t) for t in input_ids]})
        matches = [(m["dataset"], int(m["seq_id"])) for m in body["matches"]]
        return matches, record_from_json(body["record"])

    def file(self, name: str, path: str, *, start: int | None = None, stop: int | None = None) -> bytes:
        """Raw bytes of a dataset file (``start..stop-1`` with an HTTP Range request)."""
        headers = {}
        if start is not None or stop is not None:
            headers["Range"] = f"bytes={start or 0}-{'' if stop is None else stop - 1}"
        return self._send("GET", f"/v1/datasets/{name}/files/{path}", headers=headers).content

    def open_dataset(self, name: str, *, verify: bool = False) -> Dataset:
        """The dataset read through the service: shards come over HTTP Range requests and decode locally."""
        return Dataset(f"{self.base_url}/v1/datasets/{name}", verify=verify, api_key=self.api_key)

    # -- plumbing ---------------------------------------------------------------------------------------------------

    def _records(self, method: str, url: str, **kwargs: Any) -> list[Record]:
        response = self._send(method, url, headers={"Accept": ARROW_STREAM}, **kwargs)
        return records_from_arrow(response.content)

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return self._send(method, url, **kwargs).json()

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise errors.ServiceUnavailableError(
                f"cannot reach the logitstore service at {self.base_url}: {type(exc).__name__}: {exc}; is "
                "`logitstore serve` running there?"
            ) from None
        if response.status_code >= 400:
            raise _error(response)
        return response

    def close(self) -> None:
        self._http.close()


def _error(response: httpx.Response) -> errors.LogitStoreError:
    """The service's typed error, rebuilt from ``{"detail", "error"}``."""
    try:
        body = response.json()
        detail, name = str(body.get("detail")), str(body.get("error"))
    except ValueError:
        detail, name = response.text[:500], ""
    kind = getattr(errors, name, None)
    if not (isinstance(kind, type) and issubclass(kind, errors.LogitStoreError)):
        kind = {401: errors.AuthenticationError, 404: errors.NotFoundError, 413: errors.LimitExceededError}.get(
            response.status_code, errors.InvalidInputError if response.status_code < 500 else errors.LogitStoreError
        )
    return kind(f"{detail} (HTTP {response.status_code} from {response.request.url})")
