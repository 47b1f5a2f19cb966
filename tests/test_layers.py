"""The channel layers of runs.layers, the Redis one against the machine's Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from agent.server import free_port
from runs.layers import LocalChannelLayer, PipelinedRedisPubSubChannelLayer
from tests.live import REDIS, redis_unreachable

needs_redis = pytest.mark.skipif(bool(redis_unreachable()), reason=redis_unreachable())


def redis_layer(url: str = REDIS) -> PipelinedRedisPubSubChannelLayer:
    return PipelinedRedisPubSubChannelLayer(hosts=[url], prefix=f"test-{uuid.uuid4().hex}")


async def members_receive(layer, channels: list[str], count: int) -> list[list[dict]]:
    async def take(channel: str) -> list[dict]:
        return [await asyncio.wait_for(layer.receive(channel), timeout=5) for _ in range(count)]

    return await asyncio.gather(*(take(channel) for channel in channels))


@needs_redis
async def test_redis_group_sends_made_together_reach_every_member_in_order_in_few_round_trips(
    monkeypatch,
):
    writes = 0
    send_packed_command = AbstractConnection.send_packed_command

    async def counted(self, *args, **kwargs):
        nonlocal writes
        writes += 1
        return await send_packed_command(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    layer = redis_layer()
    try:
        members = [await layer.new_channel() for _ in range(2)]
        for member in members:
            await layer.group_add("chat", member)
        await layer.group_send("chat", {"n": 0})  # the publishing connection opened
        writes = 0
        # As a busy relay's frames: many runs publish in the same turn of the event loop.
        await asyncio.gather(*(layer.group_send("chat", {"n": n}) for n in range(1, 201)))
        writes_together = writes
        received = await members_receive(layer, members, 201)
        # And one at a time: each waits for its answer before the next goes.
        for n in range(201, 211):
            await layer.group_send("chat", {"n": n})
        received_after = await members_receive(layer, members, 10)
    finally:
        await layer.flush()
    for got, got_after in zip(received, received_after, strict=True):
        assert [message["n"] for message in got + got_after] == list(range(211))
    assert writes_together <= 3, writes_together  # channels_redis alone: 200


@needs_redis
async def test_a_redis_send_to_one_channel_arrives():
    layer = redis_layer()
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "chat.frame", "text": "hello"})
        assert await asyncio.wait_for(layer.receive(channel), timeout=5) == {
            "type": "chat.frame",
            "text": "hello",
        }
    finally:
        await layer.flush()


async def test_every_sender_to_an_unreachable_redis_gets_the_error_instead_of_waiting():
    layer = redis_layer(f"redis://127.0.0.1:{free_port()}")
    results = await asyncio.wait_for(
        asyncio.gather(
            *(layer.group_send("chat", {"n": n}) for n in range(5)), return_exceptions=True
        ),
        timeout=20,
    )
    assert all(isinstance(result, RedisConnectionError) for result in results), results
    with pytest.raises(RedisConnectionError):  # and the next send tries again
        await asyncio.wait_for(layer.group_send("chat", {"n": 5}), timeout=20)


async def test_the_local_layer_delivers_a_group_send_to_each_member_once_in_order():
    layer = LocalChannelLayer()
    members = [await layer.new_channel() for _ in range(3)]
    for member in members:
        await layer.group_add("chat", member)
    await layer.group_discard("chat", members[2])
    for n in range(5):
        await layer.group_send("chat", {"n": n})
    received = await members_receive(layer, members[:2], 5)
    assert [[message["n"] for message in got] for got in received] == [list(range(5))] * 2
    assert layer.channels.get(members[2]) is None  # nothing queued for the one that left
