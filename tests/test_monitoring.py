"""The chart's alerts (PrometheusRule), Grafana dashboard (ConfigMap) and their runbook.

Every PromQL expression — the rules' and every dashboard query, templating variables included —
is parsed with `promql_parser`, and every metric it selects must be one the code exports. That
set is built from the code, never kept by hand:

- the operator: the families of prometheus_client's default registry once
  `switchboard.operator.metrics` is imported (what `start_http_server` serves);
- the tool gateway: the registry of a `GatewayMetrics` instance;
- the agents' Ray Serve metrics: the `serve.metrics.Counter/Histogram/Gauge("name", ...)` calls
  in serving/ (read with `ast`: importing ray here is slow), with Ray's `ray_` prefix;
- the rule file's own recording rules.

The PrometheusRule is validated against the Prometheus Operator's CRD in the project's shared
folder (`../shared/schemas/crds/monitoring.coreos.com/`, or `SWITCHBOARD_SHARED_DIR`).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.utils import floatToGoString

from switchboard.operator import metrics as operator_metrics
from switchboard.serving.gateway.metrics import GatewayMetrics, Outcome

HelmTemplate = Callable[..., list[dict[str, Any]]]

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "switchboard"
DASHBOARD_FILE = CHART / "dashboards" / "switchboard.json"
RUNBOOK = REPO / "docs" / "operations.md"
SERVING = REPO / "serving"
ENABLED = (
    "prometheusRule.enabled=true",
    "grafanaDashboard.enabled=true",
    "metrics.serviceMonitor.enabled=true",
)
# Series Prometheus writes itself for every scrape target (the operator-down alert reads `up`).
PROMETHEUS_SERIES = {"up"}
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
SEVERITIES = {"critical", "warning", "info"}
# The alerts the product asks for, and the runbook sections beside them.
ALERTS = {
    "SwitchboardAgentNotReady",
    "SwitchboardRolloutFailed",
    "SwitchboardTrainingFailed",
    "SwitchboardEscalationRateSpike",
    "SwitchboardChatTurnsFailing",
    "SwitchboardToolErrorRate",
    "SwitchboardToolCircuitOpen",
    "SwitchboardLatencySLOBurn",
    "SwitchboardOperatorReconcileErrors",
    "SwitchboardOperatorDown",
    "SwitchboardAgentBudgetLow",
}
SCENARIO_ANCHORS = {
    "switchboardagentnotready",
    "switchboardrolloutfailed",
    "tool-outage",
    "gpu-shortage",
    "the-operator",
}
# Sample names per family type (prometheus_client's exposition; Ray's histograms likewise).
SAMPLE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}
# Grafana's interval macros, as a duration PromQL accepts.
GRAFANA_MACROS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


# --------------------------------------------------------------------------------------------
# The metrics the code exports


def registry_sample_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name a registry can expose. Labelled metrics with no child yet have no
    samples, so the names come from each family's type as well as from its samples."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in SAMPLE_SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def operator_metric_names() -> set[str]:
    assert operator_metrics.AGENT_READY is not None  # importing the module registers them
    return registry_sample_names(REGISTRY)


def gateway_metric_names() -> set[str]:
    gateway = GatewayMetrics("probe", ["probe_operation"], lambda: 0.0)
    return registry_sample_names(gateway.registry)


def _ray_metric_calls(tree: ast.AST) -> Iterator[tuple[str, str]]:
    """(kind, name) of every `serve.metrics.<Kind>("name", ...)` call."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if not (
            isinstance(owner, ast.Attribute)
            and owner.attr == "metrics"
            and isinstance(owner.value, ast.Name)
            and owner.value.id == "serve"
            and node.func.attr in ("Counter", "Histogram", "Gauge")
        ):
            continue
        first = node.args[0] if node.args else None
        assert isinstance(first, ast.Constant) and isinstance(first.value, str), ast.dump(node)
        yield node.func.attr.lower(), first.value


def ray_metric_names() -> set[str]:
    """The Serve application metrics as Prometheus sees them: Ray's metrics agent adds `ray_`."""
    names: set[str] = set()
    for path in sorted(SERVING.rglob("*.py")):
        for kind, name in _ray_metric_calls(ast.parse(path.read_text(encoding="utf-8"))):
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            names.update(f"ray_{name}{s}" for s in suffixes)
    return names


@cache
def exported_metrics() -> frozenset[str]:
    return frozenset(operator_metric_names() | gateway_metric_names() | ray_metric_names())


def ray_latency_buckets() -> list[float]:
    """`LATENCY_BUCKETS` of serving/app.py (the agent's latency histogram's bounds)."""
    tree = ast.parse((SERVING / "app.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "LATENCY_BUCKETS" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return [float(v) for v in value]
    raise AssertionError("LATENCY_BUCKETS not found in serving/app.py")


def test_exported_metric_sets_come_from_the_code() -> None:
    """The sets the other tests check against hold what the docs promise (a sanity check that
    the collection above found the metrics at all)."""
    names = exported_metrics()
    for expected in (
        "switchboard_reconcile_total",
        "switchboard_reconcile_duration_seconds_bucket",
        "switchboard_agent_ready",
        "switchboard_rollout_phase",
        "tool_call_total",
        "tool_call_latency_seconds_bucket",
        "tool_call_retries_total",
        "tool_gateway_circuit_state",
        "ray_agent_request_total",
        "ray_agent_response_latency_seconds_bucket",
        "ray_nlu_inference_time_seconds_count",
        "ray_escalation_to_human_total",
        "ray_agent_nlu_confidence_sum",
        "ray_agent_tool_calls_total",
        "ray_agent_conversations_total",
        "ray_agent_conversations_escalated_total",
        "ray_agent_handoff_first_reply_seconds_bucket",
        "ray_agent_handoff_handling_seconds_bucket",
        "ray_agent_csat_ratings_total",
    ):
        assert expected in names
    assert "ray_agent_response_latency_seconds" not in names  # a histogram has no bare series


# --------------------------------------------------------------------------------------------
# PromQL


def selected_metrics(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (vector and range selectors, `__name__`
    matchers). A `__name__` regex must match at least one exported or recorded name."""
    names: set[str] = set()
    patterns: list[str] = []

    def visit(node: Any) -> None:
        if not isinstance(node, promql_parser.VectorSelector):
            return
        if node.name:
            names.add(node.name)
        groups = [node.matchers.matchers, *node.matchers.or_matchers]
        for matcher in (m for group in groups for m in group):
            if matcher.name != "__name__":
                continue
            if matcher.op == promql_parser.MatchOp.Equal:
                names.add(matcher.value)
            elif matcher.op == promql_parser.MatchOp.Re:
                patterns.append(matcher.value)
            else:
                raise AssertionError(f"negative __name__ matcher in {expr!r}")

    promql_parser.walk(promql_parser.parse(expr), visit)
    for pattern in patterns:
        names.add(f"~{pattern}")
    return names


def unknown_metrics(names: set[str], known: set[str] | frozenset[str]) -> set[str]:
    unknown = set()
    for name in names:
        if name.startswith("~"):
            regex = re.compile(name[1:])
            if not any(regex.fullmatch(k) for k in known):
                unknown.add(name)
        elif name not in known:
            unknown.add(name)
    return unknown


def label_matchers(expr: str, metric: str, label: str) -> list[tuple[promql_parser.MatchOp, str]]:
    """(op, value) of the matchers on `label` of every selector of `metric`."""
    found: list[tuple[promql_parser.MatchOp, str]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name == metric:
            found.extend((m.op, m.value) for m in node.matchers.matchers if m.name == label)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


Labels = frozenset[str] | None  # None: not known (a raw selector carries any label)


def _is_scalar(node: Any) -> bool:
    if isinstance(node, promql_parser.NumberLiteral):
        return True
    if isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr):
        return _is_scalar(node.expr)
    if isinstance(node, promql_parser.BinaryExpr):
        return _is_scalar(node.lhs) and _is_scalar(node.rhs)
    return isinstance(node, promql_parser.Call) and node.func.name in ("scalar", "time")


def output_labels(node: Any, recorded: dict[str, Labels]) -> Labels:
    """The labels every series of an expression's result carries, when the expression says
    (aggregations `by`, `on` matching, recording rules); None where it depends on the data."""
    if isinstance(node, promql_parser.VectorSelector):
        return recorded.get(node.name) if node.name else None
    if isinstance(node, promql_parser.MatrixSelector):
        return output_labels(node.vector_selector, recorded)
    if isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr):
        return output_labels(node.expr, recorded)
    if isinstance(node, promql_parser.SubqueryExpr):
        return output_labels(node.expr, recorded)
    if isinstance(node, promql_parser.AggregateExpr):
        if str(node.op) in ("topk", "bottomk", "limitk", "limit_ratio"):
            return output_labels(node.expr, recorded)
        modifier = node.modifier
        if modifier is None:
            return frozenset()
        if modifier.type == promql_parser.AggModifierType.By:
            return frozenset(modifier.labels)
        return None
    if isinstance(node, promql_parser.Call):
        name = node.func.name
        if name == "vector":
            return frozenset()
        vectors = [
            a
            for a in node.args
            if not _is_scalar(a) and not isinstance(a, promql_parser.StringLiteral)
        ]
        if not vectors or name in ("label_replace", "label_join", "absent", "absent_over_time"):
            return None
        inner = output_labels(vectors[0], recorded)
        if name == "histogram_quantile" and inner is not None:
            return inner - {"le"}
        return inner
    if isinstance(node, promql_parser.BinaryExpr):
        if _is_scalar(node.lhs):
            return output_labels(node.rhs, recorded)
        if _is_scalar(node.rhs):
            return output_labels(node.lhs, recorded)
        lhs, rhs = output_labels(node.lhs, recorded), output_labels(node.rhs, recorded)
        op = str(node.op)
        if op in ("and", "unless"):
            return lhs
        if op == "or":
            return None if lhs is None or rhs is None else lhs & rhs
        # Prometheus keeps the "many" side's labels; one-to-one `on (...)` keeps those alone.
        bin_modifier = node.modifier
        card = bin_modifier.card if bin_modifier is not None else None
        if card == promql_parser.VectorMatchCardinality.OneToMany:
            return rhs
        if card == promql_parser.VectorMatchCardinality.ManyToOne:
            return lhs
        matching = bin_modifier.matching if bin_modifier is not None else None
        if matching is not None and matching.type == promql_parser.LabelModifierType.Include:
            return frozenset(matching.labels)
        return lhs
    return None


# --------------------------------------------------------------------------------------------
# The rendered objects


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and _is_monitoring(o)]
    return found


def _is_monitoring(obj: dict[str, Any]) -> bool:
    if obj["kind"] == "PrometheusRule":
        return True
    return obj["kind"] == "ConfigMap" and str(obj["metadata"]["name"]).endswith("-dashboard")


def rules_of(rule: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def alerts_of(rule: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in rules_of(rule) if "alert" in r]


def recorded_names(rule: dict[str, Any]) -> set[str]:
    return {r["record"] for r in rules_of(rule) if "record" in r}


def recorded_labels(rule: dict[str, Any]) -> dict[str, Labels]:
    """Output labels of each recording rule, in file order (a rule may use an earlier one)."""
    labels: dict[str, Labels] = {}
    for r in rules_of(rule):
        if "record" in r:
            labels[r["record"]] = output_labels(promql_parser.parse(str(r["expr"])), labels)
    return labels


def dashboard_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = only(objects, "ConfigMap")
    parsed: dict[str, Any] = json.loads(config_map["data"]["switchboard.json"])
    return parsed


def panels_of(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, the ones nested in (collapsed) rows included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels") or [])

    yield from walk(dashboard.get("panels") or [])


def grafana_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """A value per templating variable for interpolation: the current value of custom and
    constant variables, a match-everything regex for query variables."""
    values: dict[str, str] = dict(GRAFANA_MACROS)
    for var in dashboard["templating"]["list"]:
        current = (var.get("current") or {}).get("value")
        if var["type"] in ("custom", "constant", "textbox") and isinstance(current, str):
            values[var["name"]] = current
        else:
            values[var["name"]] = ".*"
    return values


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def interpolate(expr: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise AssertionError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(value, expr)


def variable_query(query: str) -> list[str]:
    """The PromQL inside a Prometheus templating query: `label_values(selector, label)` and
    `query_result(expr)` hold some; `label_values(label)` and `metrics(regex)` none."""
    query = query.strip()
    if match := re.fullmatch(r"label_values\((.*),\s*(\w+)\s*\)", query, re.S):
        return [match.group(1)]
    if re.fullmatch(r"label_values\(\s*\w+\s*\)", query):
        return []
    if match := re.fullmatch(r"query_result\((.*)\)", query, re.S):
        return [match.group(1)]
    raise AssertionError(f"unsupported templating query {query!r}")


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and templating query, variables interpolated."""
    values = grafana_variables(dashboard)
    found = []
    for panel in panels_of(dashboard):
        for target in panel.get("targets") or []:
            if "expr" in target:
                where = f"panel {panel['title']!r} target {target['refId']}"
                found.append((where, interpolate(target["expr"], values)))
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        for expr in variable_query(query):
            found.append((f"variable {var['name']}", interpolate(expr, values)))
    return found


@pytest.fixture(scope="module")
def rendered(helm_template: HelmTemplate) -> list[dict[str, Any]]:
    return helm_template(*ENABLED)


@pytest.fixture(scope="module")
def prometheus_rule(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    return only(rendered, "PrometheusRule")


@pytest.fixture(scope="module")
def dashboard(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    return dashboard_of(rendered)


# --------------------------------------------------------------------------------------------
# (a) Every expression parses and selects only exported metrics


def test_rule_expressions_use_exported_metrics(prometheus_rule: dict[str, Any]) -> None:
    known = exported_metrics() | recorded_names(prometheus_rule) | PROMETHEUS_SERIES
    problems = {}
    for rule in rules_of(prometheus_rule):
        name = rule.get("alert") or rule["record"]
        try:
            names = selected_metrics(str(rule["expr"]))
        except ValueError as exc:  # promql_parser's parse error
            problems[name] = f"does not parse: {exc}"
            continue
        assert names, f"{name} selects no metric"
        if unknown := unknown_metrics(names, known):
            problems[name] = f"unknown metrics {sorted(unknown)}"
    assert problems == {}


def test_dashboard_expressions_use_exported_metrics(
    dashboard: dict[str, Any], prometheus_rule: dict[str, Any]
) -> None:
    """Panels read exported metrics, or the chart's own support recording rules (a day's
    containment or CSAT is too costly to compute at every refresh)."""
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 20
    known = exported_metrics() | recorded_names(prometheus_rule)
    problems = {}
    for where, expr in exprs:
        try:
            names = selected_metrics(expr)
        except ValueError as exc:
            problems[where] = f"does not parse: {exc}: {expr}"
            continue
        if unknown := unknown_metrics(names, known):
            problems[where] = f"unknown metrics {sorted(unknown)}"
    assert problems == {}


def expand_recorded(names: set[str], prometheus_rule: dict[str, Any]) -> set[str]:
    """`names` with each recording rule's name replaced by the metrics its expression reads
    (through earlier recording rules too)."""
    sources = {
        r["record"]: selected_metrics(str(r["expr"]))
        for r in rules_of(prometheus_rule)
        if "record" in r
    }
    expanded: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in sources:
            pending.extend(sources[name] - expanded)
        expanded.add(name)
    return expanded - set(sources)


def test_dashboard_recording_rules_keep_the_agent_filters(
    dashboard: dict[str, Any], prometheus_rule: dict[str, Any]
) -> None:
    """A recording rule a panel reads keeps `namespace` and `agent` (the dashboard's variables
    filter it), and the panel's description says that it needs the chart's PrometheusRule."""
    recorded = recorded_labels(prometheus_rule)
    read = 0
    for panel in panels_of(dashboard):
        names = {
            n
            for target in panel.get("targets") or []
            if "expr" in target
            for n in selected_metrics(interpolate(target["expr"], grafana_variables(dashboard)))
        }
        rules = names & set(recorded)
        if not rules:
            continue
        read += len(rules)
        assert "prometheusRule.enabled" in panel["description"], panel["title"]
        for name in rules:
            labels = recorded[name]
            assert labels is not None and {"namespace", "agent"} <= labels, (name, labels)
            for target in panel["targets"]:
                if name in selected_metrics(target["expr"].replace("$__rate_interval", "5m")):
                    assert '$namespace"' in target["expr"] and '$agent"' in target["expr"]
    assert read >= 10


def test_every_metric_appears_on_the_dashboard(
    dashboard: dict[str, Any], prometheus_rule: dict[str, Any]
) -> None:
    """The dashboard covers every series family the project exports (histograms through one of
    their series; a recording rule covers what it reads), prometheus_client's process and
    platform collectors aside."""
    used = expand_recorded(
        set().union(*(selected_metrics(e) for _, e in dashboard_exprs(dashboard))),
        prometheus_rule,
    )
    families = {
        re.sub(r"_(bucket|sum|count|created|total)$", "", n)
        for n in exported_metrics()
        if n.startswith(("switchboard_", "tool_", "ray_"))
    }
    covered = {re.sub(r"_(bucket|sum|count|created|total)$", "", n) for n in used}
    # switchboard_agents{ready} is switchboard_agent_ready counted: the dashboard counts the
    # latter, which it can also filter by namespace.
    assert families - covered <= {"switchboard_agents"}


def test_label_values_the_rules_match_are_written_by_the_code(
    prometheus_rule: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    outcomes = {o.value for o in Outcome}
    exprs = [str(r["expr"]) for r in rules_of(prometheus_rule)]
    exprs += [e for _, e in dashboard_exprs(dashboard)]
    checked = 0
    for expr in exprs:
        for op, value in label_matchers(expr, "tool_call_total", "outcome"):
            assert set(value.split("|")) <= outcomes, (op, value)
            checked += 1
        for op, value in label_matchers(expr, "switchboard_rollout_phase", "phase"):
            assert set(value.split("|")) <= set(operator_metrics.ROLLOUT_PHASES), (op, value)
            checked += 1
    assert checked >= 3


def test_alert_annotations_use_labels_the_expression_keeps(prometheus_rule: dict[str, Any]) -> None:
    recorded = recorded_labels(prometheus_rule)
    for alert in alerts_of(prometheus_rule):
        if is_absence(alert):
            assert "$labels" not in " ".join(alert["annotations"].values()), alert["alert"]
            continue
        labels = output_labels(promql_parser.parse(str(alert["expr"])), recorded)
        assert labels, f"{alert['alert']}: the result's labels are not known"
        text = " ".join(alert["annotations"].values())
        used = set(re.findall(r"\$labels\.(\w+)", text))
        assert used, alert["alert"]
        assert used <= labels, (alert["alert"], used - labels)


# --------------------------------------------------------------------------------------------
# (b) Alerts: severity, summary, description, runbook


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[`*_~]|\[|\]\([^)]*\)", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {github_anchor(m) for m in re.findall(r"^#{1,6} +(.+)$", text, re.M)}


def test_alerts_are_complete(prometheus_rule: dict[str, Any]) -> None:
    base = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]["runbookBaseUrl"]
    alerts = alerts_of(prometheus_rule)
    assert {a["alert"] for a in alerts} == ALERTS
    anchors = runbook_anchors()
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        annotations = alert["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"{base}#{name.lower()}"
        assert name.lower() in anchors, f"docs/operations.md has no section `### {name}`"


def test_latency_slo_has_a_fast_and_a_slow_burn(prometheus_rule: dict[str, Any]) -> None:
    burns = {
        a["labels"]["burn"]: a
        for a in alerts_of(prometheus_rule)
        if a["alert"] == "SwitchboardLatencySLOBurn"
    }
    assert set(burns) == {"fast", "slow"}
    assert burns["fast"]["labels"]["severity"] == "critical"
    assert burns["slow"]["labels"]["severity"] == "warning"
    # The budget is 1 - target (0.99 by default); the windows per the SRE workbook.
    assert "14.4 * (1 - 0.99)" in burns["fast"]["expr"]
    assert "ratio_rate1h" in burns["fast"]["expr"] and "ratio_rate5m" in burns["fast"]["expr"]
    assert "6 * (1 - 0.99)" in burns["slow"]["expr"]
    assert "ratio_rate6h" in burns["slow"]["expr"] and "ratio_rate30m" in burns["slow"]["expr"]


def test_runbook_covers_the_scenarios_and_its_links_resolve() -> None:
    anchors = runbook_anchors()
    assert anchors >= SCENARIO_ANCHORS
    text = RUNBOOK.read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links - anchors == set()
    not_ready = text.split("### SwitchboardAgentNotReady", 1)[1].split("\n### ", 1)[0]
    assert "(#gpu-shortage)" in not_ready
    gpu = text.split("### GPU shortage", 1)[1].split("\n### ", 1)[0]
    assert "Insufficient nvidia.com/gpu" in gpu and "FailedScheduling" in gpu


# --------------------------------------------------------------------------------------------
# (c) Prometheus templates survive Helm


def is_absence(alert: dict[str, Any]) -> bool:
    """An alert on something missing (`absent(...)`): its result has no labels to name."""
    return str(alert["expr"]).lstrip().startswith("absent(")


def test_prometheus_templates_survive_rendering(prometheus_rule: dict[str, Any]) -> None:
    for alert in alerts_of(prometheus_rule):
        if is_absence(alert):
            continue
        for key in ("summary", "description"):
            text = alert["annotations"][key]
            assert "{{ $labels." in text, (alert["alert"], key)
            # Balanced Prometheus template actions, no Helm leftovers.
            assert text.count("{{") == text.count("}}"), text
            assert ".Values" not in text and "{{`" not in text and "`}}" not in text


# --------------------------------------------------------------------------------------------
# (d) The dashboard


def test_dashboard_config_map(
    rendered: list[dict[str, Any]], dashboard: dict[str, Any], schemas: Any
) -> None:
    config_map = only(rendered, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "switchboard-system"
    assert dashboard["uid"] == "switchboard"
    assert dashboard == json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert schemas.errors(config_map) == []


def test_dashboard_file_is_formatted() -> None:
    text = DASHBOARD_FILE.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


def test_dashboard_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "agent"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "agent"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE_REF


def test_every_panel_queries_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    panels = list(panels_of(dashboard))
    queried = [p for p in panels if p["type"] not in ("row", "text")]
    assert len(queried) >= 20
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in queried:
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, (panel["title"], target["refId"])
    # Collapsed rows hold their panels; open rows hold none.
    for row in (p for p in panels if p["type"] == "row"):
        assert bool(row["panels"]) == row["collapsed"], row["title"]


def test_dashboard_namespace_and_annotations(helm_template: HelmTemplate) -> None:
    objects = helm_template(
        "grafanaDashboard.enabled=true",
        "grafanaDashboard.namespace=monitoring",
        "grafanaDashboard.annotations.grafana_folder=Switchboard",
    )
    config_map = only(objects, "ConfigMap")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Switchboard"}
    assert not [o for o in objects if o["kind"] == "PrometheusRule"]


def test_disabled_by_default(helm_template: HelmTemplate) -> None:
    assert not [o for o in helm_template() if _is_monitoring(o)]


# --------------------------------------------------------------------------------------------
# (e) Values reach the rules


def test_agent_not_ready_for_follows_the_value(helm_template: HelmTemplate) -> None:
    rule = only(
        helm_template("prometheusRule.enabled=true", "prometheusRule.agentNotReadyFor=30m"),
        "PrometheusRule",
    )
    [alert] = [a for a in alerts_of(rule) if a["alert"] == "SwitchboardAgentNotReady"]
    assert alert["for"] == "30m"
    assert "30m" in alert["annotations"]["description"]


def test_thresholds_follow_the_values(helm_template: HelmTemplate, schemas: Any) -> None:
    # Through a values file: `--set` passes decimals as strings, which the schema refuses.
    values = {
        "prometheusRule": {
            "enabled": True,
            "escalationRateThreshold": 0.45,
            "escalationSpikeFactor": 3,
            "toolErrorRateThreshold": 0.25,
            "latencySloTarget": 0.995,
            "labels": {"release": "kube-prometheus-stack"},
        }
    }
    rule = only(helm_template(values=values), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = {a["alert"]: str(a["expr"]) for a in alerts_of(rule)}
    assert "> 0.45" in alerts["SwitchboardEscalationRateSpike"]
    assert "> 3 * namespace_agent" in alerts["SwitchboardEscalationRateSpike"]
    assert "> 0.25" in alerts["SwitchboardToolErrorRate"]
    assert "(1 - 0.995)" in alerts["SwitchboardLatencySLOBurn"]
    assert schemas.errors(rule) == []


def _le_spellings(bound: float) -> set[str]:
    """How exporters and Prometheus versions write a bucket bound in `le`: Python's str() of a
    float (Ray's metrics agents), prometheus_client, and Go's shortest form."""
    go = f"{bound:g}"
    client: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return {str(float(bound)), client, go}


def test_slo_bucket_bounds_are_histogram_bounds() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed = schema["properties"]["prometheusRule"]["properties"]["latencySloSeconds"]["enum"]
    assert {float(v) for v in allowed} <= set(ray_latency_buckets())
    default = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]
    assert float(default["latencySloSeconds"]) in ray_latency_buckets()


@pytest.mark.parametrize("bound", [0.5, 1, 2.5, 5, 10])
def test_slo_bucket_matcher_matches_every_spelling(
    helm_template: HelmTemplate, bound: float
) -> None:
    values = {"prometheusRule": {"enabled": True, "latencySloSeconds": bound}}
    rule = only(helm_template(values=values), "PrometheusRule")
    matchers = [
        (op, value)
        for r in rules_of(rule)
        for op, value in label_matchers(
            str(r["expr"]), "ray_agent_response_latency_seconds_bucket", "le"
        )
    ]
    assert len(matchers) == 4  # one per window: 5m, 30m, 1h, 6h
    others = {s for b in ray_latency_buckets() if b != bound for s in _le_spellings(b)}
    for op, value in matchers:
        assert op == promql_parser.MatchOp.Re
        regex = re.compile(value)
        assert all(regex.fullmatch(s) for s in _le_spellings(bound)), (value, bound)
        assert not any(regex.fullmatch(s) for s in others), (value, bound)


# --------------------------------------------------------------------------------------------
# The PrometheusRule against the upstream CRD; metadata and the ConfigMap against Kubernetes'


def test_prometheus_rule_matches_upstream_crd(
    prometheus_rule: dict[str, Any], schemas: Any
) -> None:
    assert prometheus_rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert prometheus_rule["metadata"]["namespace"] == "switchboard-system"
    assert schemas.errors(prometheus_rule) == []
    names = [g["name"] for g in prometheus_rule["spec"]["groups"]]
    assert len(names) == len(set(names))  # groups are a map keyed by name


def test_upstream_crd_validation_catches_mistakes(
    prometheus_rule: dict[str, Any], schemas: Any
) -> None:
    broken = json.loads(json.dumps(prometheus_rule))
    alert = alerts_of(broken)[0]
    alert["for"] = "fifteen minutes"
    alert["severity"] = "critical"  # belongs under labels
    errors = schemas.errors(broken)
    assert any("for" in e and "does not match" in e for e in errors), errors
    assert any("'severity' was unexpected" in e for e in errors), errors
