"""A mixin for objects that hold files or connections: ``with obj:`` calls ``obj.close()``."""

from __future__ import annotations

from types import TracebackType

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
