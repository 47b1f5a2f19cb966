"""The channel layers, with their per-message overhead trimmed.

`LocalChannelLayer`, the default, one-process layer: Channels' InMemoryChannelLayer walks
every channel and group to expire old messages on each send and receive, starts a task per
group member, deep-copies each message and builds a queue per receive: per relayed token, that
grew with the number of open sockets. This layer expires at most once a second, puts group
messages straight on the members' queues, copies messages shallowly (the chat's frames hold
only strings), and makes a queue only when one is missing. Its semantics are otherwise the same.

`PipelinedRedisPubSubChannelLayer`, the layer of several processes (REDIS_URL): channels_redis'
pub/sub layer, whose every publish waited for the one before it to be answered (a lock per
Redis connection, one round trip and one wakeup of the event loop each). Here the publishes made
while one round trip is out go together in the next, as one pipeline. They still leave in the
order they were made, and each caller still gets its own answer or error.
"""

from __future__ import annotations

import asyncio
import time

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer
from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from channels_redis.utils import _wrap_close, decode_hosts


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


class _PipelinedShard(RedisSingleShardConnection):
    """One Redis server's connection of a loop's layer, its publishes pipelined."""

    def __init__(self, host: dict, channel_layer: RedisPubSubLoopLayer) -> None:
        super().__init__(host, channel_layer)
        self._outbox: list[tuple[str, bytes, asyncio.Future]] = []
        self._sender: asyncio.Task | None = None

    async def publish(self, channel: str, message: bytes) -> None:
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._outbox.append((channel, message, answer))
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send_outbox())
        await answer

    async def _send_outbox(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                self._ensure_redis()
                pipeline = self._redis.pipeline(transaction=False)
                for channel, message, _ in batch:
                    pipeline.publish(channel, message)
                await pipeline.execute()
            except Exception as exc:
                for *_, answer in batch:
                    if not answer.done():
                        answer.set_exception(exc)
            else:
                for *_, answer in batch:
                    if not answer.done():
                        answer.set_result(None)

    async def flush(self) -> None:
        if self._sender is not None:
            # What was published before the flush still goes out (or fails) first.
            await asyncio.gather(self._sender, return_exceptions=True)
        await super().flush()


class _PipelinedLoopLayer(RedisPubSubLoopLayer):
    def __init__(self, hosts: list | None = None, **kwargs: object) -> None:
        super().__init__(hosts, **kwargs)
        self._shards = [_PipelinedShard(host, self) for host in decode_hosts(hosts)]


class PipelinedRedisPubSubChannelLayer(RedisPubSubChannelLayer):
    def _get_layer(self) -> RedisPubSubLoopLayer:
        # As RedisPubSubChannelLayer._get_layer, with the pipelined layer: one per event loop.
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _PipelinedLoopLayer(
                *self._args, **self._kwargs, channel_layer=self
            )
            _wrap_close(self, loop)
        return layer
