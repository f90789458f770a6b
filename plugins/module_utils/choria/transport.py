# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Connections to NATS brokers over nats-py, for the node agent and the controller alike.

``connect`` gives a connection with a reconnect policy suited to a provisioning network (reconnect forever
once connected, but a deadline for the first connect), optionally TLS (``tls_context`` builds the client side)
and a user and password. The connection comes back after every kind of disconnect, with its subscriptions:

* nats-py reconnects after a lost socket or a stale connection, but after an ``-ERR`` line from the server (which
  then closes the socket: a control line longer than 4 KiB, a slow consumer, an authorization revoked) it closes
  for good, and every node served on that connection stops answering. Here such an error reconnects as well.
* nats-py stops reading altogether when one delivered message cannot be turned into a ``Msg`` (a reply subject
  that is not UTF-8, malformed headers: anyone allowed to publish can send those), and logs a traceback: the
  connection stays up but deaf. Here that one message is dropped and counted (``undeliverable``), and reading
  goes on.
* nats-py answers each PONG by setting the result of the oldest ``flush``'s future, even when that flush timed out
  or was cancelled (a drain at shutdown, a flush with a deadline): ``InvalidStateError`` in the read loop, a
  traceback, and the connection stops reading. Here a PONG still takes its own (oldest) future, and sets it only if
  nobody has given up on it.

These are overrides of three of nats-py's internal methods; the tests check them (against a real nats-server for
the first two), so a nats-py that changes them is noticed.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from ..common.deps import MissingDependency, NatsError, nats, require
from .brokers import BrokerUrlError, parse_broker


class ConnectError(RuntimeError):
    """No connection to any of the brokers; the text names them and the last reason."""


class UndeliverableMessage(Exception):
    """A message nats-py could not turn into a ``Msg``; it was dropped (passed to the connection's error callback)."""


_CLIENT_CLASSES: list = []


def _client_class():
    """nats-py's client with the two changes in the module docstring (made once, after nats is known to import)."""
    if _CLIENT_CLASSES:
        return _CLIENT_CLASSES[0]

    class HardenedClient(nats.NATS):
        undeliverable = 0

        async def _process_msg(self, *args, **kwargs):
            try:
                await super()._process_msg(*args, **kwargs)
            except Exception as exc:  # one undecodable message must not stop the read loop
                self.undeliverable += 1
                await self._error_cb(UndeliverableMessage(f"dropped an undeliverable message: {exc!r}"[:300]))

        async def _process_err(self, err_msg: str) -> None:
            lowered = err_msg.lower()
            if (
                self.is_connecting
                or not self.options.get("allow_reconnect")
                or "permissions violation" in lowered  # the server keeps the connection open
                or "stale connection" in lowered  # nats-py reconnects on its own
            ):
                await super()._process_err(err_msg)
                return
            error = NatsError(f"nats: {err_msg.strip()}")
            self._err = error
            await self._error_cb(error)
            await self._process_op_err(error)

        async def _process_pong(self) -> None:
            if self._pongs:
                future = self._pongs.pop(0)  # this PONG answers the oldest PING, whether or not it is still awaited
                if not future.done():
                    future.set_result(True)
                self._pongs_received += 1
                self._pings_outstanding = 0

    _CLIENT_CLASSES.append(HardenedClient)
    return HardenedClient


def tls_context(ca: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext | None:
    """A client TLS context: verify the broker against ``ca``; present ``cert``/``key`` when given."""
    if not (ca or cert):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


async def connect(
    brokers: list[str],
    name: str,
    tls: ssl.SSLContext | None = None,
    connect_timeout: float = 5.0,
    reconnect: bool = True,
    user: str | None = None,
    password: str | None = None,
    **kwargs: Any,
):
    """A nats-py connection with settings suited to a provisioning network (see the module docstring)."""
    try:
        require("nats")
    except MissingDependency as exc:
        raise ConnectError(str(exc)) from None
    options: dict = dict(
        servers=list(brokers),
        name=name,
        connect_timeout=connect_timeout,
        allow_reconnect=reconnect,
        max_reconnect_attempts=-1 if reconnect else 0,
        reconnect_time_wait=0.5,
        pending_size=64 * 1024 * 1024,
    )
    if user or password:
        options["user"], options["password"] = user or "", password or ""
    if tls is not None:
        options["tls"] = tls
        if brokers:
            try:
                options["tls_hostname"] = parse_broker(brokers[0]).host
            except BrokerUrlError:
                pass  # nats-py refuses the URL itself, with its own message

    last_error: list = []

    async def _quiet(exc):  # reconnects are normal on a provisioning network; don't spam stderr
        last_error[:] = [exc]

    options.setdefault("error_cb", _quiet)
    options.update(kwargs)
    # nats-py retries an unreachable server forever during the first connect (max_reconnect_attempts <= 0
    # never gives a server up), so the first connection gets a deadline of its own.
    deadline = connect_timeout * max(1, len(options["servers"])) + 1.0
    try:
        client = _client_class()()
        await asyncio.wait_for(client.connect(**options), deadline)
        return client
    except asyncio.TimeoutError:
        reason = str(last_error[0]) or type(last_error[0]).__name__ if last_error else "no answer"
        raise ConnectError(f"could not connect to {', '.join(brokers)} within {deadline:.0f}s: {reason}") from None
    except (NatsError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        if last_error and last_error[0] is not exc:  # "no servers available" alone does not say why
            reason += " (last error: %s)" % (str(last_error[0]) or type(last_error[0]).__name__)
        raise ConnectError(f"could not connect to {', '.join(brokers)}: {reason}") from None
