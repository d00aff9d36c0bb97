"""A sandbox WhatsApp Cloud API: a real HTTP peer on 127.0.0.1 for the demo, benchmarks and tests.

It accepts ``POST /{version}/{phone_number_id}/messages`` like the Graph API, answers with
a wamid, enforces a messages-per-second limit per number the way Meta does (error 130429),
can be scripted to fail (5xx, 130429, HTML 502, ...), can refuse a share of sends the way
Meta refuses an undeliverable one (``fail_share``: HTTP 400 with code 131026, chosen by a
hash of the recipient, template and callback data, so the same sends fail whatever order
they arrive in), and can post signed status webhooks
(sent, delivered, read) back to the connector with the ``biz_opaque_callback_data`` it got.
``GET /{version}/{phone_number_id}`` answers the number's ``quality_rating`` and, as Meta does now,
its limit in ``whatsapp_business_manager_messaging_limit`` (``messaging_limit_tier``, deprecated,
answers nothing) (settable: ``quality_rating``, ``messaging_limit``), so the connector's
number-quality job can be shown a YELLOW or RED number; a field named in ``unknown_fields`` is
refused as Graph refuses one it does not know (HTTP 400, code 100), to play Meta dropping it.
Nothing here is used in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters import asyncio_backend


@dataclass
class Call:
    phone_number_id: str
    to: str
    type: str
    template: str | None
    callback_data: str | None
    at: float
    status: int
    wamid: str | None
    params: tuple[str, ...] = ()  # the template's body parameters, as the customer reads them


def _body_params(template: Any) -> tuple[str, ...]:
    """The text of a template send's body parameters (what fills {{1}}, {{2}}, ...)."""
    for component in (template or {}).get("components") or []:
        if isinstance(component, dict) and component.get("type") == "body":
            return tuple(str(p.get("text", "")) for p in component.get("parameters") or [] if isinstance(p, dict))
    return ()


@dataclass
class ScriptedResponse:
    status: int
    body: Any = None  # dict -> JSON; str -> text/html
    headers: dict[str, str] = field(default_factory=dict)


class SandboxWhatsApp:
    def __init__(
        self,
        *,
        token: str = "sandbox-token",
        limit_mps: float | None = None,
        webhook_url: str | None = None,
        app_secret: str | None = None,
        statuses: tuple[str, ...] = ("sent", "delivered"),
        templates: list[dict[str, Any]] | None = None,
        fail_share: float = 0.0,
        fail_code: int = 131026,
        fail_templates: frozenset[str] | None = None,
        fail_seed: int = 0,
    ):
        self.token = token
        self.fail_share, self.fail_code, self.fail_templates, self.fail_seed = fail_share, fail_code, fail_templates, fail_seed
        self.limit_mps = limit_mps
        self.webhook_url = webhook_url
        self.app_secret = app_secret
        self.statuses = statuses
        self.templates = templates or []
        self.quality_rating = "GREEN"  # what the number's GET answers; set YELLOW or RED to see the connector react
        self.messaging_limit = "TIER_1K"  # answered as whatsapp_business_manager_messaging_limit
        self.unknown_fields: set[str] = set()  # fields of the number Graph refuses (code 100): {"messaging_limit_tier"}
        self.number_reads = 0
        self.calls: list[Call] = []
        self.script: deque[ScriptedResponse] = deque()
        # answers scripted for the number's GET only: a read two minutes after a worker starts must not take one
        # meant for a send
        self.number_script: deque[ScriptedResponse] = deque()
        self._ids = itertools.count(1)
        self._window: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._client: httpx.AsyncClient | None = None  # posts the status webhooks; one per sandbox, opened on first use
        self._posting: set[asyncio.Task[None]] = set()  # status webhooks on their way (cancelled at shutdown)
        self.app = Starlette(
            routes=[
                Route("/{version}/{phone_number_id}/messages", self._messages, methods=["POST"]),
                Route("/{version}/{waba_id}/message_templates", self._templates, methods=["GET"]),
                Route("/{version}/{phone_number_id}", self._number, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        yield
        posting, self._posting = list(self._posting), set()
        for task in posting:  # statuses still on their way when the server stops are dropped, not posted to a closed client
            task.cancel()
        await asyncio.gather(*posting, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- what tests and benchmarks read ------------------------------------------------
    def accepted(self) -> list[Call]:
        return [c for c in self.calls if c.status == 200]

    def refused(self) -> list[Call]:
        """Sends answered with ``fail_code`` (see ``fail_share``)."""
        return [c for c in self.calls if c.status == 400]

    def sends_per_callback(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for c in self.accepted():
            counts[c.callback_data or ""] += 1
        return dict(counts)

    # -- the API -----------------------------------------------------------------------
    def _refuse(self, to: str, template: str | None, callback: str | None) -> bool:
        if not self.fail_share or (self.fail_templates is not None and template not in self.fail_templates):
            return False
        digest = hashlib.sha256(f"{self.fail_seed}|{to}|{template}|{callback}".encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 < self.fail_share

    def _over_limit(self, phone_number_id: str, now: float) -> bool:
        if self.limit_mps is None:
            return False
        window = self._window[phone_number_id]
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= self.limit_mps:
            return True
        window.append(now)
        return False

    async def _messages(self, request: Request) -> Response:
        now = time.monotonic()
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"error": {"message": "Invalid OAuth access token.", "type": "OAuthException", "code": 190, "fbtrace_id": "SBX"}}, 401)
        body = await request.json()
        phone = request.path_params["phone_number_id"]
        to = str(body.get("to", ""))
        kind = str(body.get("type", ""))
        template = (body.get("template") or {}).get("name")
        params = _body_params(body.get("template"))
        callback = body.get("biz_opaque_callback_data")
        with self._lock:
            scripted = self.script.popleft() if self.script else None
            if scripted is None and self._over_limit(phone, now):
                scripted = ScriptedResponse(429, {"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429, "fbtrace_id": "SBX"}})
            if scripted is None and self._refuse(to, template, callback):
                scripted = ScriptedResponse(400, {"error": {
                    "message": f"(#{self.fail_code}) Message undeliverable", "type": "OAuthException", "code": self.fail_code,
                    "error_data": {"messaging_product": "whatsapp", "details": "Message could not be delivered"}, "fbtrace_id": "SBX"}})
        if scripted is not None:
            self.calls.append(Call(phone, to, kind, template, callback, now, scripted.status, None, params))
            if isinstance(scripted.body, str):
                return Response(scripted.body, scripted.status, headers=scripted.headers, media_type="text/html")
            return JSONResponse(scripted.body, scripted.status, headers=scripted.headers)
        wamid = f"wamid.SBX{next(self._ids):08d}"
        self.calls.append(Call(phone, to, kind, template, callback, now, 200, wamid, params))
        if self.webhook_url and self.app_secret:
            task = asyncio.get_running_loop().create_task(self._post_statuses(phone, to, wamid, callback))
            self._posting.add(task)
            task.add_done_callback(self._posting.discard)
        digits = to.lstrip("+")
        return JSONResponse({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": digits}], "messages": [{"id": wamid}]})

    async def _number(self, request: Request) -> Response:
        """The phone number node, with the fields asked for (``?fields=``), as Graph answers; a
        response scripted for it (``number_script``) is answered instead."""
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"error": {"message": "Invalid OAuth access token.", "type": "OAuthException", "code": 190, "fbtrace_id": "SBX"}}, 401)
        with self._lock:
            self.number_reads += 1
            scripted = self.number_script.popleft() if self.number_script else None
        if scripted is not None:
            if isinstance(scripted.body, str):
                return Response(scripted.body, scripted.status, headers=scripted.headers, media_type="text/html")
            return JSONResponse(scripted.body, scripted.status, headers=scripted.headers)
        wanted = [f for f in request.query_params.get("fields", "").split(",") if f]
        unknown = [f for f in wanted if f in self.unknown_fields]
        if unknown:
            return JSONResponse({"error": {"message": f"(#100) Tried accessing nonexisting field ({unknown[0]}) on node type "
                                           "(WhatsAppBusinessPhoneNumber)", "type": "OAuthException", "code": 100, "fbtrace_id": "SBX"}}, 400)
        node = {"quality_rating": self.quality_rating, "whatsapp_business_manager_messaging_limit": self.messaging_limit}
        return JSONResponse({**{k: v for k, v in node.items() if not wanted or k in wanted}, "id": request.path_params["phone_number_id"]})

    async def _templates(self, request: Request) -> Response:
        return JSONResponse({"data": self.templates, "paging": {"cursors": {"before": "a", "after": "a"}}})

    async def _post_statuses(self, phone: str, to: str, wamid: str, callback: str | None) -> None:
        """Meta's status webhooks for one accepted message, 10 ms apart, through one pooled
        client (a client per message cost the sandbox more CPU than the sends it answers)."""
        if self._client is None:  # on the connector's own network backend, cheaper per post than anyio's
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx.AsyncClient's own
            transport = asyncio_backend.transport(verify=httpx.create_ssl_context(), limits=limits)
            self._client = httpx.AsyncClient(timeout=5, transport=transport)
        client = self._client
        for status in self.statuses:
            await asyncio.sleep(0.01)
            item: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(int(time.time())), "recipient_id": to.lstrip("+")}
            if callback:
                item["biz_opaque_callback_data"] = callback
            envelope = {"object": "whatsapp_business_account", "entry": [{"id": "SBX", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone},
                "statuses": [item]}}]}]}
            raw = json.dumps(envelope).encode()
            sig = "sha256=" + hmac.new((self.app_secret or "").encode(), raw, hashlib.sha256).hexdigest()
            try:
                await client.post(self.webhook_url or "", content=raw, headers={"X-Hub-Signature-256": sig, "Content-Type": "application/json"})
            except httpx.HTTPError:
                pass  # the connector is down; Meta would retry, the sandbox does not


class SandboxServer:
    """Run a Starlette app with uvicorn in a background thread on a free 127.0.0.1 port."""

    def __init__(self, app: Any, port: int = 0, keep_alive: float = 5):
        """``keep_alive``: seconds an idle connection stays open (uvicorn's own default: 5)."""
        self.port = port or _free_port()
        self.closed = 0  # connections ended so far (either side): ``wait_for_closed``
        self._closing = threading.Condition()
        sandbox = self

        class _Counted(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
            def connection_lost(self, exc: Exception | None) -> None:
                super().connection_lost(exc)
                with sandbox._closing:
                    sandbox.closed += 1
                    sandbox._closing.notify_all()

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
                                                    timeout_keep_alive=keep_alive, http=_Counted))  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.server.run, name=f"sandbox-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "SandboxServer":
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("sandbox server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def wait_for_closed(self, count: int, timeout: float) -> bool:
        """Block until ``count`` connections have ended (a keep-alive the server let run out, say);
        False if not within ``timeout`` seconds."""
        with self._closing:
            return self._closing.wait_for(lambda: self.closed >= count, timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
