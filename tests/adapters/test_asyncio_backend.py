"""The WhatsApp client's network backend (adapters/asyncio_backend.py) against small servers
on 127.0.0.1, under asyncio and uvloop: HTTPS with a certificate checked, a keep-alive
connection the server closed while idle, a server that never answers, a refused
connection, an answer cut off half way, and a body larger than the read buffer."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters import asyncio_backend
from adapters.whatsapp.client import WhatsAppClient
from connector.errors import RetryableError
from connector.messages import TextMessage

ACCEPTED = orjson.dumps({"messaging_product": "whatsapp", "contacts": [{"input": "+919876543210", "wa_id": "919876543210"}],
                         "messages": [{"id": "wamid.ONE"}]})
TO = "+919876543210"
LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(loop: str, coro: Awaitable[object]) -> object:
    return uvloop.run(coro) if loop == "uvloop" else asyncio.run(coro)  # type: ignore[arg-type]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 request with a Content-Length body; b"" if the client went away."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return await reader.readexactly(length)


def answer(body: bytes = ACCEPTED, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


class Server:
    """An asyncio server on 127.0.0.1 running ``handler`` per connection; counts connections."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None):
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> "Server":
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]


def client(base: str, **kw: object) -> WhatsAppClient:
    return WhatsAppClient(base, "v23.0", "token-never-logged", **kw)  # type: ignore[arg-type]


async def failed_send(base: str, **client_kw: object) -> RetryableError:
    """One send to ``base``: the RetryableError it has to end in."""
    c = client(base, **client_kw)
    try:
        await c.send("1065", TextMessage(to=TO, body="hello"))
    except RetryableError as exc:
        return exc
    finally:
        await c.aclose()
    raise AssertionError("the send did not fail")


def send_error(loop: str, handler: Handler, *, tls: ssl.SSLContext | None = None, **client_kw: object) -> RetryableError:
    """``failed_send`` to a server running ``handler``."""
    async def go() -> RetryableError:
        async with Server(handler, tls) as server:
            return await failed_send(f"{'https' if tls else 'http'}://127.0.0.1:{server.port}", **client_kw)

    return run(loop, go())  # type: ignore[return-value]


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(answer())
        await writer.drain()


def test_the_client_sends_on_the_native_backend() -> None:
    """What the rest of this file tests is what the client uses."""
    async def go() -> None:
        c = client("http://127.0.0.1:9")
        try:
            assert c._pools and all(isinstance(p.connections._network_backend, asyncio_backend.AsyncioBackend)
                                    and p.connections is p.transport._pool for p in c._pools)
        finally:
            await c.aclose()

    asyncio.run(go())


@pytest.fixture()
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "storeloop test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


@LOOPS
def test_sends_over_https_reuse_one_checked_connection(loop: str, certificate: tuple[Path, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cert_path, key_path = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))  # the client's CA bundle (httpx reads it)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_path, key_path)

    async def go() -> tuple[list[str], int]:
        async with Server(keep_answering, tls) as server:
            c = client(f"https://127.0.0.1:{server.port}", max_connections=1)
            try:
                results = [await c.send("1065", TextMessage(to=TO, body=f"hello {i}")) for i in range(3)]
            finally:
                await c.aclose()
            return [r.wamid for r in results], server.connections

    wamids, connections = run(loop, go())
    assert wamids == ["wamid.ONE"] * 3
    assert connections == 1  # kept alive over TLS


@LOOPS
def test_the_request_on_the_wire_is_the_graph_post_with_its_headers(loop: str) -> None:
    """The send path builds its own httpcore request: method, path, Host (with the port),
    token, content type and length, and the JSON body, as a server reads them."""
    seen: list[tuple[bytes, bytes]] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(v for k, v in (line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
                          if k.strip().lower() == b"content-length"))
        seen.append((head, await reader.readexactly(length)))
        writer.write(answer())
        await writer.drain()

    async def go() -> tuple[int, str]:
        async with Server(record) as server:
            c = client(f"http://127.0.0.1:{server.port}")
            try:
                result = await c.send("1065", TextMessage(to=TO, body="hello"))
            finally:
                await c.aclose()
            return server.port, result.wamid

    port, wamid = run(loop, go())
    assert wamid == "wamid.ONE"
    (head, body), = seen
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    assert lines[0] == "POST /v23.0/1065/messages HTTP/1.1"
    assert headers["host"] == f"127.0.0.1:{port}"
    assert headers["authorization"] == "Bearer token-never-logged"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert orjson.loads(body) == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": TO, "type": "text",
                                  "text": {"body": "hello", "preview_url": False}}


@LOOPS
def test_a_certificate_the_client_does_not_trust_is_refused_before_anything_is_sent(
        loop: str, certificate: tuple[Path, Path]) -> None:
    cert_path, key_path = certificate  # SSL_CERT_FILE not set: the client trusts only the public CAs
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_path, key_path)
    requests: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await read_request(reader))

    exc = send_error(loop, record, tls=tls)
    assert not exc.outcome_unknown and "connection failed" in str(exc)
    assert requests == []


@LOOPS
def test_a_keep_alive_connection_the_server_closed_while_idle_is_replaced_not_failed(loop: str) -> None:
    """Graph closes idle keep-alive connections; the next send must take a new one, not fail on
    the dead one (a send failing after its bytes went out would be 'outcome unknown')."""
    async def go() -> tuple[str, int]:
        gone = asyncio.Event()

        async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(answer())  # keep-alive by HTTP/1.1 default, then closed by the server
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            gone.set()

        async with Server(one_then_close) as server:
            c = client(f"http://127.0.0.1:{server.port}", max_connections=1)
            try:
                await c.send("1065", TextMessage(to=TO, body="first"))
                await gone.wait()
                stream = None
                for _ in range(1000):  # until the FIN has reached the client's protocol
                    conns = c._pools[0].transport._pool.connections
                    stream = conns[0]._connection._network_stream if conns and conns[0]._connection else None
                    if stream is None or stream.get_extra_info("is_readable"):
                        break
                    await asyncio.sleep(0.001)
                second = await c.send("1065", TextMessage(to=TO, body="second"))
            finally:
                await c.aclose()
            return second.wamid, server.connections

    wamid, connections = run(loop, go())
    assert wamid == "wamid.ONE"
    assert connections == 2


@LOOPS
def test_a_server_that_never_answers_is_a_timeout_with_the_outcome_unknown(loop: str) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client gives up

    exc = send_error(loop, swallow, timeout=httpx.Timeout(0.2))
    assert isinstance(exc, RetryableError) and exc.outcome_unknown and "timeout" in str(exc)


@LOOPS
def test_a_refused_connection_is_retryable_and_known_not_sent(loop: str) -> None:
    async def go() -> RetryableError:
        async with Server(keep_answering) as server:
            port = server.port
        return await failed_send(f"http://127.0.0.1:{port}")  # the server is gone: nothing listens there

    exc = run(loop, go())
    assert isinstance(exc, RetryableError) and not exc.outcome_unknown and "connection failed" in str(exc)


@LOOPS
def test_an_answer_cut_off_half_way_leaves_the_outcome_unknown(loop: str) -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        full = answer()
        writer.write(full[: len(full) - 20])
        await writer.drain()

    exc = send_error(loop, half)
    assert isinstance(exc, RetryableError) and exc.outcome_unknown


@LOOPS
def test_a_body_larger_than_the_read_buffer_arrives_whole(loop: str) -> None:
    """Reading pauses past HIGH_WATER bytes and resumes as they are taken: nothing is lost or reordered."""
    body = bytes(range(256)) * (4 * asyncio_backend.HIGH_WATER // 256 + 7)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()

    async def go() -> bytes:
        async with Server(big) as server:
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            transport = asyncio_backend.transport(verify=httpx.create_ssl_context(), limits=limits)
            async with httpx.AsyncClient(transport=transport) as http:
                response = await http.post(f"http://127.0.0.1:{server.port}/", content=b"{}")
                return response.content

    assert run(loop, go()) == body
