"""Graph API failures -> RetryableError / PermanentError, decided by Meta's error code.

Branch on ``error.code`` (Meta's own advice), never on the message text. The exception
message carries only the HTTP status, the code, our one-line meaning of it and at most
200 characters of Meta's short ``message``: never the response body or ``error_data``,
which can echo the recipient's number or template parameters (personal data).

Codes and meanings: shared/docs/platform-facts.md C4 (Meta "Error codes" page via pywa).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timezone

import httpx

from connector.errors import AccountError, PermanentError, RetryableError, SendError
from connector.outbox.retry import parse_retry_after as retry_after_seconds
from connector.storage import jsoncodec

MAX_RETRY_AFTER = 3600.0  # a Retry-After beyond an hour is not believed; the outbox backs off anyway
WAIT_A_DAY = 86400.0  # 131049: Meta says do not retry the same user for at least 24 h
MAX_META_MESSAGE = 200
# a gateway that timed out waiting on Meta: the request may have been sent (see classify())
GATEWAY_TIMEOUTS = frozenset({504})

# Meta's API call rate limits (4 the app's, 17 the user's, 613 Graph's, 80007 the WhatsApp Business
# Account's): the codes X-Business-Use-Case-Usage's estimate is about (``parse_regain_after``), and the
# ones classify() flags ``rate_limited``, which the dispatcher pauses a number for
CALL_RATE_LIMITS = frozenset({4, 17, 613, 80007})

# code -> (retryable, short meaning). 132xxx and 200-299 are ranges, see describe()/_known().
CODES: dict[int, tuple[bool, str]] = {
    # retryable: throttling and Meta-side trouble
    130429: (True, "throughput (messages per second) reached"),
    131056: (True, "pair rate limit: too many messages to this recipient"),
    131000: (True, "unknown error at Meta"),
    131016: (True, "service temporarily unavailable"),
    1: (True, "unknown API error"),
    2: (True, "API service temporarily unavailable"),
    4: (True, "app API call rate limit"),
    80007: (True, "WABA API call rate limit"),
    17: (True, "user request limit reached"),
    613: (True, "API call rate limit exceeded"),
    133016: (True, "too many registration attempts; try later"),
    # Meta: "not delivered to maintain healthy ecosystem engagement" (per-user marketing
    # limit). Not a payload problem, but retrying soon is pointless: Meta says wait at
    # least 24 h, so this is a RetryableError with retry_after=86400 (see classify()).
    131049: (True, "per-user marketing limit; wait at least 24 h"),
    # permanent: the recipient
    131026: (False, "undeliverable (not on WhatsApp, terms not accepted, old app)"),
    131047: (False, "outside the 24 h customer-service window; send a template"),
    131050: (False, "user stopped marketing messages"),
    131030: (False, "recipient not in the allowed list (test number)"),
    130472: (False, "user is in a marketing experiment group"),
    # permanent: the payload or template
    131051: (False, "unsupported message type"),
    131008: (False, "required parameter missing"),
    131009: (False, "parameter value invalid"),
    132000: (False, "template parameter count mismatch"),
    132001: (False, "template does not exist in this language or is not approved"),
    132005: (False, "template text too long after parameters"),
    132007: (False, "template content policy violation"),
    132008: (False, "template parameter format invalid"),
    132012: (False, "template parameter format mismatch"),
    132015: (False, "template paused for low quality"),
    132016: (False, "template permanently disabled"),
    # permanent: the account
    131048: (False, "spam rate limit: too many messages blocked or flagged"),
    131064: (False, "messaging limit reached after template classification violations"),
    131042: (False, "business payment issue"),
    131031: (False, "business account locked"),
    368: (False, "account temporarily blocked for policy violations"),
    130497: (False, "business account restricted from messaging users in this country"),
    # the business number itself (Meta's error page: register it, get its display name approved, grant the permission)
    133010: (False, "business phone number not registered on the Cloud API"),
    131045: (False, "business phone number registration error (certificate)"),
    131037: (False, "business phone number's display name not approved yet"),
    131005: (False, "access denied: permission not granted or removed"),
    # Meta's error page: "The business phone number has been deleted" (title "Parameter value is not
    # valid"); its other pages: the phone number id is invalid, or its WABA was deleted
    33: (False, "business phone number deleted, or its id not valid"),
    190: (False, "access token expired or invalid"),
    0: (False, "authentication exception"),
    3: (False, "capability not available to this app"),
    10: (False, "permission denied"),
}


# The account or the number, not the message: every send fails alike until a person fixes it
# (a new token, a permission granted, a payment method, a lock or block lifted, quality
# restored). classify() answers AccountError, so the outbox holds the messages and pauses the
# number (platform-facts C4: "pause sends") instead of failing each queued one for good.
# Not 130497 (the recipient's country) nor 131064 (unclear which limit it is): per message.
# The number's own state too (not registered, its registration broken, its display name not yet
# approved, access to it denied, deleted or its id wrong: 33): without them in here every message
# queued was failed for good.
ACCOUNT_CODES = frozenset({0, 3, 10, 33, 190, 368, 131005, 131031, 131037, 131042, 131045, 131048, 133010})


def is_account_code(code: int | None) -> bool:
    return code is not None and (code in ACCOUNT_CODES or 200 <= code <= 299)


def _known(code: int) -> tuple[bool, str] | None:
    if code in CODES:
        return CODES[code]
    if 132000 <= code <= 132999:
        return (False, "template error")
    if 200 <= code <= 299:
        return (False, "permission not granted")
    return None


def describe(code: int | None) -> str:
    """One line about a Graph error code, for reports and the admin UI."""
    if code is None:
        return "no error code (network, non-JSON or unexpected response)"
    known = _known(code)
    return known[1] if known else f"unknown error code {code}"


def is_retryable_code(code: int) -> bool | None:
    """True/False for a known code, None when we do not know it (status decides then)."""
    known = _known(code)
    return known[0] if known else None


def parse_retry_after(value: str | None, *, now: datetime | None = None, sent: str | None = None) -> float | None:
    """Retry-After as seconds (``"2"``, ``"2.5"`` or an HTTP-date, against ``sent``: the answer's Date), clamped to [0, 3600]."""
    return retry_after_seconds(value, now=now or datetime.now(timezone.utc), cap=MAX_RETRY_AFTER, sent=sent)


def retry_after_of(response: httpx.Response) -> float | None:
    """The answer's Retry-After in seconds; a date in it read against the answer's own Date header."""
    return parse_retry_after(response.headers.get("Retry-After"), sent=response.headers.get("Date"))


def parse_regain_after(value: str | None) -> float | None:
    """Meta's ``X-Business-Use-Case-Usage`` header, ``{"<business id>": [{"type": ...,
    "estimated_time_to_regain_access": <minutes>, ...}]}``: how long until a rate-limited business
    use case (80007: the WhatsApp Business Account's) is taken again. The longest, in seconds,
    clamped to [0, 3600]; None when absent, zero or unreadable (the header is only news)."""
    if not value:
        return None
    try:
        usage = jsoncodec.loads(value)
    except (ValueError, RecursionError):
        return None
    minutes = [e.get("estimated_time_to_regain_access") for cases in (usage.values() if isinstance(usage, dict) else ())
               if isinstance(cases, list) for e in cases if isinstance(e, dict)]
    longest = max((float(m) for m in minutes if isinstance(m, (int, float)) and not isinstance(m, bool) and m == m), default=0.0)
    return min(longest * 60, MAX_RETRY_AFTER) if longest > 0 else None


_PHONE = re.compile(r"\+?\d[\d\s().-]{5,}\d")
_TOKENISH = re.compile(r"[A-Za-z0-9_\-]{32,}")


def _scrub(text: str, redact: Iterable[str]) -> str:
    """Meta's message is short but may still quote a number or a token: mask them."""
    for secret in redact:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _PHONE.sub(lambda m: m.group(0) if len(re.sub(r"\D", "", m.group(0))) < 7 else "[number]", text)
    text = _TOKENISH.sub("[redacted]", text)
    text = " ".join(text.split())
    return text[:MAX_META_MESSAGE]


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _graph_error(response: httpx.Response) -> dict | None:
    try:
        body = jsoncodec.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


# Graph's code 100 ("Invalid parameter") with subcode 33, whose message reads "Unsupported post request. Object
# with ID '<id>' does not exist, cannot be loaded due to missing permissions, or does not support this operation"
_MISSING_OBJECT = (100, 33)
_OBJECT_ID = re.compile(r"Object with ID '([^']{1,100})'")


def missing_object_is_the_sender(error: dict, sender: str | None) -> bool:
    """Whether a code 100 / subcode 33 answer to a send is about the sending number, not the message.

    Graph answers 100/33 when the object a request names "does not exist, cannot be loaded due to missing
    permissions, or does not support this operation" (Graph's error-handling guide: 100 is an invalid
    parameter, subcode 33 an object that cannot be loaded). A send is ``POST /<phone number id>/messages``:
    when the object is that number (the id wrong, the number deleted, or the token no longer given access
    to it: the case issue threads of every Cloud API client show), no message can go until a person fixes
    the setting, so it is account-level (``AccountError``: the number pauses, its messages wait). When
    Meta names another object (one this message refers to, such as a media or a flow id), only this message
    is wrong: it fails alone and the rest go. A message that names no id, or a send whose number we do not
    know, is taken as the number's: holding a message costs a wait, failing every queued one loses them.
    """
    match = _OBJECT_ID.search(str(error.get("message") or ""))
    if match is None or sender is None:
        return True
    return match.group(1).strip() == sender.strip()


def classify(response: httpx.Response, *, redact: Iterable[str] = (), sender: str | None = None) -> SendError:
    """The exception for a non-2xx Graph answer (returned, not raised).

    Known codes decide; an unknown code or a non-JSON body (a proxy's HTML 502) falls back
    to the status: 5xx and 429 retryable, anything else permanent. A gateway timeout (504)
    without Graph's error body is the exception: the gateway gave up waiting on Meta, which
    may have sent the message, so it is outcome-unknown like a read timeout (never re-sent;
    the status webhook settles it). A 502/503 without a body stays retryable: the gateway
    reached no working Meta server (the outage tests/faults/test_whatsapp_outage.py plays).
    An account-level code (``ACCOUNT_CODES``: the token, a permission, payment, a block) is an
    ``AccountError``, a PermanentError the dispatcher treats as "pause this number".
    ``redact`` lists strings (the access token) that must never reach the message even if
    Meta quotes them. ``sender``: the phone number id a send was made from, which decides whether
    a missing object (100/33, ``missing_object_is_the_sender``) is the account's problem or the message's.
    """
    status = response.status_code
    retry_after = retry_after_of(response)
    error = _graph_error(response)
    by_status = status >= 500 or status == 429

    if error is None:
        if status in GATEWAY_TIMEOUTS:
            return RetryableError(f"HTTP {status} without a Graph error body; outcome unknown (gateway timeout)",
                                  http_status=status, retry_after=retry_after, outcome_unknown=True)
        cls = RetryableError if by_status else PermanentError
        return cls(f"HTTP {status} without a Graph error body", http_status=status, retry_after=retry_after)

    code = _int(error.get("code"))
    subcode = _int(error.get("error_subcode"))
    trace_id = error.get("fbtrace_id")
    trace_id = str(trace_id)[:64] if trace_id is not None else None
    meta = error.get("message") or error.get("error_user_title") or error.get("title") or ""
    meta = _scrub(str(meta), redact) if meta else ""

    known = is_retryable_code(code) if code is not None else None
    if known is None:
        retryable = by_status or error.get("is_transient") is True
    else:
        retryable = known
    if code == 131049:
        retry_after = max(retry_after or 0.0, WAIT_A_DAY)
    if code in CALL_RATE_LIMITS:
        # Meta's own estimate of a call rate limit's end: a floor, as Retry-After is. Only for these: the header
        # rides on other answers too (a 130429 throttle), where an hour's estimate about a use case would hold
        # a message meant to be tried again within seconds
        regain = parse_regain_after(response.headers.get("X-Business-Use-Case-Usage"))
        if regain is not None:
            retry_after = max(retry_after or 0.0, regain)

    text = f"HTTP {status}, code {code}"
    if subcode is not None:
        text += f"/{subcode}"
    text += f" ({describe(code)})"
    if meta:
        text += f": {meta}"
    account = is_account_code(code) or ((code, subcode) == _MISSING_OBJECT and missing_object_is_the_sender(error, sender))
    if (code, subcode) == _MISSING_OBJECT:
        text += " (the sending number's id is wrong, deleted or not this token's)" if account else " (an object this message names)"
    cls = RetryableError if retryable else AccountError if account else PermanentError
    return cls(text, code=code, subcode=subcode, trace_id=trace_id, http_status=status, retry_after=retry_after,
               rate_limited=code in CALL_RATE_LIMITS)


# The request cannot have reached Meta: safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError,
             httpx.UnsupportedProtocol, httpx.LocalProtocolError)


def is_outcome_unknown(exc: BaseException) -> bool:
    """True when the request may have reached Meta although we got no answer.

    Read/write timeouts, a connection dropped mid-request and a server that hung up
    without answering (RemoteProtocolError) all qualify: a second send could deliver the
    message twice, so the outbox should wait for the status webhook instead. Anything
    we cannot place is treated as unknown too.
    """
    if isinstance(exc, SendError):
        return exc.outcome_unknown
    if isinstance(exc, httpx.TransportError):
        return not isinstance(exc, _NOT_SENT)
    return False


def classify_transport(exc: httpx.TransportError) -> RetryableError:
    """No HTTP answer at all. The message names the failure class only (no URL, no headers)."""
    name = type(exc).__name__
    unknown = is_outcome_unknown(exc)
    if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout)):
        text = f"timeout; outcome unknown ({name})"
    elif isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        text = f"connection failed ({name})"
    elif isinstance(exc, httpx.PoolTimeout):
        text = "no free connection in the pool (PoolTimeout)"
    elif unknown:
        text = f"connection lost after sending; outcome unknown ({name})"
    else:
        text = f"transport error ({name})"
    return RetryableError(text, outcome_unknown=unknown)
