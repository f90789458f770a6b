"""Everything published on a broker, captured from a separate connection in its own thread: what a hostile
listener on the provisioning network sees (and could replay)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import connect


class BusCapture:
    """Every message on the broker (subject ``>``), from a separate connection in its own thread."""

    def __init__(self, url):
        self.url = url
        self.messages = []
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
                self.messages.append((msg.subject, bytes(msg.data)))

            await nc.subscribe(">", cb=keep)
            await nc.flush()
            self._ready.set()
            await self._stop.wait()
            await nc.flush()
            await nc.drain()

        asyncio.run(main())

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10), "bus capture did not connect"
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def layers(self):
        """Each message as sent, plus its base64-decoded transport payload (the secure message)."""
        for _subject, raw in self.messages:
            yield raw
            try:
                doc = json.loads(raw)
                if isinstance(doc, dict) and isinstance(doc.get("data"), str):
                    yield base64.b64decode(doc["data"])
            except ValueError:
                continue
