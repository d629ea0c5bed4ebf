"""The typed errors of logitstore: every user-facing failure is one of these.

Leaves also subclass the matching built-in, so ``except KeyError`` or ``except ValueError`` in user code keeps
working. The service maps these classes to HTTP status codes in one place.
"""

from __future__ import annotations


class LogitStoreError(Exception):
    """Base class of every error logitstore raises on purpose."""


class InvalidInputError(LogitStoreError, ValueError):
    """An argument, a spec or a record is malformed; the message says which value and what was expected."""


class LimitExceededError(InvalidInputError):
    """A request asks for more than a configured limit allows (the service answers 413)."""


class AuthenticationError(LogitStoreError, PermissionError):
    """The service wants an API key and none, or a wrong one, was given."""


class ServiceUnavailableError(LogitStoreError, ConnectionError):
    """The service could not be reached."""


class NotFoundError(LogitStoreError, KeyError):
    """Something asked for does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message.
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(NotFoundError):
    """No complete dataset (no manifest.json) at the given location."""


class SequenceNotFoundError(NotFoundError, IndexError):
    """A seq_id outside 0..N-1, or a content key that is not cached."""


class DatasetExistsError(LogitStoreError, FileExistsError):
    """A complete dataset is already at the output location and overwriting was not asked for."""


class ManifestVersionError(LogitStoreError, ValueError):
    """The manifest's format_version is not one this release can read."""


class CorruptShardError(LogitStoreError, OSError):
    """A shard cannot be read or violates the format's invariants; the message names the shard."""


class ChecksumMismatchError(CorruptShardError):
    """A file's sha256 or size differs from what the manifest recorded."""


class SpecMismatchError(LogitStoreError, ValueError):
    """Two things that must agree do not: vocabulary sizes, tokenizer hashes, specs, sequence lengths."""


class MissingDependencyError(LogitStoreError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
