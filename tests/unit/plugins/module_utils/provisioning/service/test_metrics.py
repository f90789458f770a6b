"""The service's Prometheus series: Choria's 15 exactly (names, types, help, labels), ours, and the listener."""

import socket
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service import metrics as sm
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service.queue import WorkQueue

# Choria's provisioner (hosts/stats.go, host/stats.go, config/stats.go): name, type, labels, help.
CHORIA = {
    "choria_provisioner_discovered": ("counter", {"site"}, "How many nodes were found through discovery"),
    "choria_provisioner_event_discovered": (
        "counter",
        {"site"},
        "How many nodes were found through receiving an event about them",
    ),
    "choria_provisioner_discover_cycles": ("counter", {"site"}, "How many discovery cycles were ran"),
    "choria_provisioner_discovery_errors": ("counter", {"site"}, "How many discovery related errors were encountered"),
    "choria_provisioner_provision_errors": ("counter", {"site"}, "How many provision related errors were encountered"),
    "choria_provisioner_busy_workers": ("gauge", {"site"}, "How many workers are busy provisioning nodes"),
    "choria_provisioner_provisioned": ("counter", {"site"}, "How many nodes were successfully provisioned"),
    "choria_provisioner_work_queue_entries": (
        "gauge",
        {"site"},
        "Number of nodes on the work queue waiting to be provisioned",
    ),
    "choria_provisioner_waiting_nodes": ("gauge", {"site"}, "The number of nodes currently waiting to be provisioned"),
    "choria_provisioner_rpc_time": ("summary", {"site", "rpc"}, "How long it took to perform RPC requests"),
    "choria_provisioner_helper_time": ("summary", {"site"}, "How long it took to run the helper"),
    "choria_provisioner_rpc_errors": ("counter", {"site", "rpc"}, "How many rpc related errors were encountered"),
    "choria_provisioner_helper_errors": ("counter", {"site"}, "How many helper related errors were encountered"),
    "choria_provisioner_helper_shutdown_requests": (
        "counter",
        {"site"},
        "Host many times the helper asked for a node to be shutdown and it succeeded",
    ),
    "choria_provisioner_paused": ("gauge", {"site"}, "Indicates if the provisioner is paused"),
}


def families(metrics):
    return {family.name: family for family in text_string_to_metric_families(metrics.render().decode())}


def used(metrics):
    metrics.rpc_time("choria_provision#gencsr").observe(0.25)
    metrics.rpc_errors("choria_provision#configure").inc()
    metrics.helper_time.observe(1.5)
    metrics.provisioned.inc(3)
    metrics.set_paused(True)
    metrics.set_instance("prov-a", "cluster")
    metrics.renewal_answered(SimpleNamespace(code="renewed"))
    return metrics


def test_choria_series_exact_names_types_help_and_labels():
    parsed = families(used(sm.ServiceMetrics("dc1")))
    assert len(CHORIA) == 15
    for name, (kind, labels, help_text) in CHORIA.items():
        family = parsed[name]
        assert family.type == kind, name
        assert family.documentation == help_text, name
        assert family.samples, f"{name} is exported from the start"
        for sample in family.samples:
            assert set(sample.labels) == labels, (name, sample)
            assert sample.labels["site"] == "dc1"


def test_counters_carry_choria_names_without_total_or_created():
    text = used(sm.ServiceMetrics("dc1")).render().decode()
    assert 'choria_provisioner_provisioned{site="dc1"} 3.0\n' in text
    assert "# TYPE choria_provisioner_provisioned counter\n" in text
    assert 'choria_provisioner_rpc_errors{rpc="choria_provision#configure",site="dc1"} 1.0\n' in text
    assert 'choria_provisioner_rpc_time_sum{rpc="choria_provision#gencsr",site="dc1"} 0.25\n' in text
    assert 'choria_provisioner_rpc_time_count{rpc="choria_provision#gencsr",site="dc1"} 1.0\n' in text
    assert "_total" not in text
    assert "_created" not in text
    assert 'choria_provisioner_paused{site="dc1"} 1.0\n' in text
    assert 'zeroinit_provisioner_info{mode="cluster",provisioner="prov-a",site="dc1"} 1.0\n' in text
    assert 'zeroinit_provisioner_renewals{outcome="renewed",site="dc1"} 1.0\n' in text


def test_every_own_series_has_the_site_label_and_names_lists_what_is_rendered():
    metrics = used(sm.ServiceMetrics("dc1"))
    parsed = families(metrics)
    for name, _kind, _extra, _help in sm.OWN_SERIES:
        assert name.startswith("zeroinit_provisioner_")
        assert all(sample.labels["site"] == "dc1" for sample in parsed[name].samples), name
    rendered = {
        line.split("{")[0].split(" ")[0]
        for line in metrics.render().decode().splitlines()
        if line and not line.startswith("#")
    }
    assert rendered == metrics.names()


def test_private_registry_two_instances_do_not_collide_and_global_is_untouched():
    sm.ServiceMetrics("dc1")
    sm.ServiceMetrics("dc1")
    assert not any(name.startswith("choria_provisioner") for name in REGISTRY._names_to_collectors)


def test_queue_and_claims_feed_the_series():
    metrics = sm.ServiceMetrics("dc1")
    queue = WorkQueue(observer=metrics.queue_observer(), limit=3)

    class Claims:
        held = 7

    metrics.track(queue=queue, claims=Claims())
    queue.add("a", "discovery")
    queue.add("b", "startup")
    queue.add("c", "registration")
    queue.add("d", "alive")  # full
    metrics.claim_observer().taken_over("a", "prov-b")
    metrics.claim_observer().lost("b", "expired")
    values = {sample.name: sample.value for family in families(metrics).values() for sample in family.samples}
    assert values["choria_provisioner_discovered_total"] == 1  # the parser spells counters with _total
    assert values["choria_provisioner_event_discovered_total"] == 2
    assert values["zeroinit_provisioner_queue_rejected_total"] == 1
    assert values["choria_provisioner_work_queue_entries"] == 3
    assert values["choria_provisioner_waiting_nodes"] == 3
    assert values["choria_provisioner_busy_workers"] == 0
    assert values["zeroinit_provisioner_claims_held"] == 7
    assert values["zeroinit_provisioner_takeovers_total"] == 1
    assert values["zeroinit_provisioner_claims_lost_total"] == 1


def test_label_values_are_escaped():
    metrics = sm.ServiceMetrics("dc1")
    metrics.rpc_time('odd"rpc\\name\nx').observe(1)
    text = metrics.render().decode()
    assert 'rpc="odd\\"rpc\\\\name\\nx"' in text
    assert families(metrics)["choria_provisioner_rpc_time"].samples[0].labels["rpc"] == 'odd"rpc\\name\nx'


class FakeClock:
    now = 100.0

    def __call__(self):
        return self.now


def test_liveness_needs_a_recent_tick_and_a_connection():
    clock = FakeClock()
    connected = [True]
    check = sm.LivenessCheck(lambda: connected[0], max_silence=5, clock=clock)
    assert check.problem() == ""
    clock.now += 6
    assert check.problem() == "the event loop has not ticked for 6.0s"
    check.beat()
    assert check.problem() == ""
    connected[0] = False
    assert check.problem() == "not connected to a broker"

    def broken():
        raise RuntimeError("boom")

    assert sm.LivenessCheck(broken).problem() == "connection state unknown: boom"


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_monitor_server_serves_metrics_and_health_then_stops():
    metrics = used(sm.ServiceMetrics("dc1"))
    problem = [""]
    server = sm.MonitorServer("127.0.0.1", 0, metrics.render, lambda: problem[0]).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, content_type, body = get(f"{base}/metrics")
        assert (status, content_type) == (200, sm.CONTENT_TYPE)
        assert {f.name for f in text_string_to_metric_families(body)} >= set(CHORIA)
        assert get(f"{base}/healthz")[::2] == (200, "ok\n")
        problem[0] = "not connected to a broker"
        assert get(f"{base}/healthz")[::2] == (503, "not connected to a broker\n")
        assert get(f"{base}/metrics?x=1")[0] == 200
        assert get(f"{base}/")[0] == 404
    finally:
        server.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=1):
        pass
