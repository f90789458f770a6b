"""The nats-py client the agent and the controller connect with: what it changes in nats-py, without a network."""

from __future__ import annotations

import asyncio

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import transport


def test_a_pong_for_a_flush_that_gave_up_is_taken_in_order_and_breaks_nothing():
    """A flush that timed out or was cancelled leaves its future first in line: its PONG is taken without setting
    it (nats-py raised InvalidStateError in its read loop there, and stopped reading), and the next PONG still
    answers the next flush."""

    async def go():
        client = transport._client_class()()
        gave_up, waiting, later = (asyncio.get_running_loop().create_future() for _future in range(3))
        gave_up.cancel()
        client._pongs = [gave_up, waiting, later]
        await client._process_pong()
        await client._process_pong()
        return gave_up, waiting, later, list(client._pongs), client._pongs_received

    gave_up, waiting, later, left, received = asyncio.run(go())
    assert gave_up.cancelled() and waiting.result() is True and not later.done()
    assert left == [later] and received == 2
