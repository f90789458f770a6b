"""The Grafana dashboard plots only series the service exports, and every series of Choria's provisioner."""

import json
import pathlib
import re

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service.metrics import (
    CHORIA_SERIES,
    OWN_SERIES,
    ServiceMetrics,
)

DASHBOARD = pathlib.Path(__file__).resolve().parents[2] / "docs/grafana/zeroinit-provisioner.json"
SERIES = re.compile(r"\b((?:choria|zeroinit)_provisioner_[a-z_]+)\b")
# Labels the service puts on its series, plus the scrape target's label Prometheus adds.
LABELS = {"site", "rpc", "provisioner", "mode", "instance", "outcome"}


def panels(items):
    for item in items:
        yield item
        yield from panels(item.get("panels", []))


def expressions(dashboard):
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["query"]["query"]


def test_every_expression_uses_only_exported_series_and_labels():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = ServiceMetrics("dc1").names()
    found = list(expressions(dashboard))
    assert found
    for title, expr in found:
        names = SERIES.findall(expr)
        assert names, f"{title}: {expr} plots none of the service's series"
        unknown = set(names) - exported
        assert not unknown, f"{title}: {sorted(unknown)} not exported"
        used_labels = set(re.findall(r"\b(?:by|without) \(([^)]*)\)", expr))
        used_labels = {label.strip() for group in used_labels for label in group.split(",")}
        used_labels |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", expr))
        used_labels |= set(re.findall(r"(\w+)\s*=~?", expr))
        assert used_labels <= LABELS, f"{title}: unknown labels {used_labels - LABELS}"


def test_every_panel_with_queries_has_a_legend_for_each_label_it_groups_by():
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            groups = re.findall(r"by \(([^)]*)\)", target["expr"])
            for label in {g.strip() for group in groups for g in group.split(",")}:
                assert f"{{{{{label}}}}}" in target["legendFormat"], (panel["title"], target)


def test_dashboard_plots_every_choria_series_and_the_claims():
    text = DASHBOARD.read_text()
    plotted = set(SERIES.findall(text))
    for name, kind, _labels, _help in CHORIA_SERIES + OWN_SERIES:
        wanted = f"{name}_sum" if kind == "summary" else name
        assert wanted in plotted, f"{name} is not on the dashboard"


def test_panel_ids_are_unique_and_layout_fits_the_grid():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard["panels"]):
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
