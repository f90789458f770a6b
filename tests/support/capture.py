"""Every message on a broker, captured from a separate connection in its own thread (to look for what must never
cross the bus, such as private keys)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

from cryptography.hazmat.primitives import serialization

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

    def key_material(self, private_pems) -> list:
        """The subjects of captured messages that carry any of these private keys (PEM text, DER, base64 of the
        DER, a line of the PEM) or any PEM private key at all, in any layer; [] when none does."""
        secrets = []
        for pem in private_pems:
            key = serialization.load_pem_private_key(pem, password=None)
            der = key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            secrets += [der, base64.b64encode(der)[:48]]
            secrets += [line for line in pem.splitlines() if len(line) == 64]
        found = []
        for subject, raw in self.messages:
            for layer in self._layers_of(raw):
                if b"PRIVATE KEY" in layer or any(secret in layer for secret in secrets):
                    found.append(subject)
                    break
        return found
