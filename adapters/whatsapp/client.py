"""A thin async WhatsApp Cloud API client: our message models -> Graph requests.

Thin httpx rather than pywa: pywa binds base_url/Authorization onto one httpx client per
instance and its typed errors do not expose a proxy's non-JSON 502 cleanly, while we need
exact control over retryability (adapters.whatsapp.errors).

No retries here: the outbox owns retry as a pure decision over recorded attempts, so each
``send`` is exactly one POST. The access token is sent per request and never appears in an
exception or a log line; response bodies are never logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpcore
import httpx
import orjson
# the mapping httpx's own transport applies to httpcore's errors (httpx is pinned below 0.29)
from httpx._transports.default import map_httpcore_exceptions

from adapters import asyncio_backend
from adapters.whatsapp import errors
from connector.errors import PermanentError, RetryableError
from connector.number_health import NumberReading
from connector.storage import jsoncodec
from connector.messages import (
    CurrencyParam,
    DateTimeParam,
    InteractiveButtons,
    OutboundMessage,
    Param,
    QuickReplyButton,
    SendResult,
    TemplateMessage,
    TextMessage,
    TextParam,
    UrlButton,
)

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# An idle connection is retired after this many seconds, well before the servers' usual keep-alive
# (5 s for uvicorn, Apache, many proxies) closes it from the other side. A POST on a connection the
# server has just closed meets a closed socket: its outcome is unknown, and the message ends
# 'uncertain' instead of sent. A busy event loop may not have read the server's FIN yet when the
# pool hands the connection out, so the pool's own check cannot be relied on; its clock can.
KEEPALIVE_EXPIRY = 2.0
MAX_TEMPLATE_PAGES = 200  # 100 per page: far beyond any WABA's template count
# the number's messaging limit, Meta's field first (``messaging_limit_tier`` is deprecated): ``number_quality``
LIMIT_FIELDS = ("whatsapp_business_manager_messaging_limit", "messaging_limit_tier")
UNKNOWN_FIELD = 100  # Graph's code for a request it refuses, here "Tried accessing nonexisting field (...)"


def _one_line(text: str) -> str:
    """Meta refuses a template whose parameter text holds a new line, a tab or more than four spaces
    in a row ("Param text cannot have new-line/tab characters or more than 4 consecutive spaces"):
    the whole message fails. A name typed on two lines or a product title pasted with a tab goes
    out on one line instead; text without such runs is left exactly as it is. Every text parameter:
    the header's, the body's and a URL button's suffix (a discount code kept with a final new line).
    Not a quick reply's ``payload`` (a parameter of another type, our own config, echoed back as is)."""
    if "\n" in text or "\t" in text or "\r" in text or "     " in text:
        return " ".join(text.split())
    return text


def _param(p: Param) -> dict[str, Any]:
    if isinstance(p, TextParam):
        return {"type": "text", "text": _one_line(p.text)}
    if isinstance(p, CurrencyParam):
        # Meta wants an integer amount * 1000; round rather than truncate sub-mil decimals.
        amount_1000 = int((p.amount * 1000).to_integral_value(rounding=ROUND_HALF_UP))
        return {"type": "currency", "currency": {"fallback_value": p.fallback, "code": p.code, "amount_1000": amount_1000}}
    if isinstance(p, DateTimeParam):
        return {"type": "date_time", "date_time": {"fallback_value": p.fallback}}
    raise TypeError(f"unsupported template parameter {type(p).__name__}")


def _template(m: TemplateMessage) -> dict[str, Any]:
    components: list[dict[str, Any]] = []
    if m.header_media is not None and m.header_text:
        # A template header is either media or text; sending both would be rejected by Meta.
        raise PermanentError("template message has both header media and header text parameters")
    if m.header_media is not None:
        kind = m.header_media.type
        components.append({"type": "header", "parameters": [{"type": kind, kind: {"link": m.header_media.link}}]})
    elif m.header_text:
        components.append({"type": "header", "parameters": [_param(p) for p in m.header_text]})
    if m.body:
        components.append({"type": "body", "parameters": [_param(p) for p in m.body]})
    for i, b in enumerate(m.buttons):
        # index = the button's position in the approved template, as a string
        if isinstance(b, QuickReplyButton):
            components.append({"type": "button", "sub_type": "quick_reply", "index": str(i),
                               "parameters": [{"type": "payload", "payload": b.payload}]})
        elif isinstance(b, UrlButton):
            components.append({"type": "button", "sub_type": "url", "index": str(i),
                               "parameters": [{"type": "text", "text": _one_line(b.suffix)}]})
    template: dict[str, Any] = {"name": m.name, "language": {"code": m.language}}
    if components:
        template["components"] = components
    return template


def _interactive(m: InteractiveButtons) -> dict[str, Any]:
    interactive: dict[str, Any] = {"type": "button"}
    if m.header is not None:
        interactive["header"] = {"type": "text", "text": m.header}
    interactive["body"] = {"text": m.body}
    if m.footer is not None:
        interactive["footer"] = {"text": m.footer}
    interactive["action"] = {"buttons": [{"type": "reply", "reply": {"id": b.id, "title": b.title}} for b in m.buttons]}
    return interactive


def build_payload(message: OutboundMessage) -> dict[str, Any]:
    """The JSON body of ``POST /{phone_number_id}/messages`` for one of our messages."""
    body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": message.to}
    if message.callback_data is not None:
        # echoed on every status webhook: it carries the outbox id
        body["biz_opaque_callback_data"] = message.callback_data
    if isinstance(message, TemplateMessage):
        body["type"] = "template"
        body["template"] = _template(message)
    elif isinstance(message, InteractiveButtons):
        body["type"] = "interactive"
        body["interactive"] = _interactive(message)
    elif isinstance(message, TextMessage):
        body["type"] = "text"
        body["text"] = {"body": message.body, "preview_url": message.preview_url}
    else:
        raise PermanentError(f"unsupported message kind {type(message).__name__}")
    return body


def _accepted(response: httpx.Response) -> SendResult:
    return _accepted_body(response.status_code, response.content)


def _accepted_body(status: int, content: bytes) -> SendResult:
    """Read Meta's 2xx answer.

    A 2xx without ``messages[0].id`` means Meta may well have sent the message but we
    cannot name it. Retrying could deliver it twice, so this is a PermanentError with
    ``outcome_unknown=True`` and no code: the outbox should record it as uncertain and let
    the status webhook (which carries biz_opaque_callback_data) settle it.
    """
    try:
        data = jsoncodec.loads(content)
        wamid = data["messages"][0]["id"]
        if not isinstance(wamid, str) or not wamid:
            raise ValueError
    except (ValueError, KeyError, IndexError, TypeError):
        raise PermanentError("unexpected accepted response", http_status=status, outcome_unknown=True) from None
    wa_id = None
    contacts = data.get("contacts")
    if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict):
        raw = contacts[0].get("wa_id")
        wa_id = str(raw) if raw is not None else None
    return SendResult(wamid=wamid, wa_id=wa_id)


POOL_SIZE = 2  # connections per httpx pool (see WhatsAppClient.__init__)


@dataclass(slots=True)
class _Pool:
    transport: httpx.AsyncHTTPTransport
    connections: httpcore.AsyncConnectionPool  # the transport's own pool: sends go to it directly
    in_flight: int = 0


def _busy(pool: _Pool) -> int:
    return pool.in_flight


def _upper(value: Any) -> str | None:
    """A text field of Graph's answer, trimmed and upper case; None: not given, empty or not text."""
    return value.strip().upper() if isinstance(value, str) and value.strip() else None


class WhatsAppClient:
    """``MessageSender`` over the Cloud API, one pooled httpx transport per instance.

    ``send`` hands its request straight to the httpcore pool under each pooled
    ``httpx.AsyncHTTPTransport``: the client layer above it (cookie jar, redirects, auth
    flow, hooks) does nothing for a POST to Graph and cost about 30% of the CPU of a send
    (0.76 vs 0.54 ms per request on 127.0.0.1), which is what caps one process's send rate,
    and the transport's request and response wrapping another 13% (dispatcher CPU per send
    at 1,000/s, bench/dispatch.py, three alternating pairs: 0.77-0.79 ms against
    0.89-0.92). Its connections run on the event loop's own transports
    (``adapters/asyncio_backend.py``), not anyio streams: 0.80-0.90 ms against 0.94-1.05
    before that. httpcore's errors go through httpx's own mapping, so
    ``adapters.whatsapp.errors`` classifies them as before. Other calls go through an
    ``httpx.AsyncClient`` on the same pool. ``timeout`` applies to every request, also on a
    client passed as ``http`` (which is then used for everything, and not closed by us).
    """

    def __init__(
        self,
        base_url: str,
        api_version: str,
        access_token: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
        max_connections: int = 100,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ):
        self._root = f"{base_url.rstrip('/')}/{api_version.strip('/')}"
        self._token = access_token
        self._timeout = timeout
        self._owns_http = http is None
        self._pools: list[_Pool] = []
        if http is None:
            # several small pools, not one big one: httpcore scans every connection of a pool
            # (a poll() per idle one) at each request's start and end, so one pool of 64
            # connections costs about three times the CPU per send of 32 pools of 2
            per = max(1, min(max_connections, POOL_SIZE))
            shards = max(1, -(-max_connections // per))
            limits = httpx.Limits(max_connections=per, max_keepalive_connections=per, keepalive_expiry=keepalive_expiry)
            tls = httpx.create_ssl_context()  # one CA bundle load (~30 ms of CPU), not one per pool
            transports = [asyncio_backend.transport(verify=tls, limits=limits) for _ in range(shards)]
            self._pools = [_Pool(t, asyncio_backend.connection_pool(t)) for t in transports]
            http = httpx.AsyncClient(timeout=timeout, transport=self._pools[0].transport)
        self._http = http
        self._timeout_ext = {"timeout": timeout.as_dict()}
        self._post_headers = httpx.Headers({**self._headers(), "Content-Type": "application/json"})
        # per sending number, built once: the URL and the headers of its POSTs (all but the length)
        self._send_targets: dict[str, tuple[httpx.URL, httpcore.URL, list[tuple[bytes, bytes]]]] = {}

    def __repr__(self) -> str:  # never the token
        return f"WhatsAppClient({self._root!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()  # closes the first pool, its transport
            for pool in self._pools[1:]:
                await pool.transport.aclose()

    async def __aenter__(self) -> "WhatsAppClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}

    async def _request(self, method: str, url: str, *, headers: dict[str, str] | None = None, sender: str | None = None,
                       **kw: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, url, headers=headers or self._headers(), timeout=self._timeout, **kw)
        except httpx.TransportError as exc:
            raise errors.classify_transport(exc) from None  # the cause's repr could carry the URL; not needed
        if not response.is_success:
            raise errors.classify(response, redact=(self._token,), sender=sender)
        return response

    async def send(self, phone_number_id: str, message: OutboundMessage) -> SendResult:
        """One POST, no retry. Raises RetryableError / PermanentError (connector.errors)."""
        target = self._send_targets.get(phone_number_id)
        if target is None:
            target = self._send_targets[phone_number_id] = self._target(phone_number_id)
        url, core_url, headers = target
        try:
            content = orjson.dumps(build_payload(message))
        except PermanentError:
            raise
        except Exception as exc:  # nothing was sent: a known failure, not an unknown outcome
            raise PermanentError(f"the request cannot be built: {exc.__class__.__name__}: {exc}"[:300]) from None
        if not self._pools:
            return _accepted(await self._request("POST", url, content=content, headers=self._post_headers, sender=phone_number_id))
        request = httpcore.Request(b"POST", core_url, headers=[*headers, (b"Content-Length", b"%d" % len(content))],
                                   content=content, extensions=self._timeout_ext)
        pool = min(self._pools, key=_busy)
        pool.in_flight += 1
        try:
            with map_httpcore_exceptions():  # httpcore's errors as httpx names them, as its transport does
                response = await pool.connections.handle_async_request(request)
                try:
                    body = await response.aread()
                finally:
                    await response.aclose()
        except httpx.TransportError as exc:
            raise errors.classify_transport(exc) from None
        finally:
            pool.in_flight -= 1
        if not 200 <= response.status < 300:
            answer = httpx.Response(response.status, headers=response.headers, content=body,
                                    request=httpx.Request("POST", url, headers=self._post_headers, content=content))
            raise errors.classify(answer, redact=(self._token,), sender=phone_number_id)
        return _accepted_body(response.status, body)

    def _target(self, phone_number_id: str) -> tuple[httpx.URL, httpcore.URL, list[tuple[bytes, bytes]]]:
        url = httpx.URL(f"{self._root}/{phone_number_id}/messages")
        core_url = httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path)
        host = url.netloc  # with the port when it is not the scheme's default, as httpx writes it
        headers = [(b"Host", host), *((k.encode("latin-1"), v.encode("latin-1")) for k, v in self._post_headers.items())]
        return url, core_url, headers

    async def _get_object(self, url: str, params: dict[str, Any], what: str) -> dict[str, Any]:
        """One GET whose answer must be a JSON object; anything else is a PermanentError naming ``what``."""
        response = await self._request("GET", url, params=params)
        try:
            data = jsoncodec.loads(response.content)  # a lone surrogate becomes U+FFFD
        except ValueError:
            raise PermanentError(f"{what}: response is not JSON", http_status=response.status_code) from None
        if not isinstance(data, dict):
            raise PermanentError(f"{what}: unexpected response", http_status=response.status_code)
        return data

    async def number_quality(self, phone_number_id: str) -> NumberReading:
        """The number's ``quality_rating`` (GREEN, YELLOW, RED, UNKNOWN) and messaging limit (TIER_250, TIER_2K,
        TIER_10K, TIER_100K, TIER_UNLIMITED...), one GET of the WhatsApp Business Phone Number node. Meta's
        webhooks never say YELLOW; this does. ``quality_rating``'s values are those third-party references of the
        Graph API give.

        The limit: Meta's "Messaging Limits" page deprecates ``messaging_limit_tier`` for
        ``whatsapp_business_manager_messaging_limit`` (a tier name, ``"TIER_250"`` in its example; v24.0 and newer,
        the old field for v23.0 and older), and the old field now answers nothing. Both are asked for, Meta's
        first read. A field Graph does not know fails the whole request (HTTP 400, code 100: the new one on an
        older API version, the old one once Meta drops it): then the rating is asked alone and each limit field
        on its own, so the rating (the YELLOW early warning) is never lost for the limit. Errors are classified as
        a send's are (401: the token; 5xx, 429: retryable; ...)."""
        url = f"{self._root}/{phone_number_id}"
        try:
            data = await self._get_object(url, {"fields": ",".join(("quality_rating", *LIMIT_FIELDS))}, "phone number")
        except PermanentError as exc:
            if exc.code != UNKNOWN_FIELD:
                raise
            data = await self._get_object(url, {"fields": "quality_rating"}, "phone number")
            data.update(await self._limit_alone(url))
        limit = next((text for f in LIMIT_FIELDS if (text := _upper(data.get(f)))), None)
        return NumberReading(rating=_upper(data.get("quality_rating")), limit=limit)

    async def _limit_alone(self, url: str) -> dict[str, Any]:
        """The first limit field Graph answers, asked one at a time; ``{}``: none (the limit stays as last heard)."""
        for name in LIMIT_FIELDS:
            try:
                data = await self._get_object(url, {"fields": name}, "phone number")
            except PermanentError as exc:
                if exc.code == UNKNOWN_FIELD:
                    continue
                return {}
            except RetryableError:
                return {}  # the rating is read: the next reading asks again
            if _upper(data.get(name)):
                return data
        return {}

    async def list_templates(self, waba_id: str) -> list[dict[str, Any]]:
        """Every message template of a WABA, as Meta's raw dicts (name, language, status, ...).

        Follows the ``after`` cursor while Meta says there is a ``next`` page. Requests are
        always rebuilt on our base URL (never a ``next`` URL's host), so the token only goes
        to Graph. A cursor seen twice means the paging would loop: refuse it.
        """
        url = f"{self._root}/{waba_id}/message_templates"
        params: dict[str, Any] = {"limit": 100}
        seen: set[str] = set()
        out: list[dict[str, Any]] = []
        for _ in range(MAX_TEMPLATE_PAGES):
            data = await self._get_object(url, params, "template list")
            out.extend(t for t in data.get("data") or [] if isinstance(t, dict))
            paging = data.get("paging") if isinstance(data.get("paging"), dict) else {}
            next_url = paging.get("next")
            if not next_url:
                return out  # Graph omits "next" on the last page (cursors remain)
            cursors = paging.get("cursors") if isinstance(paging.get("cursors"), dict) else {}
            after = cursors.get("after") or (parse_qs(urlsplit(str(next_url)).query).get("after") or [None])[0]
            if not after:
                raise PermanentError("template list: paging.next without an 'after' cursor")
            if after in seen:
                raise PermanentError("template list: paging cursor repeated; refusing to loop")
            seen.add(after)
            params = {"limit": 100, "after": after}
        raise PermanentError(f"template list: more than {MAX_TEMPLATE_PAGES} pages")
