"""The sockets under the run backend's HTTP clients: plain asyncio instead of anyio.

httpcore's default network backend wraps every read in an anyio cancel scope (`fail_after`)
and asks the socket whether it is readable with a poll() call before it reuses a connection.
A relayed reply is one read a token, so at 100 chats those two were a tenth of daphne's CPU.
Here a read takes what the socket already delivered at once, and waits on one future with one
timer otherwise; a kept-alive connection is stale when the loop has seen its end or unexpected
bytes. httpcore's errors and timeouts mean what they meant before.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from typing import Any

import httpcore
import httpx

# Past this many unread bytes the socket stops reading until the client catches up.
_READ_HIGH_WATER = 256 * 1024


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _StreamProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.at_eof = False
        self.lost: BaseException | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.read_waiter: asyncio.Future | None = None
        self.drain_waiter: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _READ_HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.at_eof = True
        self._wake_reader()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.at_eof = True
        self.lost = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()

    def _wake_reader(self) -> None:
        waiter = self.read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def _wait(
    protocol: _StreamProtocol,
    slot: str,
    timeout: float | None,
    timeout_error: type[httpcore.TimeoutException],
) -> None:
    """Waits until the protocol wakes its `slot` waiter (`read_waiter` or `drain_waiter`);
    `timeout_error` after `timeout` seconds (None: no limit)."""
    waiter = asyncio.get_running_loop().create_future()
    setattr(protocol, slot, waiter)
    timer = None if timeout is None else waiter.get_loop().call_later(timeout, _expire, waiter)
    try:
        await waiter
    except TimeoutError:
        raise timeout_error() from None
    finally:
        if timer is not None:
            timer.cancel()
        setattr(protocol, slot, None)


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, protocol: _StreamProtocol) -> None:
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.buffer and not protocol.at_eof:
            await _wait(protocol, "read_waiter", timeout, httpcore.ReadTimeout)
        if protocol.buffer:
            if len(protocol.buffer) <= max_bytes:
                data = bytes(protocol.buffer)
                protocol.buffer.clear()
            else:
                data = bytes(protocol.buffer[:max_bytes])
                del protocol.buffer[:max_bytes]
            if protocol.reading_paused and len(protocol.buffer) <= _READ_HIGH_WATER // 4:
                protocol.reading_paused = False
                protocol.transport.resume_reading()
            return data
        if protocol.lost is not None:
            raise httpcore.ReadError(str(protocol.lost)) from protocol.lost
        return b""  # the server closed the connection

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if protocol.transport.is_closing():
            raise httpcore.WriteError("The connection is closed.")
        protocol.transport.write(buffer)
        if protocol.writing_paused:
            await _wait(protocol, "drain_waiter", timeout, httpcore.WriteTimeout)
            if protocol.lost is not None:
                raise httpcore.WriteError(str(protocol.lost)) from protocol.lost

    async def aclose(self) -> None:
        self._protocol.transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        protocol = self._protocol
        try:
            async with asyncio.timeout(timeout):
                transport = await asyncio.get_running_loop().start_tls(
                    protocol.transport, protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            protocol.transport.close()
            raise httpcore.ConnectTimeout() from None
        except (OSError, ssl.SSLError) as exc:
            protocol.transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        protocol.transport = transport
        return self

    def get_extra_info(self, info: str) -> Any:
        protocol = self._protocol
        if info == "is_readable":
            # Asked of an idle kept-alive connection: its end or bytes nobody asked for.
            return protocol.at_eof or bool(protocol.buffer)
        if info == "ssl_object":
            return protocol.transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return protocol.transport.get_extra_info("sockname")
        if info == "server_addr":
            return protocol.transport.get_extra_info("peername")
        if info == "socket":
            return protocol.transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local_addr = None if local_address is None else (local_address, 0)
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _StreamProtocol, host, port, local_addr=local_addr
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout() from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock = transport.get_extra_info("socket")
        # A request's head and body are separate writes: without this, Nagle holds the body.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(protocol)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await asyncio.get_running_loop().create_unix_connection(
                    _StreamProtocol, path
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout() from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return AsyncioStream(protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one TLS context of every transport in the process (httpx's default: the system's or
    certifi's CAs, `SSL_CERT_FILE` honoured). httpx makes one per transport unless given one,
    reading the CA bundle each time (40 ms here), and a RunBackend has 17 transports: its
    creation, at the first message a process relays, held the event loop for most of a
    second, every socket with it."""
    return httpx.create_ssl_context()


def asyncio_transport(*, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's own transport (its request handling, its error mapping) over these sockets.

    httpx has no setting for the network backend, so its connection pool is given this one
    before it opens a connection. Tested with httpx 0.28 and httpcore 1.0; should a later
    version lay itself out otherwise, the transport keeps its default sockets and the test of
    which sockets the run backend uses fails.
    """
    transport = httpx.AsyncHTTPTransport(limits=limits, verify=tls_context())
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.AsyncConnectionPool) and hasattr(pool, "_network_backend"):
        pool._network_backend = AsyncioBackend()
    return transport
