"""One root error, branched by what the caller must do about it."""

from __future__ import annotations


class StoreloopError(Exception):
    """Root of every error the connector raises on purpose."""


class ConfigError(StoreloopError):
    """The configuration is invalid; ``problems`` lists every one with its key path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class VerificationError(StoreloopError):
    """A webhook failed authentication (missing or wrong signature, unknown tenant)."""

    def __init__(self, reason: str, status_code: int = 401):
        self.reason = reason
        self.status_code = status_code
        super().__init__(reason)


class BadPayloadError(StoreloopError):
    """An authenticated request whose body cannot be read (malformed JSON, wrong shape)."""


class NormalizationError(StoreloopError):
    """A stored payload that the adapter cannot turn into events; the inbox row is marked failed."""


class SchemaNotReadyError(StoreloopError):
    """The database is not migrated to the version this code needs."""


class RetryableError(StoreloopError):
    """An outside call failed in a way that may succeed later (network, 5xx, throttling)."""

    def __init__(self, message: str, *, code: int | None = None, retry_after: float | None = None):
        self.code = code
        self.retry_after = retry_after
        super().__init__(message)


class PermanentError(StoreloopError):
    """An outside call failed for good; retrying cannot help."""

    def __init__(self, message: str, *, code: int | None = None):
        self.code = code
        super().__init__(message)
