"""What crossed a real broker: a subscriber in a thread of its own keeps every message on a subject, with the time
it arrived, and decodes what tests look at (the secure payloads, Choria requests, and what must never cross the
bus, such as private keys).

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

from cryptography.hazmat.primitives import serialization

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

    @staticmethod
    def _layers_of(raw: bytes):
        """A message as sent, and its base64-decoded transport payload (the secure message)."""
        yield raw
        try:
            doc = json.loads(raw)
            if isinstance(doc, dict) and isinstance(doc.get("data"), str):
                yield base64.b64decode(doc["data"])
        except ValueError:
            return

    def layers(self):
        """Each message as sent, plus its base64-decoded transport payload (the secure message)."""
        for _received, _subject, raw in list(self.messages):
            yield from self._layers_of(raw)

    def key_material(self, private_pems) -> list:
        """The subjects of captured messages that carry any of these private keys (PEM text, DER, base64 of the
        DER, a line of the PEM) or any PEM private key at all, in any layer; [] when none does."""
        secrets = set()
        for pem in set(private_pems):
            key = serialization.load_pem_private_key(pem, password=None)
            der = key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            secrets.update([der, base64.b64encode(der)[:48]])
            secrets.update(line for line in pem.splitlines() if len(line) == 64)
        index = SubstringIndex(secrets)
        found = []
        for _received, subject, raw in list(self.messages):
            if any(b"PRIVATE KEY" in layer or index.found_in(layer) for layer in self._layers_of(raw)):
                found.append(subject)
        return found

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


class SubstringIndex:
    """Finds whether a text contains any of many needles (each at least WINDOW + STRIDE bytes) in time linear in the
    text: every needle occurrence covers a text offset that is a multiple of STRIDE, where one of the needle's first
    STRIDE windows starts, so the text is looked up only at those offsets."""

    WINDOW = 16
    STRIDE = 32

    def __init__(self, needles):
        self.windows: dict = {}
        for needle in needles:
            assert len(needle) >= self.WINDOW + self.STRIDE, f"needle of {len(needle)} bytes is too short"
            for offset in range(self.STRIDE):
                self.windows.setdefault(needle[offset : offset + self.WINDOW], []).append((needle, offset))

    def found_in(self, text: bytes) -> bool:
        for position in range(0, len(text) - self.WINDOW + 1, self.STRIDE):
            for needle, offset in self.windows.get(text[position : position + self.WINDOW], ()):
                start = position - offset
                if start >= 0 and text[start : start + len(needle)] == needle:
                    return True
        return False
