# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Prometheus statistics of the provisioner service, and the HTTP listener serving them with ``/healthz``.

Choria's provisioner exports 15 series (its ``hosts/stats.go``, ``host/stats.go``, ``config/stats.go``); they are
here with the same names, types, labels and help strings (typo included), so dashboards and alerts written for
Choria work unchanged. Our own series start with ``zeroinit_provisioner_``. Every series carries ``site``.

The registry is a private ``prometheus_client.CollectorRegistry``, never the process-global one. The text is
rendered as Choria's Go client writes it: a counter's sample has the counter's own name (prometheus_client's
exposition would add ``_total`` and a ``_created`` series, so the names would no longer be Choria's).
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from ...common.deps import prometheus_client, require
from .claims import ClaimObserver
from .queue import DISCOVERY, QueueObserver

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
log = logging.getLogger("zeroinit.provisioner.metrics")

# (name, type, extra labels, help): Choria's, exactly.
CHORIA_SERIES = (
    ("choria_provisioner_discovered", "counter", (), "How many nodes were found through discovery"),
    (
        "choria_provisioner_event_discovered",
        "counter",
        (),
        "How many nodes were found through receiving an event about them",
    ),
    ("choria_provisioner_discover_cycles", "counter", (), "How many discovery cycles were ran"),
    ("choria_provisioner_discovery_errors", "counter", (), "How many discovery related errors were encountered"),
    ("choria_provisioner_provision_errors", "counter", (), "How many provision related errors were encountered"),
    ("choria_provisioner_busy_workers", "gauge", (), "How many workers are busy provisioning nodes"),
    ("choria_provisioner_provisioned", "counter", (), "How many nodes were successfully provisioned"),
    (
        "choria_provisioner_work_queue_entries",
        "gauge",
        (),
        "Number of nodes on the work queue waiting to be provisioned",
    ),
    ("choria_provisioner_waiting_nodes", "gauge", (), "The number of nodes currently waiting to be provisioned"),
    ("choria_provisioner_rpc_time", "summary", ("rpc",), "How long it took to perform RPC requests"),
    ("choria_provisioner_helper_time", "summary", (), "How long it took to run the helper"),
    ("choria_provisioner_rpc_errors", "counter", ("rpc",), "How many rpc related errors were encountered"),
    ("choria_provisioner_helper_errors", "counter", (), "How many helper related errors were encountered"),
    (
        "choria_provisioner_helper_shutdown_requests",
        "counter",
        (),
        "Host many times the helper asked for a node to be shutdown and it succeeded",
    ),
    ("choria_provisioner_paused", "gauge", (), "Indicates if the provisioner is paused"),
)

OWN_SERIES = (
    ("zeroinit_provisioner_claims_held", "gauge", (), "How many node claims this instance holds"),
    (
        "zeroinit_provisioner_takeovers",
        "counter",
        (),
        "How many nodes this instance took over from an instance that stopped renewing its claim",
    ),
    ("zeroinit_provisioner_claims_lost", "counter", (), "How many claims this instance lost before it finished"),
    (
        "zeroinit_provisioner_deferred_nodes",
        "gauge",
        (),
        "The number of nodes waiting for their next attempt after a defer or an error",
    ),
    ("zeroinit_provisioner_deferred", "counter", (), "How many times the helper or signer deferred a node"),
    ("zeroinit_provisioner_dropped_nodes", "counter", (), "How many nodes were dropped after their last attempt"),
    (
        "zeroinit_provisioner_evicted_nodes",
        "counter",
        (),
        "How many queued nodes were evicted because they were not seen for three intervals",
    ),
    ("zeroinit_provisioner_queue_rejected", "counter", (), "How many nodes were refused because the queue was full"),
    ("zeroinit_provisioner_node_time", "summary", (), "How long it took to provision a node, claim to outcome"),
    (
        "zeroinit_provisioner_control_rejected",
        "counter",
        (),
        "How many control messages were refused (bad signature, too old, replayed, malformed)",
    ),
    (
        "zeroinit_provisioner_renewals",
        "counter",
        ("outcome",),
        "How many certificate renewal requests were answered, by outcome (renewed, or why it was refused)",
    ),
    # Not "instance": Prometheus gives that label to the scrape target and would rename ours exported_instance.
    (
        "zeroinit_provisioner_info",
        "gauge",
        ("provisioner", "mode"),
        "This instance: 1, labelled with its name and mode",
    ),
)


class ServiceMetrics:
    """All series of one instance, each already labelled with the site (``metrics.provisioned.inc()``)."""

    def __init__(self, site: str):
        require("prometheus_client", "for the provisioner's metrics")
        self.site = site
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self._families: dict = {}
        for name, kind, extra, help_text in CHORIA_SERIES + OWN_SERIES:
            cls = {
                "counter": prometheus_client.Counter,
                "gauge": prometheus_client.Gauge,
                "summary": prometheus_client.Summary,
            }[kind]
            self._families[name] = cls(name, help_text, ("site", *extra), registry=self.registry)
        short = {}
        for name, _kind, extra, _help in CHORIA_SERIES + OWN_SERIES:
            if not extra:
                short[name] = self._families[name].labels(site)
        # Choria initialises these to 0 at start; every unlabelled series is shown from the start here.
        self.discovered = short["choria_provisioner_discovered"]
        self.event_discovered = short["choria_provisioner_event_discovered"]
        self.discover_cycles = short["choria_provisioner_discover_cycles"]
        self.discovery_errors = short["choria_provisioner_discovery_errors"]
        self.provision_errors = short["choria_provisioner_provision_errors"]
        self.busy_workers = short["choria_provisioner_busy_workers"]
        self.provisioned = short["choria_provisioner_provisioned"]
        self.work_queue_entries = short["choria_provisioner_work_queue_entries"]
        self.waiting_nodes = short["choria_provisioner_waiting_nodes"]
        self.helper_time = short["choria_provisioner_helper_time"]
        self.helper_errors = short["choria_provisioner_helper_errors"]
        self.helper_shutdown_requests = short["choria_provisioner_helper_shutdown_requests"]
        self.paused = short["choria_provisioner_paused"]
        self.claims_held = short["zeroinit_provisioner_claims_held"]
        self.takeovers = short["zeroinit_provisioner_takeovers"]
        self.claims_lost = short["zeroinit_provisioner_claims_lost"]
        self.deferred_nodes = short["zeroinit_provisioner_deferred_nodes"]
        self.deferred = short["zeroinit_provisioner_deferred"]
        self.dropped_nodes = short["zeroinit_provisioner_dropped_nodes"]
        self.evicted_nodes = short["zeroinit_provisioner_evicted_nodes"]
        self.queue_rejected = short["zeroinit_provisioner_queue_rejected"]
        self.node_time = short["zeroinit_provisioner_node_time"]
        self.control_rejected = short["zeroinit_provisioner_control_rejected"]

    def rpc_time(self, rpc: str) -> Any:
        """The RPC latency summary of one ``agent#action`` (e.g. ``choria_provision#gencsr``)."""
        return self._families["choria_provisioner_rpc_time"].labels(self.site, rpc)

    def rpc_errors(self, rpc: str) -> Any:
        return self._families["choria_provisioner_rpc_errors"].labels(self.site, rpc)

    def renewal_answered(self, answer: Any) -> None:
        """Count one renewal answer by its outcome code (a short tag from a fixed set, never the sender's text)."""
        self._families["zeroinit_provisioner_renewals"].labels(self.site, answer.code or "error").inc()

    def set_paused(self, paused: bool) -> None:
        self.paused.set(1 if paused else 0)

    def set_instance(self, instance: str, mode: str) -> None:
        """Label this instance's name and mode (``cluster`` with JetStream claims, ``single`` without)."""
        family = self._families["zeroinit_provisioner_info"]
        family.clear()
        family.labels(self.site, instance, mode).set(1)

    def track(self, queue: Any = None, claims: Any = None) -> None:
        """Read the queue's and the claims' sizes at each scrape instead of copying them on every change."""
        if queue is not None:
            self.busy_workers.set_function(lambda: queue.busy)
            self.work_queue_entries.set_function(lambda: queue.waiting + queue.deferred)
            self.waiting_nodes.set_function(lambda: len(queue))
            self.deferred_nodes.set_function(lambda: queue.deferred)
        if claims is not None:
            self.claims_held.set_function(lambda: claims.held)

    def queue_observer(self) -> QueueObserver:
        return _QueueMetrics(self)

    def claim_observer(self) -> ClaimObserver:
        return _ClaimMetrics(self)

    def render(self) -> bytes:
        return render_text(self.registry)

    def names(self) -> set:
        """Every sample name the registry exports (summaries as ``_sum`` and ``_count``), as rendered."""
        exported = set()
        for name, kind, _extra, _help in CHORIA_SERIES + OWN_SERIES:
            exported.update((f"{name}_sum", f"{name}_count") if kind == "summary" else (name,))
        return exported


class _QueueMetrics(QueueObserver):
    def __init__(self, metrics: ServiceMetrics):
        self.metrics = metrics

    def entered(self, identity: str, source: str) -> None:
        (self.metrics.discovered if source == DISCOVERY else self.metrics.event_discovered).inc()

    def rejected(self, identity: str, source: str) -> None:
        self.metrics.queue_rejected.inc()

    def evicted(self, identity: str, idle: float) -> None:
        self.metrics.evicted_nodes.inc()

    def dropped(self, identity: str, reason: str, attempts: int) -> None:
        self.metrics.dropped_nodes.inc()


class _ClaimMetrics(ClaimObserver):
    def __init__(self, metrics: ServiceMetrics):
        self.metrics = metrics

    def taken_over(self, identity: str, previous_holder: str) -> None:
        self.metrics.takeovers.inc()

    def lost(self, identity: str, reason: str) -> None:
        self.metrics.claims_lost.inc()


def render_text(registry: Any) -> bytes:
    """Prometheus text format 0.0.4 as Go's client writes it: counters keep their names, no ``_created``."""
    lines = []
    for family in registry.collect():
        name = family.name
        lines.append(f"# HELP {name} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {name} {family.type if family.type != 'unknown' else 'untyped'}")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            sample_name = name if family.type == "counter" and sample.name == f"{name}_total" else sample.name
            labels = ",".join(f'{key}="{_escape_label(value)}"' for key, value in sorted(sample.labels.items()))
            labels = f"{{{labels}}}" if labels else ""
            lines.append(f"{sample_name}{labels} {prometheus_client.utils.floatToGoString(sample.value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(text: str) -> str:
    return str(text).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class LivenessCheck:
    """``/healthz``: healthy while the event loop has ticked within ``max_silence`` seconds and the broker
    connection is up. The loop calls ``beat()``; the HTTP thread calls ``problem()``."""

    def __init__(
        self, connected: Callable[[], bool], max_silence: float = 5.0, clock: Optional[Callable[[], float]] = None
    ):
        self.connected = connected
        self.max_silence = max_silence
        self._clock = clock or time.monotonic
        self._last_beat = self._clock()

    def beat(self) -> None:
        self._last_beat = self._clock()

    def problem(self) -> str:
        """ "" when healthy, otherwise why not."""
        silence = self._clock() - self._last_beat
        if silence > self.max_silence:
            return f"the event loop has not ticked for {silence:.1f}s"
        try:
            if not self.connected():
                return "not connected to a broker"
        except Exception as exc:  # a health probe must answer, whatever the check raises
            return f"connection state unknown: {exc}"
        return ""


class MonitorServer:
    """``/metrics`` and ``/healthz`` over HTTP, in a daemon thread; ``port`` 0 picks a free one."""

    def __init__(self, address: str, port: int, render: Callable[[], bytes], problem: Callable[[], str]):
        handler = type(
            "MonitorHandler", (_MonitorHandler,), {"render": staticmethod(render), "problem": staticmethod(problem)}
        )
        self.httpd = ThreadingHTTPServer((address, port), handler)
        self.httpd.daemon_threads = True
        self.address, self.port = self.httpd.server_address[:2]
        self._thread: Optional[threading.Thread] = None

    def start(self) -> MonitorServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="zeroinit-monitor", daemon=True)
        self._thread.start()
        log.info("serving /metrics and /healthz on http://%s:%d", self.address, self.port)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self.httpd.server_close()


class _MonitorHandler(BaseHTTPRequestHandler):
    timeout = 10  # a slow client cannot hold a thread for long
    server_version = "zeroinit-provisioner"
    sys_version = ""
    render: Callable[[], bytes]
    problem: Callable[[], str]

    def do_GET(self) -> None:  # the name http.server calls
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, self.render(), CONTENT_TYPE)
        elif path == "/healthz":
            problem = self.problem()
            self._answer(503 if problem else 200, f"{problem or 'ok'}\n".encode(), "text/plain; charset=utf-8")
        else:
            self._answer(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
