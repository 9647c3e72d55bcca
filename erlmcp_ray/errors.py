"""Exceptions raised by erlmcp_ray.

Every error this package raises derives from :class:`ErlmcpRayError`, so one
``except ErlmcpRayError`` catches them all; a Ray exception never reaches a
caller untranslated. The tree is kept shallow on purpose::

    ErlmcpRayError
    ├── ConfigError                 (also ValueError)
    ├── UnknownDomainError          (also LookupError)
    ├── InvalidValueError           (also ValueError)
    │   └── InvalidKeyError
    ├── InvalidConsistencyError     (also ValueError)
    ├── MemoryPressureError
    ├── ReplicationError
    ├── StaleEpochError
    ├── UnavailableError            retryable
    │   └── OperationTimeoutError   retryable
    ├── RemoteError
    ├── CorruptDataError
    └── CheckpointNotFoundError     (also LookupError)

Builtins are never shadowed: the timeout error is ``OperationTimeoutError``,
not ``TimeoutError``.
"""

from __future__ import annotations

__all__ = [
    "CheckpointNotFoundError",
    "ConfigError",
    "CorruptDataError",
    "ErlmcpRayError",
    "InvalidConsistencyError",
    "InvalidKeyError",
    "InvalidValueError",
    "MemoryPressureError",
    "OperationTimeoutError",
    "RemoteError",
    "ReplicationError",
    "StaleEpochError",
    "UnavailableError",
    "UnknownDomainError",
]


class ErlmcpRayError(Exception):
    """Raised when: anything in erlmcp_ray fails. The root of the tree."""

    #: True when the same call may succeed if simply tried again later.
    retryable: bool = False


class ConfigError(ErlmcpRayError, ValueError):
    """Raised when: a configuration has an unknown key, a wrong type, a bad value.

    ``path`` names the offending field, e.g. ``"domains.session.max_bytes"``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class UnknownDomainError(ErlmcpRayError, LookupError):
    """Raised when: a call names a memory domain the configuration does not define."""

    def __init__(self, domain: object, known: tuple[str, ...] = ()) -> None:
        hint = f"; known domains: {', '.join(known)}" if known else ""
        super().__init__(f"unknown memory domain {domain!r}{hint}")
        self.domain = domain

    def __str__(self) -> str:  # LookupError would otherwise repr() the message
        return str(self.args[0])


class InvalidValueError(ErlmcpRayError, ValueError):
    """Raised when: a value cannot be stored (unencodable type, bad dict key, too large).

    ``where`` is the path inside the value, e.g. ``"value['items'][3]"``.
    """

    def __init__(self, message: str, where: str = "value") -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


class InvalidKeyError(InvalidValueError):
    """Raised when: a key is not a non-empty ``str`` of at most 1 KiB in UTF-8."""

    def __init__(self, message: str) -> None:
        super().__init__(message, where="key")


class InvalidConsistencyError(ErlmcpRayError, ValueError):
    """Raised when: a consistency or coherence level name is not one of the known levels."""


class MemoryPressureError(ErlmcpRayError):
    """Raised when: a write would grow a non-evictable domain past its critical limit."""

    def __init__(self, message: str, domain: str = "", limit: str = "") -> None:
        super().__init__(message)
        self.domain = domain
        self.limit = limit


class ReplicationError(ErlmcpRayError):
    """Raised when: a strong write could not reach enough in-sync copies; nothing was acked."""


class StaleEpochError(ErlmcpRayError):
    """Raised when: an operation carries an owner epoch older than the one the receiver knows."""

    def __init__(self, message: str, epoch: int = 0, current: int = 0) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.current = current


class UnavailableError(ErlmcpRayError):
    """Raised when: a system actor cannot be reached (dead, restarting, or Ray is down)."""

    retryable = True


class OperationTimeoutError(UnavailableError):
    """Raised when: a remote call did not answer in time. It may or may not have happened."""


class RemoteError(ErlmcpRayError):
    """Raised when: a system actor failed with an unexpected error (a bug); the message has its traceback."""


class CorruptDataError(ErlmcpRayError):
    """Raised when: stored data fails its checksum or cannot be decoded; the message names the
    shard (or blob) and the file or key, so nothing corrupt is ever served as empty."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where


class CheckpointNotFoundError(ErlmcpRayError, LookupError):
    """Raised when: a checkpoint id names no stored checkpoint."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "checkpoint not found"
