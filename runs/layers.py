"""The default, one-process channel layer, with its per-message overhead trimmed.

Channels' InMemoryChannelLayer walks every channel and group to expire old messages on each
send and receive, starts a task per group member, deep-copies each message and builds a queue
per receive: per relayed token, that grew with the number of open sockets. This layer expires
at most once a second, puts group messages straight on the members' queues, copies messages
shallowly (the chat's frames hold only strings), and makes a queue only when one is
missing. Its semantics are otherwise the same.
"""

from __future__ import annotations

import asyncio
import time

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer


class LocalChannelLayer(InMemoryChannelLayer):
    _next_clean = 0.0

    def _clean_expired(self) -> None:
        now = time.time()
        if now < self._next_clean:
            return
        self._next_clean = now + 1.0
        super()._clean_expired()

    def _queue(self, channel: str) -> asyncio.Queue:
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        return queue

    async def send(self, channel: str, message: dict) -> None:
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        try:
            self._queue(channel).put_nowait((time.time() + self.expiry, dict(message)))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def receive(self, channel: str) -> dict:
        # As InMemoryChannelLayer.receive, without building a Queue to throw away per message.
        self.require_valid_channel_name(channel)
        self._clean_expired()
        queue = self._queue(channel)
        try:
            _, message = await queue.get()
        finally:
            if queue.empty():
                self.channels.pop(channel, None)
        return message

    async def group_send(self, group: str, message: dict) -> None:
        self.group_send_nowait(group, message)

    def group_send_nowait(self, group: str, message: dict) -> None:
        """group_send without a suspension point: the relay publishes deltas from a callback."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        expires = time.time() + self.expiry
        for channel in list(self.groups.get(group, ())):
            try:
                self._queue(channel).put_nowait((expires, dict(message)))
            except asyncio.QueueFull:
                pass  # as in channels: a full member does not hold up the others
