"""The sandbox Cloud API (connector.sandbox.whatsapp) in its own process, for bench/dispatch.py.

Run apart from the dispatcher so the fake server does not share its event loop, GIL and
CPU. Listens on 127.0.0.1 only (uvicorn, uvloop, httptools, one worker):

    python bench/_sandbox_server.py --port 8123 [--script-after 200 --script-file failures.json]

``--script-file`` holds a JSON list of {"status", "body", "headers"} (ScriptedResponse);
they are queued once ``--script-after`` requests have been accepted. ``GET /_calls``
returns every call as [monotonic time, HTTP status, callback data, to]; ``GET /_ready`` is 200.
With ``--webhook-url`` and ``--app-secret`` every accepted message is answered, as Meta does,
by signed status webhooks (``--statuses``, 10 ms apart) posted to that URL (bench/latency.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import orjson
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.sandbox.whatsapp import SandboxWhatsApp, ScriptedResponse  # noqa: E402


class BenchSandbox(SandboxWhatsApp):
    """Counts accepted calls and arms a scripted failure burst after the first ``after``."""

    def __init__(self, *, after: int | None = None, scripted: list[ScriptedResponse] | None = None, **kw):
        super().__init__(**kw)
        self.after = after
        self.pending_script = scripted or []
        self.accepted_count = 0
        self.app.router.routes.insert(0, Route("/_calls", self._calls, methods=["GET"]))
        self.app.router.routes.insert(0, Route("/_ready", self._ready, methods=["GET"]))

    async def _messages(self, request: Request) -> Response:
        response = await super()._messages(request)
        if response.status_code == 200:
            self.accepted_count += 1
            if self.pending_script and self.after is not None and self.accepted_count >= self.after:
                self.script.extend(self.pending_script)
                self.pending_script = []
        return response

    async def _calls(self, request: Request) -> Response:
        rows = [[c.at, c.status, c.callback_data, c.to] for c in self.calls]
        return Response(orjson.dumps(rows), media_type="application/json")

    async def _ready(self, request: Request) -> Response:
        return Response(b"ok")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--limit-mps", type=float, default=None)
    parser.add_argument("--script-after", type=int, default=None)
    parser.add_argument("--script-file", type=Path, default=None)
    parser.add_argument("--webhook-url", default=None, help="where to post the status webhooks of each accepted message")
    parser.add_argument("--app-secret", default=None, help="Meta's app secret that signs them")
    parser.add_argument("--statuses", default="sent,delivered", help="comma-separated statuses per accepted message")
    args = parser.parse_args()
    scripted = []
    if args.script_file is not None:
        scripted = [ScriptedResponse(s["status"], s.get("body"), s.get("headers") or {}) for s in json.loads(args.script_file.read_text())]
    statuses = tuple(s.strip() for s in args.statuses.split(",") if s.strip())
    fake = BenchSandbox(after=args.script_after, scripted=scripted, limit_mps=args.limit_mps, webhook_url=args.webhook_url,
                        app_secret=args.app_secret, statuses=statuses)
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, loop="uvloop", http="httptools")


if __name__ == "__main__":
    main()
