# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""THE broker URL rule: what a user may write for a broker, and the one URL it means.

An item is ``host``, ``host:port`` or ``scheme://host[:port]`` (an IPv6 address in brackets, ``[::1]:4222``;
an optional ``user[:password]@`` is kept). Schemes are ``nats`` (the default), ``tls``, ``ws`` and ``wss``;
the default port is 4222, 80 for ``ws`` and 443 for ``wss``. The result is ``scheme://host:port`` with
scheme and host lower-cased, once each, in the order given. The node agent (``--broker``,
``plugin.choria.middleware_hosts``), the modules and the inventory plugin all read broker URLs here.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, NamedTuple

DEFAULT_SCHEME = "nats"
DEFAULT_PORTS = {"nats": 4222, "tls": 4222, "ws": 80, "wss": 443}
BROKER_SCHEMES = tuple(DEFAULT_PORTS)

_HOSTNAME_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?$")
_ITEM_RE = re.compile(
    r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?"
    r"(?:(?P<userinfo>[^@/\s]*)@)?"
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.%]+)\]|(?P<host>[^:/\s\[\]@]+))"
    r"(?::(?P<port>[^/\s]*))?/?$"
)


class BrokerUrlError(ValueError):
    """A broker item that is not a usable URL; the text names the item."""


class Broker(NamedTuple):
    """One broker URL taken apart: ``host`` without brackets, ``port`` always set."""

    scheme: str
    host: str
    port: int
    userinfo: str = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        credentials = f"{self.userinfo}@" if self.userinfo else ""
        return f"{self.scheme}://{credentials}{host}:{self.port}"


def parse_broker(item: str) -> Broker:
    """One broker item as a :class:`Broker`; BrokerUrlError naming the item when it is not usable."""
    text = item.strip()
    match = _ITEM_RE.match(text)
    if not match:
        raise BrokerUrlError(f"broker {text!r} is not a URL like nats://host:4222 or host:port")
    scheme = (match.group("scheme") or DEFAULT_SCHEME).lower()
    if scheme not in DEFAULT_PORTS:
        raise BrokerUrlError(f"broker {text!r}: scheme must be one of {', '.join(BROKER_SCHEMES)}")
    if match.group("ipv6") is not None:
        try:
            host = str(ipaddress.IPv6Address(match.group("ipv6")))
        except ValueError:
            raise BrokerUrlError(f"broker {text!r}: {match.group('ipv6')!r} is not an IPv6 address") from None
    else:
        host = match.group("host").lower()
        if not _HOSTNAME_RE.match(host) or ".." in host:
            raise BrokerUrlError(f"broker {text!r} has no valid host name or address")
    port_text = match.group("port")
    if port_text is None or port_text == "":
        if port_text == "":
            raise BrokerUrlError(f"broker {text!r}: the port after ':' is missing")
        port = DEFAULT_PORTS[scheme]
    elif not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BrokerUrlError(f"broker {text!r}: port {port_text!r} is not a number from 1 to 65535")
    else:
        port = int(port_text)
    return Broker(scheme, host, port, match.group("userinfo") or "")


def normalize_brokers(value: Any, allow_empty: bool = False) -> list[str]:
    """Broker URLs from a comma-separated string or a list: ``scheme://host:port``, each once, in order.

    Empty items are skipped; no item at all raises BrokerUrlError unless ``allow_empty``.
    """
    if value is None:
        items: list = []
    elif isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = [part for entry in value for part in ([] if entry is None else str(entry).split(","))]
    else:
        raise BrokerUrlError(f"brokers must be a list of URLs like nats://host:4222, got {type(value).__name__}")
    urls: list[str] = []
    for item in items:
        if item.strip():
            url = parse_broker(item).url
            if url not in urls:
                urls.append(url)
    if not urls and not allow_empty:
        raise BrokerUrlError("brokers is empty: give at least one URL like nats://host:4222")
    return urls
