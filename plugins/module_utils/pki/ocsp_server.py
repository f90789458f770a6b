# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The OCSP responder over HTTP (RFC 6960 appendix A) and its command line; the ``broker`` role runs it::

    python3 -m zeroinit_broker.pki.ocsp_server --ca ca.pem --cert ocsp.pem --key ocsp-key.pem --crl crl.pem \\
        --listen 127.0.0.1:8889

``POST /`` with the DER request as the body, or ``GET /<URL-encoded base64 of the DER request>`` (what Go's
client sends while the request is short). Bodies and paths are bounded (:data:`MAX_OCSP_REQUEST_BYTES`); anything
else gets an HTTP error or an OCSP ``malformedRequest``, never a traceback. It listens on loopback by default:
the broker on the same host is its only client (the certificates' responder URL names that address).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import logging
import signal
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..common.deps import MissingDependency, require, serialization, x509
from .ocsp import DEFAULT_RESPONSE_VALIDITY, MAX_OCSP_REQUEST_BYTES, OcspResponder, log
from .x509 import PkiError

OCSP_RESPONSE_TYPE = "application/ocsp-response"
DEFAULT_OCSP_LISTEN = "127.0.0.1:8889"
# base64 of the largest request, URL-encoded (each character at most 3) behind the slash
MAX_OCSP_PATH = 1 + 3 * (4 * ((MAX_OCSP_REQUEST_BYTES + 2) // 3))


class OcspRequestHandler(BaseHTTPRequestHandler):
    """One HTTP exchange: a DER request in, a DER response out."""

    server_version = "zeroinit-ocsp"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if len(path) > MAX_OCSP_PATH:
            self.send_error(414, "request too long")
            return
        try:
            der = base64.b64decode(urllib.parse.unquote(path.lstrip("/")), validate=True)
        except (binascii.Error, ValueError):
            self.send_error(400, "the path is not a base64 OCSP request")
            return
        self.respond(der)

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.send_error(411, "Content-Length required")
            return
        if not 0 < length <= MAX_OCSP_REQUEST_BYTES:
            self.send_error(413, f"an OCSP request is at most {MAX_OCSP_REQUEST_BYTES} bytes")
            return
        self.respond(self.rfile.read(length))

    def respond(self, der: bytes) -> None:
        body, what = self.server.responder.answer(der)
        log.debug("%s: %s", self.client_address[0], what)
        self.send_response(200)
        self.send_header("Content-Type", OCSP_RESPONSE_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        log.debug("%s %s", self.client_address[0], format % args)


class OcspHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple, responder: OcspResponder):
        super().__init__(address, OcspRequestHandler)
        self.responder = responder


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {text!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def _load(path: str, what: str, loader):
    try:
        with open(path, "rb") as handle:
            return loader(handle.read())
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"{what} {path} cannot be used: {exc}") from None


def responder_from_args(args: argparse.Namespace) -> OcspResponder:
    ca = _load(args.ca, "--ca", x509.load_pem_x509_certificate)
    cert = _load(args.cert, "--cert", x509.load_pem_x509_certificate)
    key = _load(args.key, "--key", lambda data: serialization.load_pem_private_key(data, password=None))
    responder = OcspResponder(ca, cert, key, args.crl, args.validity)
    responder.refresh(force=True)
    return responder


def ocsp_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="zeroinit-ocsp", description="OCSP responder answering from the site CA's CRL (for nats-server)."
    )
    parser.add_argument("--ca", required=True, help="the CA certificate whose certificates are judged")
    parser.add_argument("--cert", required=True, help="the responder certificate (EKU OCSPSigning) issued by the CA")
    parser.add_argument("--key", required=True, help="the responder certificate's key (PEM, unencrypted, 0600)")
    parser.add_argument("--crl", required=True, help="the CA's CRL (PEM); read again when it changes")
    parser.add_argument("--listen", default=DEFAULT_OCSP_LISTEN, help=f"host:port (default {DEFAULT_OCSP_LISTEN})")
    parser.add_argument(
        "--validity",
        type=float,
        default=DEFAULT_RESPONSE_VALIDITY,
        help=f"seconds a response is valid (default {DEFAULT_RESPONSE_VALIDITY})",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser.parse_args(argv)


def serve_ocsp(argv: list[str] | None = None) -> int:
    args = ocsp_arguments(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        require("cryptography", "for the OCSP responder")
        address = parse_listen(args.listen)
        responder = responder_from_args(args)
        server = OcspHttpServer(address, responder)
    except (MissingDependency, PkiError, ValueError, OSError) as exc:
        sys.stderr.write(f"zeroinit-ocsp: {exc}\n")
        return 2

    def stop(_signum, _frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("answering OCSP for %s on %s:%d", responder.ca.subject.rfc4514_string(), *address)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(serve_ocsp())
