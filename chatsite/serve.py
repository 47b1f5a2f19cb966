"""daphne, as `make run` and the deployment docs start it: `python -m chatsite.serve ARGS`.

The arguments are daphne's own. It runs on uvloop, a faster event loop, skips autobahn's
per-frame formatting of debug lines nobody logs, and writes to a socket at once when nothing is
waiting to go out ahead. One behaviour its command line cannot set:
when a client breaks the rules (a message over `--websocket-max-message-size`, say),
autobahn's default is to drop the TCP connection without a word. Here it sends the close frame
with the reason's code first, so the client learns why (1009 for a message too big), as
protocol v1 promises.
"""

from __future__ import annotations

import asyncio

import uvloop

# daphne makes its event loop when daphne.server is imported: choose uvloop before that.
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

import daphne.server  # noqa: E402, F401  (for that side effect, before the rest of daphne)
from autobahn.websocket import protocol as autobahn_protocol  # noqa: E402
from daphne import ws_protocol  # noqa: E402
from daphne.cli import CommandLineInterface  # noqa: E402
from twisted.internet import tcp  # noqa: E402


def websocket_failures_close_cleanly() -> None:
    factory = ws_protocol.WebSocketFactory
    original = factory.setProtocolOptions
    if getattr(original, "closes_cleanly", False):
        return

    def set_protocol_options(self, *args, **kwargs):
        kwargs.setdefault("failByDrop", False)
        return original(self, *args, **kwargs)

    set_protocol_options.closes_cleanly = True
    factory.setProtocolOptions = set_protocol_options


def websocket_sends_skip_debug_formatting() -> None:
    """autobahn builds the arguments of a debug line for every frame it sends (the function's
    name and the values, coloured by click) whether or not debug logging is on: 2 % of daphne's
    CPU at 100 chats, one frame a token. Plain values keep those lines readable when it is on."""
    autobahn_protocol.hltype = lambda obj: getattr(obj, "__qualname__", "?")
    autobahn_protocol.hlval = lambda value, color="white", bold=True: value


def socket_writes_go_out_at_once() -> None:
    """Twisted buffers every write and sends it once the event loop finds the socket writable:
    per websocket frame, a writer registered and removed again and a call through Twisted's
    logging context, about 3 % of daphne's CPU at 100 chats with one frame a token. When nothing
    is waiting to go out, the write is tried on the spot; what the socket does not take, and
    any error, goes on through Twisted's own buffered path, so order and failures are as before.
    TLS connections keep Twisted's path.
    """
    buffered_write = tcp.Connection.write
    if getattr(buffered_write, "goes_out_at_once", False):
        return

    def write(self: tcp.Connection, data: bytes) -> None:
        if (
            type(data) is bytes
            and data
            and not self.TLS
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and not self._tempDataLen
            and self.offset == len(self.dataBuffer)
        ):
            sent = self.writeSomeData(data)
            if type(sent) is int and sent > 0:
                if sent == len(data):
                    return
                data = data[sent:]
        buffered_write(self, data)

    write.goes_out_at_once = True
    tcp.Connection.write = write


def main() -> None:
    websocket_failures_close_cleanly()
    websocket_sends_skip_debug_formatting()
    socket_writes_go_out_at_once()
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
