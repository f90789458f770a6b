# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The network a member elects on: the default route's interface and an interface's IPv4 address (Linux)."""

from __future__ import annotations

import fcntl
import socket
import struct

from .outcome import ElectionError

_SIOCGIFADDR = 0x8915


def parse_route_table(text: str) -> str | None:
    """The interface of the default route in /proc/net/route content (lowest metric), or None."""
    best = None
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, destination, flags, metric, mask = fields[0], fields[1], int(fields[3], 16), int(fields[6]), fields[7]
        default_route = destination == "00000000" and mask == "00000000" and flags & 0x1  # RTF_UP
        if default_route and (best is None or metric < best[0]):
            best = (metric, iface)
    return best[1] if best else None


def default_interface(route_file: str = "/proc/net/route") -> str:
    with open(route_file) as handle:
        iface = parse_route_table(handle.read())
    if not iface:
        raise ElectionError(f"no default route in {route_file}: set interface")
    return iface


def interface_address(iface: str) -> str:
    """The (primary) IPv4 address of ``iface``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", iface.encode()[:15]))
    except OSError as exc:
        raise ElectionError(f"interface {iface} has no IPv4 address ({exc.strerror or exc})") from exc
    finally:
        sock.close()
    return socket.inet_ntoa(packed[20:24])
