"""Objects that hold files or connections: ``with obj:`` calls ``obj.close()``; ``with aborting(writer):`` aborts a
writer whose block failed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Protocol

from typing_extensions import Self


class Closeable:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Abortable(Protocol):
    def abort(self) -> None: ...


@contextmanager
def aborting(writer: Abortable) -> Iterator[None]:
    """Abort ``writer`` when the block raises, then re-raise: a writer whose write or commit failed half way keeps
    no half-written state that a later call could commit. An error of the abort itself is dropped (the block's
    error is the one to report)."""
    try:
        yield
    except BaseException:
        with suppress(Exception):
            writer.abort()
        raise
