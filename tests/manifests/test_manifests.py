"""The deployment manifests in examples/{istio,envoy-gateway,kubernetes}.

Checked here (`scripts/test.sh manifests`, part of `make test`):

- every YAML file parses, every document is a resource (apiVersion, kind,
  metadata.name);
- every resource is validated against its schema, unknown fields refused:
  - Kubernetes core kinds (Namespace, Secret, Service, Deployment,
    StatefulSet, PodDisruptionBudget): PyPI `kubernetes-validate`
    (the API's OpenAPI schemas of Kubernetes 1.35), strict mode;
  - Istio (WasmPlugin, EnvoyFilter, Gateway, VirtualService, ServiceEntry,
    DestinationRule): npm `@kubernetes-models/istio`, and Gateway API
    (Gateway, HTTPRoute): npm `@kubernetes-models/gateway-api`, both
    generated from the projects' CRDs; unknown fields are refused by
    TypeScript's excess-property check against the same packages' types
    (validate.mjs);
  - NOT validated against a schema: Envoy Gateway's own kinds (Backend,
    EnvoyProxy, EnvoyExtensionPolicy, EnvoyPatchPolicy): no package of a
    registry reachable here carries them (cloudcoil has no Envoy Gateway
    models; the Python cloudcoil-models-istio for Python 3.11 stops at
    Istio 1.24, without FAIL_RELOAD). Their Warden configuration is still
    compiled (below) and their references checked. Nor are the Envoy
    structures inside EnvoyFilter/EnvoyPatchPolicy values (the CRDs leave
    them free-form);
- every embedded Warden plugin configuration (EnvoyFilter
  EXTENSION_CONFIG's `configuration`, WasmPlugin.spec.pluginConfig,
  EnvoyExtensionPolicy.spec.wasm[].config) compiles with the filter's own
  compiler: `target/local/warden filter validate FILE` on it as JSON;
- references agree: Secret names and keys, the variables the filter reads
  and the ones Envoy passes into the VM and has in its environment, the
  clusters the configuration names and the routes, ServiceEntries,
  Services and patched clusters that make them, selectors and the pods
  they should select, the placeholder digest.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DIRS = ["istio", "envoy-gateway", "kubernetes"]
WARDEN = ROOT / "target" / "local" / "warden"
NODE_DIR = Path(__file__).resolve().parent
K8S_VERSION = "1.35.0"
PLACEHOLDER = "0" * 64
CORE = {("v1", "Namespace"), ("v1", "Secret"), ("v1", "Service"), ("v1", "ConfigMap"),
        ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("policy/v1", "PodDisruptionBudget")}
NODE_GROUPS = {"networking.istio.io", "extensions.istio.io", "security.istio.io",
               "telemetry.istio.io", "gateway.networking.k8s.io"}
EG_GROUP = "gateway.envoyproxy.io"


def files() -> list[Path]:
    return sorted(p for d in DIRS for p in (EXAMPLES / d).rglob("*") if p.suffix in (".yaml", ".yml"))


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def resources(under: str | None = None) -> list[tuple[str, dict]]:
    out = []
    for path in files():
        rel = path.relative_to(EXAMPLES)
        if under and not str(rel).startswith(under):
            continue
        for i, doc in enumerate(load(path)):
            out.append((f"{rel}#{i}", doc))
    return out


def group(doc: dict) -> str:
    return doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""


# What one deployment applies together: the shared control plane and one mesh.
# (istio/wasmplugin-alternative is an alternative to istio/warden-filter.yaml.)
SETS = {
    "istio": ["kubernetes/common.yaml", "kubernetes/postgres/", "istio/gateway.yaml",
              "istio/providers.yaml", "istio/warden-filter.yaml"],
    "istio-wasmplugin": ["kubernetes/common.yaml", "kubernetes/postgres/", "istio/gateway.yaml",
                         "istio/providers.yaml", "istio/wasmplugin-alternative/"],
    "envoy-gateway": ["kubernetes/common.yaml", "kubernetes/postgres/", "envoy-gateway/"],
    "sqlite": ["kubernetes/common.yaml", "kubernetes/sqlite/"],
}


def deployment_set(name: str) -> list[tuple[str, dict]]:
    return [r for prefix in SETS[name] for r in resources(prefix)]


def find(docs, kind: str, name: str | None = None) -> list[dict]:
    return [d for _, d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


# --- parsing and schemas -------------------------------------------------------

def test_every_manifest_parses_into_resources():
    assert files(), "no manifests under examples/"
    for d in DIRS:
        assert list((EXAMPLES / d).rglob("*.yaml")), f"examples/{d} has no manifests"
    for where, doc in resources():
        assert isinstance(doc, dict), f"{where}: not a mapping"
        for field in ("apiVersion", "kind"):
            assert isinstance(doc.get(field), str), f"{where}: no {field}"
        assert doc.get("metadata", {}).get("name"), f"{where}: no metadata.name"
        assert doc["metadata"].get("namespace") in (None, "warden") or doc["kind"] == "Namespace", where


def test_every_resource_has_a_schema_here_or_is_a_known_gap():
    for where, doc in resources():
        key = (doc["apiVersion"], doc["kind"])
        assert key in CORE or group(doc) in NODE_GROUPS or group(doc) == EG_GROUP, \
            f"{where}: {key} is validated by nothing; add its schema to this test"


def test_core_kinds_match_the_kubernetes_schema_strictly():
    checked = 0
    for where, doc in resources():
        if (doc["apiVersion"], doc["kind"]) in CORE:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where}: {doc['kind']}: {str(e).splitlines()[0]} at {list(e.path)}")
            checked += 1
    assert checked >= 8


def test_strict_mode_refuses_an_unknown_field():
    # The check above is only worth something if strict mode bites.
    doc = find(resources("kubernetes/postgres/"), "Deployment")[0]
    bad = json.loads(json.dumps(doc))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def node_validate(docs: list[tuple[str, dict]]) -> subprocess.CompletedProcess:
    node_modules = NODE_DIR / "node_modules" / "@kubernetes-models"
    assert node_modules.is_dir(), "tests/manifests/node_modules missing: run scripts/bootstrap.sh test"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([{"where": w, "doc": d} for w, d in docs], f)
    try:
        return subprocess.run(["node", str(NODE_DIR / "validate.mjs"), f.name],
                              capture_output=True, text=True, timeout=300)
    finally:
        os.unlink(f.name)


def test_istio_and_gateway_api_kinds_match_their_crd_schemas_strictly():
    docs = [(w, d) for w, d in resources() if group(d) in NODE_GROUPS]
    assert {d["kind"] for _, d in docs} >= {"EnvoyFilter", "WasmPlugin", "Gateway", "VirtualService",
                                            "ServiceEntry", "DestinationRule", "HTTPRoute"}
    out = node_validate(docs)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(docs)} resources checked, 0 problems" in out.stdout


def test_the_crd_check_refuses_unknown_fields_and_bad_enums():
    wasm = find(resources("istio/"), "WasmPlugin")[0]
    route = find(resources("envoy-gateway/"), "HTTPRoute")[0]
    typo = json.loads(json.dumps(wasm))
    typo["spec"]["failstrategy"] = typo["spec"].pop("failStrategy")
    bad_enum = json.loads(json.dumps(wasm))
    bad_enum["spec"]["vmConfig"]["env"][0]["valueFrom"] = "SECRET"   # Istio has no Secret source
    bad_route = json.loads(json.dumps(route))
    bad_route["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Prefix"
    out = node_validate([("typo", typo), ("enum", bad_enum), ("route", bad_route)])
    assert out.returncode == 1
    for where, what in (("typo", "failstrategy"), ("enum", "valueFrom"), ("route", "type")):
        assert any(line.startswith(where) and what in line for line in out.stdout.splitlines()), out.stdout


# --- the embedded Warden configurations ----------------------------------------

def plugin_configs() -> list[tuple[str, dict]]:
    """(where, configuration as JSON) for every Warden configuration in a manifest."""
    out = []
    for where, doc in resources():
        if doc["kind"] == "EnvoyFilter":
            for i, p in enumerate(doc["spec"]["configPatches"]):
                if p["applyTo"] == "EXTENSION_CONFIG":
                    cfg = p["patch"]["value"]["typed_config"]["config"]
                    value = cfg["configuration"]["value"]
                    out.append((f"{where} configPatches[{i}]", yaml.safe_load(value)))
        elif doc["kind"] == "WasmPlugin":
            out.append((f"{where} spec.pluginConfig", doc["spec"]["pluginConfig"]))
        elif doc["kind"] == "EnvoyExtensionPolicy":
            for i, w in enumerate(doc["spec"]["wasm"]):
                out.append((f"{where} spec.wasm[{i}].config", w["config"]))
    return out


def filter_validate(config: dict) -> subprocess.CompletedProcess:
    assert WARDEN.exists(), f"{WARDEN} is not built (make build)"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
    try:
        out = subprocess.run([str(WARDEN), "filter", "validate", f.name],
                             capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(f.name)
    if out.returncode != 0 and re.search(r"unrecognized subcommand '?filter", out.stderr):
        pytest.fail("`warden filter validate` is missing from target/local/warden: the embedded "
                    "configurations cannot be compiled (the subcommand reads a JSON plugin "
                    "configuration from a file and exits non-zero with its problems)")
    return out


def test_every_embedded_plugin_configuration_compiles():
    configs = plugin_configs()
    assert len(configs) == 3, [w for w, _ in configs]
    for where, config in configs:
        out = filter_validate(config)
        assert out.returncode == 0, f"{where}: the filter refuses it:\n{out.stderr}"


def test_the_filter_compiler_refuses_a_broken_configuration():
    config = json.loads(json.dumps(plugin_configs()[0][1]))
    config["providers"][0]["credentail"] = config["providers"][0].pop("credential")
    out = filter_validate(config)
    assert out.returncode != 0 and out.stderr.strip(), out


def test_the_wasmplugin_alternative_carries_the_envoyfilter_configuration():
    configs = dict(plugin_configs())
    envoyfilter = next(c for w, c in configs.items() if w.startswith("istio/warden-filter.yaml"))
    wasmplugin = next(c for w, c in configs.items() if "wasmplugin-alternative" in w)
    assert wasmplugin == envoyfilter


# --- references ----------------------------------------------------------------

def pod_specs(docs) -> list[tuple[dict, dict]]:
    """(labels, pod spec) of every workload."""
    return [(d["spec"]["template"]["metadata"].get("labels", {}), d["spec"]["template"]["spec"])
            for _, d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def secret_keys(docs) -> dict[str, set[str]]:
    return {d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
            for _, d in docs if d["kind"] == "Secret"}


def env_refs(node) -> list[dict]:
    if isinstance(node, dict):
        return ([node["secretKeyRef"]] if "secretKeyRef" in node else []) + \
            [r for v in node.values() for r in env_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in env_refs(v)]
    return []


@pytest.mark.parametrize("name", sorted(SETS))
def test_secret_references_exist(name):
    docs = deployment_set(name)
    secrets = secret_keys(docs)
    refs = [r for _, d in docs for r in env_refs(d)]
    assert refs
    for ref in refs:
        assert ref["name"] in secrets, f"{name}: Secret {ref['name']} is referenced but not defined"
        assert ref["key"] in secrets[ref["name"]], f"{name}: Secret {ref['name']} has no key {ref['key']}"
    for keys in secrets.values():
        for key in keys:
            assert "REPLACE-ME" in str(next(d for _, d in docs if d["kind"] == "Secret" and key in
                                            d.get("stringData", {}))["stringData"][key]), \
                f"{name}: Secret key {key} holds something other than an obvious placeholder"


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("name", sorted(SETS))
def test_selectors_select_pods_and_service_ports_exist(name):
    docs = deployment_set(name)
    pods = pod_specs(docs)
    for _, d in docs:
        kind = d["kind"]
        if kind == "Service":
            matching = [spec for labels, spec in pods if selects(d["spec"]["selector"], labels)]
            if d["metadata"]["name"] == "warden-gateway":
                assert matching, f"{name}: Service warden-gateway selects no pod"
                continue
            assert matching, f"{name}: Service {d['metadata']['name']} selects no pod"
            ports = {p.get("name") for spec in matching for c in spec["containers"] for p in c.get("ports", [])}
            for port in d["spec"]["ports"]:
                assert port["targetPort"] in ports, f"{name}: targetPort {port['targetPort']} is no container port"
        elif kind == "PodDisruptionBudget":
            assert any(selects(d["spec"]["selector"]["matchLabels"], l) for l, _ in pods), \
                f"{name}: PDB {d['metadata']['name']} selects no pod"
        elif kind == "Gateway" and group(d) == "networking.istio.io":
            assert any(selects(d["spec"]["selector"], l) for l, _ in pods), f"{name}: Istio Gateway selects no pod"
        elif kind in ("EnvoyFilter",):
            assert any(selects(d["spec"]["workloadSelector"]["labels"], l) for l, _ in pods)
        elif kind == "WasmPlugin":
            assert any(selects(d["spec"]["selector"]["matchLabels"], l) for l, _ in pods)
    for labels, spec in pods:
        for c in spec["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["path"] == "/healthz"   # the control plane's health route


def control_plane_service(docs) -> tuple[str, int]:
    svc = find(docs, "Service", "warden-control-plane")[0]
    return f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local", svc["spec"]["ports"][0]["port"]


def vm_and_env(name: str, docs) -> tuple[dict, set[str], set[str]]:
    """(plugin configuration, variables passed into the VM, variables in Envoy's environment)."""
    if name.startswith("istio"):
        gateway = [spec for labels, spec in pod_specs(docs) if labels.get("istio") == "warden-gateway"][0]
        envoy_env = {e["name"] for c in gateway["containers"] if c["name"] == "istio-proxy" for e in c.get("env", [])}
        if name == "istio":
            ef = find(docs, "EnvoyFilter")[0]
            p = next(p for p in ef["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG")
            cfg = p["patch"]["value"]["typed_config"]["config"]
            assert cfg["allow_on_headers_stop_iteration"] is True
            assert cfg["failure_policy"] in ("FAIL_RELOAD", "FAIL_CLOSED")
            inserted = [q for q in ef["spec"]["configPatches"] if q["applyTo"] == "HTTP_FILTER"][0]
            assert inserted["patch"]["value"]["name"] == p["patch"]["value"]["name"], "ECDS name mismatch"
            return (yaml.safe_load(cfg["configuration"]["value"]),
                    set(cfg["vm_config"]["environment_variables"]["host_env_keys"]), envoy_env)
        wp = find(docs, "WasmPlugin")[0]["spec"]
        assert wp["failStrategy"] != "FAIL_OPEN"
        return wp["pluginConfig"], {e["name"] for e in wp["vmConfig"]["env"] if e["valueFrom"] == "HOST"}, envoy_env
    proxy = find(docs, "EnvoyProxy")[0]
    envoy_env = {e["name"] for e in proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"]}
    wasm = find(docs, "EnvoyExtensionPolicy")[0]["spec"]["wasm"][0]
    assert wasm["failOpen"] is False
    return wasm["config"], set(wasm["env"]["hostKeys"]), envoy_env


@pytest.mark.parametrize("name", ["istio", "istio-wasmplugin", "envoy-gateway"])
def test_the_filter_reads_only_variables_envoy_has_and_passes_in(name):
    docs = deployment_set(name)
    config, passed, envoy_env = vm_and_env(name, docs)
    wanted = {p["credential"]["env"] for p in config["providers"] if "credential" in p}
    wanted |= {config["control_plane"].get("gateway_key_env", "WARDEN_GATEWAY_SECRET"),
               config.get("hash_key_env", "WARDEN_HASH_KEY")}
    assert wanted <= passed, f"{name}: not passed into the VM: {wanted - passed}"
    assert passed <= envoy_env, f"{name}: passed into the VM but not in Envoy's environment: {passed - envoy_env}"


@pytest.mark.parametrize("name", ["istio", "istio-wasmplugin"])
def test_istio_clusters_are_the_ones_istio_makes(name):
    docs = deployment_set(name)
    config, _, _ = vm_and_env(name, docs)
    entries = {(h, p["number"]) for d in find(docs, "ServiceEntry") for h in d["spec"]["hosts"] for p in d["spec"]["ports"]}
    tls = {d["spec"]["host"] for d in find(docs, "DestinationRule") if d["spec"]["trafficPolicy"]["tls"]["mode"] == "SIMPLE"}
    vs = find(docs, "VirtualService")[0]
    for p in config["providers"]:
        _, port, _, host = p["cluster"].split("|")
        assert (host, int(port)) in entries and host in tls, f"{p['cluster']}: no ServiceEntry with TLS origination"
        route = next(r for r in vs["spec"]["http"] if r.get("match", [{}])[0].get("uri", {}).get("prefix") == p["path_prefix"])
        assert route["rewrite"]["uri"] == "/"
        dest = route["route"][0]["destination"]
        assert (dest["host"], dest["port"]["number"]) == (host, int(port)), f"{p['path_prefix']} routes elsewhere"
    for issuer in config["authentication"]["issuers"]:
        _, port, _, host = issuer["jwks"]["cluster"].split("|")
        assert (host, int(port)) in entries and host in tls
        assert issuer["issuer"].startswith(f"https://{host}/")
    host, port = control_plane_service(docs)
    assert config["control_plane"]["cluster"] == f"outbound|{port}||{host}"
    assert config["control_plane"]["authority"] == f"{host}:{port}"
    gw = find(docs, "Gateway")[0]
    assert vs["spec"]["gateways"] == [gw["metadata"]["name"]]
    assert gw["spec"]["servers"][0]["port"]["number"] in {p["port"] for p in find(docs, "Service", "warden-gateway")[0]["spec"]["ports"]}


def test_envoy_gateway_clusters_and_patches_name_what_envoy_gateway_generates():
    docs = deployment_set("envoy-gateway")
    config, _, _ = vm_and_env("envoy-gateway", docs)
    backends = {d["metadata"]["name"] for d in find(docs, "Backend")}
    for p in config["providers"]:
        kind, ns, route_name, _, index = p["cluster"].split("/")
        assert kind == "httproute"
        route = find(docs, "HTTPRoute", route_name)[0]
        assert route["metadata"]["namespace"] == ns
        rule = route["spec"]["rules"][int(index)]
        assert rule["matches"][0]["path"] == {"type": "PathPrefix", "value": p["path_prefix"]}
        assert rule["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"] == "/"
        assert all(ref["name"] in backends for ref in rule["backendRefs"])
    patch = find(docs, "EnvoyPatchPolicy")[0]["spec"]["jsonPatches"]
    added = {p["operation"]["value"]["name"] for p in patch if p["type"].endswith("Cluster") and "path" not in p["operation"]}
    assert config["control_plane"]["cluster"] in added
    assert {i["jwks"]["cluster"] for i in config["authentication"]["issuers"]} <= added
    cp = next(p["operation"]["value"] for p in patch if p["name"] == config["control_plane"]["cluster"])
    host, port = control_plane_service(docs)
    addr = cp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (addr["address"], addr["port_value"]) == (host, port)
    assert config["control_plane"]["authority"] == f"{host}:{port}"
    policy = find(docs, "EnvoyExtensionPolicy")[0]
    filter_name = f"envoy.filters.http.wasm/envoyextensionpolicy/{policy['metadata']['namespace']}/{policy['metadata']['name']}/wasm/0"
    header_stop = [p for p in patch if p["operation"].get("path") == "/allow_on_headers_stop_iteration"]
    assert header_stop and header_stop[0]["operation"]["value"] is True
    assert filter_name in header_stop[0]["operation"]["jsonPath"]
    listener = find(docs, "Gateway")[0]["spec"]["listeners"][0]
    assert all(p["name"] == f"tcp-{listener['port']}" for p in patch if p["type"].endswith("Listener"))


def test_every_artifact_digest_is_the_documented_placeholder():
    seen = 0
    for path in files():
        for digest in re.findall(r"sha256:\s*\"?([0-9A-Za-z]+)\"?", path.read_text()):
            assert digest == PLACEHOLDER, f"{path}: sha256 {digest} is not the placeholder (render, don't commit)"
            seen += 1
    assert seen == 3


def test_render_examples_pins_the_digest_and_changes_nothing_else(tmp_path):
    digest = "ab" * 32
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "render-examples.py"), "--oci-digest", f"sha256:{digest}",
                          "--image", "registry.example.com/warden-filter:9.9.9", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for path in files():
        rendered = (tmp_path / path.relative_to(EXAMPLES)).read_text()
        assert PLACEHOLDER not in rendered and "OWNER" not in rendered.split("oci://")[-1].split()[0]
        assert rendered == path.read_text().replace(PLACEHOLDER, digest).replace(
            "ghcr.io/OWNER/warden-filter:0.1.0", "registry.example.com/warden-filter:9.9.9")
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "render-examples.py"), "--oci-digest", "1234",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode != 0 and not (tmp_path / "x").exists()
