"""runs/network.py: the run backend's sockets, against small real servers on 127.0.0.1 that
misbehave the ways a backend or the network can. Each test runs on asyncio's own loop and on
daphne's, uvloop (`LOOPS_OF_DAPHNE` in conftest)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import replace

import httpx
import pytest
import trustme

from runs.backend import BackendConfig, RunBackend, RunStarted, TextDelta
from runs.exceptions import BackendTimeout, BackendUnavailable
from runs.network import AsyncioBackend, asyncio_transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_event(name: str, data: str) -> bytes:
    return chunk(f"event: {name}\ndata: {data}\n\n".encode())


async def request_read(reader: asyncio.StreamReader) -> bytes:
    """One request's head and body (Content-Length only, as httpx sends a JSON body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


@asynccontextmanager
async def server(handler: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        listener.close()


def run_backend(url: str, *, read_timeout: float = 5.0) -> RunBackend:
    config = replace(BackendConfig.from_settings(), url=url, read_timeout=read_timeout)
    return RunBackend(config)


async def events_of(backend: RunBackend) -> list:
    async with aclosing(backend.run_stream(text="hi")) as events:
        return [event async for event in events]


async def test_the_run_backend_reads_through_these_sockets(settings):
    backend = run_backend("http://127.0.0.1:9")
    try:
        for client in [backend._control, *backend._streams]:
            assert isinstance(client._transport._pool._network_backend, AsyncioBackend)
    finally:
        await backend.aclose()


async def test_a_stream_cut_into_small_pieces_arrives_whole(settings):
    async def handler(reader, writer):
        await request_read(reader)
        body = (
            sse_event("metadata", '{"run_id": "r1"}')
            + b"".join(
                sse_event("messages", f'[{{"type": "AIMessageChunk", "content": "{word} "}}, {{}}]')
                for word in ["one", "two", "three"]
            )
            + sse_event("end", "")
            + b"0\r\n\r\n"
        )
        writer.write(SSE_HEAD)
        # A byte at a time, so events and lines straddle reads.
        for index in range(len(body)):
            writer.write(body[index : index + 1])
            await writer.drain()
            if index % 16 == 0:
                await asyncio.sleep(0)

    async with server(handler) as url:
        backend = run_backend(url)
        try:
            events = await events_of(backend)
        finally:
            await backend.aclose()
    assert events[0] == RunStarted(run_id="r1", thread_id=None)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "one two three "


async def test_a_backend_that_stops_sending_times_out(settings):
    async def handler(reader, writer):
        await request_read(reader)
        writer.write(SSE_HEAD + sse_event("metadata", '{"run_id": "r1"}'))
        await writer.drain()
        await asyncio.sleep(30)

    async with server(handler) as url:
        backend = run_backend(url, read_timeout=0.3)
        try:
            with pytest.raises(BackendTimeout):
                await asyncio.wait_for(events_of(backend), 10)
        finally:
            await backend.aclose()


async def test_a_connection_dropped_mid_reply_is_a_lost_connection(settings):
    async def handler(reader, writer):
        await request_read(reader)
        writer.write(SSE_HEAD + sse_event("metadata", '{"run_id": "r1"}'))
        await writer.drain()
        writer.transport.abort()

    async with server(handler) as url:
        backend = run_backend(url)
        try:
            with pytest.raises(BackendUnavailable, match="lost"):
                await asyncio.wait_for(events_of(backend), 10)
        finally:
            await backend.aclose()


async def test_a_kept_alive_connection_the_server_closed_is_not_reused(settings):
    connections = 0

    async def handler(reader, writer):
        nonlocal connections
        connections += 1
        await request_read(reader)
        # Says keep-alive, then hangs up while the connection sits idle in the pool.
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async with server(handler) as url:
        async with httpx.AsyncClient(transport=asyncio_transport(limits=httpx.Limits())) as client:
            assert (await client.get(url)).text == "ok"
            await asyncio.sleep(0.2)  # the close reaches the client
            assert (await client.get(url)).text == "ok"
    assert connections == 2


async def test_a_large_body_arrives_whole(settings):
    payload = bytes(range(256)) * 8192  # 2 MiB, past the point where reading pauses

    async def handler(reader, writer):
        await request_read(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload))
        writer.write(payload)
        await writer.drain()

    async with server(handler) as url:
        async with httpx.AsyncClient(transport=asyncio_transport(limits=httpx.Limits())) as client:
            async with client.stream("GET", url) as response:
                received = bytearray()
                async for piece in response.aiter_raw():
                    received += piece
                    await asyncio.sleep(0)  # a slow reader lets the buffer fill
    assert bytes(received) == payload


async def test_a_large_request_body_is_sent_whole(settings):
    received = asyncio.get_running_loop().create_future()

    async def handler(reader, writer):
        received.set_result(await request_read(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    text = "x" * (3 * 1024 * 1024)
    async with server(handler) as url:
        async with httpx.AsyncClient(transport=asyncio_transport(limits=httpx.Limits())) as client:
            response = await client.post(url, json={"text": text})
    assert response.status_code == 204
    assert (await received).endswith(b'{"text":"' + text.encode() + b'"}')


async def test_a_closed_port_is_a_connect_error():
    async with httpx.AsyncClient(transport=asyncio_transport(limits=httpx.Limits())) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:9/")


async def test_a_backend_over_tls_streams_and_checks_its_certificate(settings):
    """A hosted backend is https: the handshake runs on these sockets too."""
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_tls)

    async def handler(reader, writer):
        await request_read(reader)
        writer.write(
            SSE_HEAD
            + sse_event("metadata", '{"run_id": "r1"}')
            + sse_event("messages", '[{"type": "AIMessageChunk", "content": "over tls"}, {}]')
            + sse_event("end", "")
            + b"0\r\n\r\n"
        )
        await writer.drain()

    def client(verify: ssl.SSLContext) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(verify=verify)
        transport._pool._network_backend = AsyncioBackend()
        return httpx.AsyncClient(transport=transport, timeout=5)

    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    async with server(handler, tls=server_tls) as url:
        async with client(trusting) as trusted:
            async with trusted.stream("POST", url, json={}) as response:
                body = b"".join([piece async for piece in response.aiter_bytes()])
        assert b"over tls" in body
        async with client(ssl.create_default_context()) as stranger:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await stranger.post(url, json={})
