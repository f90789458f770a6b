"""What crossed a real broker: a subscriber in a thread of its own keeps every message on a subject, with the time
it arrived, and decodes what tests look at (the secure payloads, Choria requests).

::

    with BusCapture(broker.url) as bus:                              # everything (subject ``>``)
        ...
    with BusCapture(url, "provisioning.node.>") as bus:
        for seen in bus.requests(): seen.identity, seen.senderid, seen.action, seen.received
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from typing import NamedTuple

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import ProtocolError, decode_request
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import connect


class SeenRequest(NamedTuple):
    """A Choria request to one node as captured: when it arrived (time.time()), where, from whom, what."""

    received: float
    identity: str
    senderid: str
    callerid: str
    agent: str
    action: str
    time: int


class BusCapture:
    """Every message on ``subjects`` (default all), from a separate connection in its own thread."""

    def __init__(self, url: str, *subjects: str):
        self.url = url
        self.subjects = subjects or (">",)
        self.messages: list = []  # (time.time(), subject, bytes)
        self._ready = threading.Event()
        self._stop = None
        self._loop = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            nc = await connect([self.url], name="bus-capture")

            async def keep(msg):
                self.messages.append((time.time(), msg.subject, bytes(msg.data)))

            for subject in self.subjects:
                await nc.subscribe(subject, cb=keep)
            await nc.flush()
            self._ready.set()
            await self._stop.wait()
            await nc.flush()
            await nc.drain()

        asyncio.run(main())

    def __enter__(self) -> BusCapture:
        self._thread.start()
        assert self._ready.wait(10), "bus capture did not connect"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def layers(self):
        """Each message as sent, plus its base64-decoded transport payload (the secure message)."""
        for _received, _subject, raw in list(self.messages):
            yield raw
            try:
                doc = json.loads(raw)
                if isinstance(doc, dict) and isinstance(doc.get("data"), str):
                    yield base64.b64decode(doc["data"])
            except ValueError:
                continue

    def requests(self) -> list:
        """The node-directed Choria requests captured (``<collective>.node.<identity>``), oldest first."""
        seen = []
        for received, subject, raw in list(self.messages):
            parts = subject.split(".", 2)
            if len(parts) != 3 or parts[1] != "node":
                continue
            try:
                request = decode_request(raw)
            except ProtocolError:
                continue
            action = request.action if isinstance(request.body, dict) else str(request.body)
            seen.append(
                SeenRequest(
                    received,
                    parts[2],
                    request.senderid,
                    request.callerid,
                    request.agent,
                    action,
                    request.time,
                )
            )
        return seen

    def first(self, subject: str) -> float:
        """When the first message on ``subject`` arrived (inf when none did)."""
        return min((received for received, seen, _raw in list(self.messages) if seen == subject), default=float("inf"))
