"""Metrics the way a mesh's Prometheus takes them: the filter's counters reach
Envoy's Prometheus endpoint with their provider, decision, rule and action as
labels (envoy/envoy.yaml's `stats_tags`), the fixed ones exist at zero before
their first event, no metric carries a value the filter masked, and every
query of the Grafana dashboard (examples/grafana/warden-gateway.json) names
a metric and labels that a real scrape of the running gateway has."""

from __future__ import annotations

import json
import re
import uuid

import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness.stack import ROOT, default_filter_config, http, wait_until

DASHBOARD = ROOT / "examples" / "grafana" / "warden-gateway.json"
CHAT = "/openai/v1/chat/completions"
EMAIL = "metrics.person@example.com"
# Labels Prometheus adds to every series it scrapes; Envoy's text has none of them.
SCRAPE_LABELS = {"job", "instance"}
# What Grafana puts in a query before Prometheus sees it.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$job": ".*"}

POLICY = {
    **default_filter_config()["policy"],
    "approval": {"approvers": ["security"], "mode": "ticket"},
}
# A tool rule makes the filter judge (and count) the tools a request offers.
POLICY["groups"] = {**POLICY["groups"], "security": {"models": ["*"]},
                    "engineering": {"models": ["*"], "tools": {"deny": ["computer"]}}}
POLICY["rules"] = [*POLICY["rules"],
                   {"name": "export-ticket", "keywords": ["customer export"], "action": "require_approval",
                    "where": "request"}]
# Denied to engineering: taken out of the request, counted as `removed`.
COMPUTER_TOOL = {"type": "function", "function": {"name": "computer", "description": "use the desktop",
                                                  "parameters": {"type": "object", "properties": {}}}}


def scrape(stack) -> dict[str, list]:
    """Envoy's Prometheus text, parsed by the Prometheus client's own parser:
    {family name: [samples]}."""
    status, _, body = http("GET", f"{stack.admin_url}/stats/prometheus")
    assert status == 200
    return {family.name: family.samples for family in text_string_to_metric_families(body.decode())}


def labels_of(families: dict[str, list], name: str) -> set[str]:
    return {label for sample in families.get(name, []) for label in sample.labels}


def value(families: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in families.get(name, [])
               if all(s.labels.get(k) == v for k, v in labels.items()))


def selectors(node) -> list[tuple[str, set[str]]]:
    """Every (metric name, labels it names) in a parsed PromQL expression,
    with the labels of the `by`/`without` around it."""
    found: list[tuple[str, set[str]]] = []

    def walk(n, grouping: set[str]) -> None:
        kind = type(n).__name__
        if kind == "VectorSelector":
            names = {m.name for m in n.matchers.matchers} - {"__name__"}
            found.append((n.name, names | grouping))
        elif kind == "MatrixSelector":
            walk(n.vector_selector, grouping)
        elif kind == "AggregateExpr":
            labels = set(n.modifier.labels) if n.modifier is not None else set()
            walk(n.expr, grouping | labels)
        elif kind == "BinaryExpr":
            walk(n.lhs, grouping)
            walk(n.rhs, grouping)
        elif kind == "Call":
            for arg in n.args:
                walk(arg, grouping)
        elif kind in ("ParenExpr", "UnaryExpr", "SubqueryExpr"):
            walk(n.expr, grouping)
        elif kind not in ("NumberLiteral", "StringLiteral"):
            raise AssertionError(f"a PromQL node this check does not know: {kind}")

    walk(node, set())
    return found


def query_problems(expr: str, families: dict[str, list]) -> list[str]:
    """Why a dashboard query would show nothing against this scrape ([] if it would not)."""
    for variable, stand_in in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, stand_in)
    if "$" in expr:
        return [f"an unknown Grafana variable in {expr!r}"]
    try:
        parsed = promql_parser.parse(expr)
    except ValueError as e:
        return [f"{expr!r} does not parse: {e}"]
    problems = []
    for name, labels in selectors(parsed):
        if name not in families:
            problems.append(f"{expr!r}: no metric {name} in the scrape")
            continue
        missing = labels - labels_of(families, name) - SCRAPE_LABELS
        if missing:
            problems.append(f"{expr!r}: {name} has no label {sorted(missing)}")
    return problems


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    queries = [(f"panel {p['title']!r}", t["expr"]) for p in board["panels"] for t in p["targets"]]
    for variable in board["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", str(variable.get("query", "")))
        if variable["type"] == "query":
            assert match, f"variable {variable['name']}: {variable['query']!r} is not label_values(metric, label)"
            queries.append((f"variable {variable['name']}", f"{match[1]}{{{match[2]}!=\"\"}}"))
    return queries


def test_counters_reach_prometheus_labelled_and_the_dashboard_queries_what_exists(make_stack, tmp_path):
    stack = make_stack()

    # Fixed counters are there before anything happens (an alert on a rate
    # of failures needs the series to exist at 0).
    families = scrape(stack)
    for name in ("warden_keys_fetch_failures", "warden_policy_fetch_failures", "warden_audit_dropped",
                 "warden_audit_send_failures", "warden_stream_trailers_withheld"):
        assert name in families, f"{name} is not defined before its first event"
    assert value(families, "warden_audit_dropped") == 0

    # A published policy (with a ticket approval rule): the version gauge follows it.
    admin = stack.token("root", ["warden-admins"])
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    stack.cli("policy", "push", str(path), "-m", "metrics test", token=admin)
    version = max(v["version"] for v in json.loads(stack.cli("policy", "list", "--json", token=admin).stdout)["policies"])
    wait_until("the gateway to enforce the published version",
               lambda: value(scrape(stack), "warden_policy_version") == version)

    alice = {"authorization": f"Bearer {stack.token('alice', ['engineering'])}"}
    finance = {"authorization": f"Bearer {stack.token('fred', ['finance'])}"}
    chat = lambda text, **extra: {"model": "gpt-4o", "messages": [{"role": "user", "content": text}], **extra}  # noqa: E731
    assert http("POST", f"{stack.gateway_url}{CHAT}", body=chat(f"mail {EMAIL}"), headers=alice)[0] == 200
    assert http("POST", f"{stack.gateway_url}{CHAT}", body=chat("hi"))[0] == 401
    assert http("POST", f"{stack.gateway_url}{CHAT}", body=chat("hi"), headers=finance)[0] == 403
    assert http("POST", f"{stack.gateway_url}{CHAT}", body=chat("look at the screen", tools=[COMPUTER_TOOL]), headers=alice)[0] == 200
    marker = uuid.uuid4().hex
    assert http("POST", f"{stack.gateway_url}{CHAT}", body=chat(f"customer export {marker}"), headers=alice)[0] == 403
    assert http("GET", f"{stack.gateway_url}/nowhere/v1/models", headers=alice)[0] == 404

    wait_until("the exchanges' counters", lambda: value(scrape(stack), "warden_requests", warden_provider="none") >= 1)
    families = scrape(stack)
    assert value(families, "warden_requests", warden_provider="openai", warden_decision="masked") >= 1
    assert value(families, "warden_requests", warden_provider="openai", warden_decision="unauthenticated") >= 1
    assert value(families, "warden_requests", warden_provider="openai", warden_decision="denied") >= 1
    assert value(families, "warden_rule", warden_rule="personal-data", warden_action="mask") >= 1
    assert value(families, "warden_tools", warden_decision="removed") >= 1
    assert value(families, "warden_approvals") >= 1
    assert labels_of(families, "warden_requests") == {"warden_provider", "warden_decision"}
    assert labels_of(families, "warden_rule") == {"warden_rule", "warden_action"}
    assert labels_of(families, "warden_approvals") == labels_of(families, "warden_tools") == {"warden_decision"}
    # The tags took the segments out of the names: no per-decision metric names remain.
    assert not [name for name in families if name.startswith(("warden_requests_", "warden_rule_"))]
    # Names only: no masked value (or the prompt's marker) reaches a metric.
    _, _, text = http("GET", f"{stack.admin_url}/stats/prometheus")
    assert EMAIL.encode() not in text and marker.encode() not in text

    problems = [f"{where}: {p}" for where, expr in dashboard_queries() for p in query_problems(expr, families)]
    assert not problems, "\n".join(problems)

    # The check itself can fail: a metric or a label the gateway does not have.
    assert query_problems("sum(rate(warden_requests_masked[1m]))", families)
    assert query_problems("sum by (warden_model) (rate(warden_requests[1m]))", families)
    assert query_problems("rate(warden_requests[$__range])", families)
