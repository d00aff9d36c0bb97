"""One root error, branched by what the caller must do about it."""

from __future__ import annotations


class StoreloopError(Exception):
    """Root of every error the connector raises on purpose."""


class ConfigError(StoreloopError):
    """The configuration is invalid; ``problems`` lists every one with its key path, ``lines`` the
    file's line each one's setting is written at (None where there is none to point at)."""

    def __init__(self, problems: list[str], lines: list[int | None] | None = None):
        self.problems = problems
        self.lines = lines if lines is not None else [None] * len(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class Problems(ValueError):
    """Several problems a validator found, each at a key path below the value it validates
    (``cod_confirmation.delay_minute``): ``parse_settings`` lists each at its full path
    (``stores[0].journeys.cod_confirmation.delay_minute``), not all on the validated key."""

    def __init__(self, located: list[tuple[str, str]]):
        self.located = located
        super().__init__("; ".join(f"{where}: {what}" if where else what for where, what in located))

    @classmethod
    def of(cls, lines: list[str]) -> "Problems":
        """From ``"sub.path: message"`` lines."""
        return cls([tuple(line.split(": ", 1)) if ": " in line else ("", line) for line in lines])  # type: ignore[misc]


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


class DatabaseNotReadyError(StoreloopError):
    """The database cannot be used yet: commands refuse to start (exit 3) and say why."""


class SchemaNotReadyError(DatabaseNotReadyError):
    """The database is not migrated to the version this code needs."""


class DatabaseUnavailableError(DatabaseNotReadyError):
    """The database cannot be reached or opened (server down, wrong host or name, a SQLite
    folder that does not exist); the message names the URL without its password."""


class SendError(StoreloopError):
    """An outside call (WhatsApp send, store write-back) failed.

    Carries what the platform said about it (code, subcode, its request id) but never
    the response body, which can hold personal data. ``rate_limited``: the adapter read the
    answer as the platform's call rate limit (counted over a long window, not this message's
    fault), so the core waits it out without knowing the platform's codes.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        trace_id: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        outcome_unknown: bool = False,
        rate_limited: bool = False,
    ):
        self.code = code
        self.rate_limited = rate_limited
        self.outcome_unknown = outcome_unknown  # the request may have reached the platform (read timeout)
        self.subcode = subcode
        self.trace_id = trace_id
        self.http_status = http_status
        self.retry_after = retry_after
        super().__init__(message)


class SyncError(StoreloopError):
    """A platform answered something a reconciliation run cannot continue from (a repeated cursor)."""


class RetryableError(SendError):
    """May succeed later (network, 5xx, throttling): the outbox retries with backoff."""

    retryable = True


class PermanentError(SendError):
    """Failed for good (bad number, template problem): never retried as is."""

    retryable = False


class AccountError(PermanentError):
    """Every send from this account fails alike until a person fixes it (an expired token, a
    missing permission, a payment issue, a block): the message is not at fault, so it waits
    and the sender pauses instead of failing everything queued."""


def describe_error(exc: BaseException) -> str:
    """``Class: message`` for a log line or an inbox row's ``last_error``, without personal data.

    A database error's full text carries what the database saw: the statement's values
    (hidden by the engine's ``hide_parameters``) and the server's own DETAIL ("Key
    (phone_key)=(+9198...) already exists"). Only the driver's first line is kept, which
    names the problem and the constraint, never a value.
    """
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError) and exc.orig is not None:
        first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
        return f"{exc.__class__.__name__}: {exc.orig.__class__.__name__}: {first}"
    return f"{exc.__class__.__name__}: {exc}"
