"""The Grafana dashboard and Prometheus examples only name metrics the gateway exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram

from cortex.gateway.fleet import ModelOnNode, Node
from cortex.gateway.metrics import FleetCollector, GatewayMetrics

FILES = Path(__file__).resolve().parents[2]
DASHBOARD = FILES / "grafana" / "cortex-dashboard.json"
SCRAPE = FILES / "prometheus" / "prometheus-scrape.yml"
ALERTS = FILES / "prometheus" / "alerts.yml"

METRIC = re.compile(r"\bcortex_[a-z_]+")
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus itself adds or that PromQL makes up, not the exporter's.
BUILTIN_LABELS = {"le", "job", "instance", "__name__"}


def _exported() -> dict[str, set[str]]:
    """Sample name -> label names, as a scrape of the gateway's metrics port shows them."""
    registry = CollectorRegistry()
    gm = GatewayMetrics(registry)
    # A labelled metric shows no samples until a child exists: make one of each.
    for metric in vars(gm).values():
        if isinstance(metric, Counter | Histogram):
            child = metric.labels(*("x" for _ in metric._labelnames))
            if isinstance(metric, Histogram):
                child.observe(1)
            else:
                child.inc()
    node = Node(name="n1", endpoint="http://n1:13131", healthy=True,
                devices=[{"index": 0, "vram_used_mb": 1000, "vram_free_mb": 7000,
                          "utilization_pct": 12, "temp_c": 50}],
                models={"m": ModelOnNode(id="m", status="loaded", in_flight=1,
                                         queue_depth=2, tok_s_prefill=500.0,
                                         tok_s_decode=40.0)})
    registry.register(FleetCollector(SimpleNamespace(nodes={"n1": node})))
    names: dict[str, set[str]] = {}
    for family in registry.collect():
        # Families with no samples still reach the scrape under their full name.
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        for suffix in suffixes.get(family.type, [""]):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


EXPORTED = _exported()


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(panels: list[dict]) -> Iterator[dict]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))  # collapsed rows keep theirs inside


def _dashboard_exprs() -> list[str]:
    dash = _dashboard()
    exprs = [t["expr"] for p in _panels(dash["panels"]) for t in p.get("targets", [])
             if t.get("expr")]
    for var in dash["templating"]["list"]:
        if var.get("type") == "query":
            q = var["query"]
            exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_gateway_exports_the_documented_names() -> None:
    # Sanity check of the derivation itself, so the tests below check something.
    for name in ("cortex_requests_total", "cortex_request_duration_seconds_bucket",
                 "cortex_gateway_overhead_seconds_count", "cortex_node_up",
                 "cortex_device_vram_free_mb", "cortex_spend_completion_tokens_total",
                 "cortex_model_rejections_total"):
        assert name in EXPORTED, name
    assert EXPORTED["cortex_model_queue_depth"] == {"node", "model"}
    assert EXPORTED["cortex_request_errors_total"] == {"model", "node", "code"}


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dash = _dashboard()
    assert dash["schemaVersion"] >= 36
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("model", "node"):
        assert "label_values(" in variables[name]["definition"]
    ids = [p["id"] for p in _panels(dash["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in _panels(dash["panels"]):
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]), p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]
    rows = {p["title"] for p in dash["panels"] if p["type"] == "row"}
    assert {"Fleet overview", "Latency", "Throughput", "Capacity", "Spend"} <= rows


def _check_exprs(exprs: list[str]) -> set[str]:
    assert exprs
    seen: set[str] = set()
    for expr in exprs:
        names = set(METRIC.findall(expr))
        unknown = names - EXPORTED.keys()
        assert not unknown, f"{sorted(unknown)} not exported by the gateway, in: {expr}"
        seen |= names
        # Every label grouped by must exist on some metric the expression reads.
        labels = set().union(*(EXPORTED[n] for n in names)) | BUILTIN_LABELS
        for group in BY.findall(expr):
            for label in filter(None, (s.strip() for s in group.split(","))):
                assert label in labels, f"label {label!r} not on {sorted(names)}, in: {expr}"
        assert expr.count("(") == expr.count(")"), expr
    return seen


def test_dashboard_promql_names_exported_metrics() -> None:
    exprs = _dashboard_exprs()
    seen = _check_exprs(exprs)
    # Range queries use Grafana's rate interval, never a hard-coded window.
    for expr in exprs:
        for window in re.findall(r"\b(?:rate|increase)\([^\[]*\[([^\]]+)\]", expr):
            assert window in ("$__rate_interval", "$__range"), expr
    # The dashboard covers docs/api.md's metrics (rejections are not graphed: see neuron_*).
    wanted = {
        "cortex_requests_total", "cortex_request_errors_total", "cortex_cold_starts_total",
        "cortex_evictions_total", "cortex_prompt_tokens_total",
        "cortex_completion_tokens_total", "cortex_request_duration_seconds_bucket",
        "cortex_time_to_first_token_seconds_bucket", "cortex_tokens_per_second_bucket",
        "cortex_gateway_overhead_seconds_bucket", "cortex_spend_tokens_total",
        "cortex_spend_prompt_tokens_total", "cortex_spend_completion_tokens_total",
        "cortex_model_in_flight", "cortex_model_queue_depth", "cortex_model_tok_s_decode",
        "cortex_node_up", "cortex_node_drained", "cortex_device_vram_used_mb",
        "cortex_device_vram_free_mb", "cortex_device_utilization_pct", "cortex_device_temp_c",
    }
    assert wanted <= seen, sorted(wanted - seen)


def test_alert_rules_parse_and_name_exported_metrics() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    assert set(rules) == {"groups"}
    alerts = []
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert {"alert", "expr"} <= set(rule), rule
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels",
                                 "annotations"}, rule
            if "for" in rule:
                assert re.fullmatch(r"\d+[smhdwy]", rule["for"]), rule
            alerts.append(rule["alert"])
    assert len(alerts) == len(set(alerts))
    assert {"CortexNodeDown", "CortexHighErrorRatio", "CortexTTFTHigh",
            "CortexQueueSaturating", "CortexVRAMNearlyFull"} <= set(alerts)
    _check_exprs(_alert_exprs())


@pytest.mark.parametrize("job, port", [("cortex", 31314), ("neuron", 13131)])
def test_scrape_config_parses(job: str, port: int) -> None:
    cfg = yaml.safe_load(SCRAPE.read_text())
    assert "scrape_configs" in cfg
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    targets = [t for sc in jobs[job]["static_configs"] for t in sc["targets"]]
    assert targets and all(t.endswith(f":{port}") for t in targets)
    assert jobs[job].get("metrics_path", "/metrics") == "/metrics"
    if job == "neuron":
        assert jobs[job]["authorization"]["credentials_file"]
