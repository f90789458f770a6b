# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Connections to NATS brokers over nats-py, for the node agent and the controller alike.

``connect`` gives a connection with a reconnect policy suited to a provisioning network (reconnect forever
once connected, but a deadline for the first connect); ``tls_context`` builds the client side of TLS.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from ..common.deps import MissingDependency, NatsError, nats, require
from .brokers import BrokerUrlError, parse_broker


class ConnectError(RuntimeError):
    """No connection to any of the brokers; the text names them and the last reason."""


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
    **kwargs: Any,
):
    """A nats-py connection with settings suited to a provisioning network."""
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
        return await asyncio.wait_for(nats.connect(**options), deadline)
    except asyncio.TimeoutError:
        reason = str(last_error[0]) or type(last_error[0]).__name__ if last_error else "no answer"
        raise ConnectError(
            "could not connect to {} within {:.0f}s: {}".format(", ".join(brokers), deadline, reason)
        ) from None
    except (NatsError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        if last_error and last_error[0] is not exc:  # "no servers available" alone does not say why
            reason += " (last error: %s)" % (str(last_error[0]) or type(last_error[0]).__name__)
        raise ConnectError("could not connect to {}: {}".format(", ".join(brokers), reason)) from None
