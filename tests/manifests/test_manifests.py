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
  EXTENSION_CONFIG's `configuration`, which must be JSON text in a
  StringValue or a Struct, as the filter reads no YAML; WasmPlugin.spec.pluginConfig,
  EnvoyExtensionPolicy.spec.wasm[].config) compiles with the filter's own
  compiler: `target/local/warden filter validate FILE` on it as JSON;
- metrics: each mesh example merges exactly envoy/envoy.yaml's `stats_tags`
  into its proxies' bootstrap (Istio: the gateway pod's
  sidecar.istio.io/bootstrapOverride ConfigMap; Envoy Gateway:
  EnvoyProxy.spec.bootstrap, type Merge); the tags, applied to sample
  counter names the way Envoy's tag extraction does (Python `re`, within the
  regex subset RE2 and std::regex share, also checked), give the metric
  names and labels the dashboard queries; the gateways are scraped where
  their mesh serves Prometheus; the Grafana sidecar ConfigMap embeds
  examples/grafana/warden-gateway.json byte for byte;
- the control plane workloads run the image as scripts/oci.py builds it
  (user, entrypoint `warden serve` plus arguments it parses, port, data
  directory);
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

def string_value_configuration(configuration: dict) -> dict:
    """The plugin configuration in an Envoy `configuration` Any as the filter
    reads it: a StringValue must hold JSON text (the filter has no YAML
    parser, src: filter/engine/src/document.rs without the `yaml` feature),
    a Struct its value. ValueError for anything else. (`warden filter
    validate` cannot tell: the control plane's build reads YAML text too.)"""
    kind = configuration.get("@type")
    if kind == "type.googleapis.com/google.protobuf.StringValue":
        value = configuration["value"]
        if not value.lstrip().startswith("{"):
            raise ValueError("a StringValue configuration that is not JSON text: the filter refuses it")
        return json.loads(value)
    if kind == "type.googleapis.com/google.protobuf.Struct":
        return configuration["value"]
    raise ValueError(f"a configuration of type {kind}: the filter reads a StringValue or a Struct")


def plugin_configs() -> list[tuple[str, dict]]:
    """(where, configuration as JSON) for every Warden configuration in a manifest."""
    out = []
    for where, doc in resources():
        if doc["kind"] == "EnvoyFilter":
            for i, p in enumerate(doc["spec"]["configPatches"]):
                if p["applyTo"] == "EXTENSION_CONFIG":
                    cfg = p["patch"]["value"]["typed_config"]["config"]
                    try:
                        config = string_value_configuration(cfg["configuration"])
                    except ValueError as e:
                        pytest.fail(f"{where} configPatches[{i}]: {e}")
                    out.append((f"{where} configPatches[{i}]", config))
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


def test_a_yaml_string_value_is_refused_as_the_filter_refuses_it():
    ef = find(resources("istio/warden-filter.yaml"), "EnvoyFilter")[0]
    cfg = next(p for p in ef["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG")
    configuration = cfg["patch"]["value"]["typed_config"]["config"]["configuration"]
    config = string_value_configuration(configuration)
    as_yaml = {**configuration, "value": yaml.safe_dump(config)}
    with pytest.raises(ValueError, match="not JSON text"):
        string_value_configuration(as_yaml)
    with pytest.raises(ValueError, match="StringValue or a Struct"):
        string_value_configuration({**configuration, "@type": "type.googleapis.com/google.protobuf.BytesValue"})
    assert string_value_configuration({"@type": "type.googleapis.com/google.protobuf.Struct", "value": config}) == config


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
            return (string_value_configuration(cfg["configuration"]),
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


def test_render_examples_pins_the_control_plane_image_by_digest(tmp_path):
    """`warden-control-plane:latest` becomes registry/name@sha256:<digest>
    (from a layout's index, as dist/oci/warden-control-plane has one)."""
    layout = tmp_path / "layout"
    layout.mkdir()
    cp_digest = "cd" * 32
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{cp_digest}", "size": 1}]}))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "render-examples.py"), "--oci-digest", "ab" * 32,
                          "--control-plane-image", "registry.example.com:5000/warden-control-plane:0.1.0",
                          "--control-plane-layout", str(layout), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    pinned = [p for p in (tmp_path / "out").rglob("*.yaml")
              if f"registry.example.com:5000/warden-control-plane@sha256:{cp_digest}" in p.read_text()]
    assert pinned, "no manifest names the pinned control plane image"
    assert not [p for p in (tmp_path / "out").rglob("*.yaml") if "warden-control-plane:latest" in p.read_text()]
    # Without a digest the image is not pinned, and nothing is written.
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "render-examples.py"), "--oci-digest", "ab" * 32,
                          "--control-plane-image", "registry.example.com/warden-control-plane",
                          "--out", str(tmp_path / "y")], capture_output=True, text=True)
    assert bad.returncode != 0 and not (tmp_path / "y").exists()


# --- metrics: the stats tags, the scrape, the dashboard -----------------------

ENVOY_YAML = ROOT / "envoy" / "envoy.yaml"
DASHBOARD = EXAMPLES / "grafana" / "warden-gateway.json"
# The file istio-agent reads when the pod has sidecar.istio.io/bootstrapOverride
# (Istio's gateway-injection-template.yaml: ISTIO_BOOTSTRAP_OVERRIDE, the
# ConfigMap mounted at /etc/istio/custom-bootstrap).
ISTIO_OVERRIDE_KEY = "custom_bootstrap.json"


def envoy_stats_tags() -> list[dict]:
    return yaml.safe_load(ENVOY_YAML.read_text())["stats_config"]["stats_tags"]


def istio_gateway(docs) -> dict:
    return next(d for _, d in docs if d["kind"] == "Deployment"
                and d["spec"]["template"]["metadata"].get("labels", {}).get("istio") == "warden-gateway")


def stats_tag_problems(docs) -> list[str]:
    """Why a mesh example's Envoy would not label the counters as envoy/envoy.yaml
    does ([] if it would). Each mesh merges a bootstrap fragment into its own;
    the fragment must be exactly envoy.yaml's stats_tags and nothing more."""
    want = {"stats_config": {"stats_tags": envoy_stats_tags()}}
    problems = []
    # Istio: the pod's annotation names a ConfigMap holding custom_bootstrap.json.
    pod = istio_gateway(docs)["spec"]["template"]["metadata"]
    name = pod.get("annotations", {}).get("sidecar.istio.io/bootstrapOverride")
    maps = find(docs, "ConfigMap", name) if name else []
    if not maps:
        problems.append(f"istio: the gateway's bootstrapOverride names no ConfigMap ({name!r})")
    elif ISTIO_OVERRIDE_KEY not in maps[0].get("data", {}):
        problems.append(f"istio: ConfigMap {name} has no {ISTIO_OVERRIDE_KEY}")
    elif json.loads(maps[0]["data"][ISTIO_OVERRIDE_KEY]) != want:
        problems.append(f"istio: ConfigMap {name} {ISTIO_OVERRIDE_KEY} is not envoy/envoy.yaml's stats_tags")
    # Envoy Gateway: EnvoyProxy.spec.bootstrap, merged (Replace would drop
    # Envoy Gateway's own bootstrap, xDS included).
    bootstrap = find(docs, "EnvoyProxy")[0]["spec"].get("bootstrap")
    if not bootstrap or bootstrap.get("type") != "Merge":
        problems.append(f"envoy-gateway: EnvoyProxy.spec.bootstrap is not of type Merge ({bootstrap and bootstrap.get('type')})")
    elif yaml.safe_load(bootstrap["value"]) != want:
        problems.append("envoy-gateway: EnvoyProxy.spec.bootstrap.value is not envoy/envoy.yaml's stats_tags")
    return problems


def test_each_mesh_example_merges_exactly_envoy_yamls_stats_tags():
    assert len(envoy_stats_tags()) == 4
    assert stats_tag_problems(resources()) == []


def test_the_stats_tag_check_finds_drift():
    docs = json.loads(json.dumps(resources()))
    cm = find(docs, "ConfigMap", istio_gateway(docs)["spec"]["template"]["metadata"]["annotations"]
              ["sidecar.istio.io/bootstrapOverride"])[0]
    fragment = json.loads(cm["data"][ISTIO_OVERRIDE_KEY])
    fragment["stats_config"]["stats_tags"][0]["regex"] = fragment["stats_config"]["stats_tags"][0]["regex"].replace("+", "*")
    cm["data"][ISTIO_OVERRIDE_KEY] = json.dumps(fragment)
    find(docs, "EnvoyProxy")[0]["spec"]["bootstrap"]["type"] = "Replace"
    problems = stats_tag_problems(docs)
    assert len(problems) == 2 and problems[0].startswith("istio:") and problems[1].startswith("envoy-gateway:"), problems
    istio_gateway(docs)["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/bootstrapOverride"] = "nothing"
    assert "names no ConfigMap" in stats_tag_problems(docs)[0]


def extract_tags(name: str, tags: list[dict]) -> tuple[str, dict[str, str]]:
    """What Envoy's tag extraction makes of a stat name (source/common/stats/
    tag_extractor_impl.cc): every tag's regex is searched in the full name; on
    a match the second capture group is the tag's value and the first is cut
    out of the name. Cuts of several tags add up."""
    cut: set[int] = set()
    values = {}
    for tag in tags:
        match = re.search(tag["regex"], name)
        if match:
            values[tag["tag_name"]] = match.group(2)
            cut.update(range(*match.span(1)))
    return "".join(c for i, c in enumerate(name) if i not in cut), values


def prometheus_name(extracted: str) -> str:
    """Envoy's Prometheus name of a stat of the custom namespace `wasmcustom`:
    the namespace dropped, no `envoy_` prefix, dots as underscores."""
    return extracted.removeprefix("wasmcustom.").replace(".", "_")


# (stat name as the filter's counters make it, metric name, labels).
TAG_SAMPLES = [
    ("wasmcustom.warden.requests.openai.masked", "warden_requests",
     {"warden_provider": "openai", "warden_decision": "masked"}),
    ("wasmcustom.warden.requests.none.unauthenticated", "warden_requests",
     {"warden_provider": "none", "warden_decision": "unauthenticated"}),
    ("wasmcustom.warden.requests.azure_eu-2.require_approval", "warden_requests",
     {"warden_provider": "azure_eu-2", "warden_decision": "require_approval"}),
    ("wasmcustom.warden.rule.personal-data.mask", "warden_rule",
     {"warden_rule": "personal-data", "warden_action": "mask"}),
    ("wasmcustom.warden.rule.export-ticket.require_approval", "warden_rule",
     {"warden_rule": "export-ticket", "warden_action": "require_approval"}),
    ("wasmcustom.warden.tools.removed", "warden_tools", {"warden_decision": "removed"}),
    ("wasmcustom.warden.approvals.denied", "warden_approvals", {"warden_decision": "denied"}),
    # The fixed counters and gauges keep their names and get no tag.
    ("wasmcustom.warden.audit.dropped", "warden_audit_dropped", {}),
    ("wasmcustom.warden.policy.version", "warden_policy_version", {}),
    ("wasmcustom.warden.keys.fetch_failures", "warden_keys_fetch_failures", {}),
    ("wasmcustom.warden.stream.trailers_withheld", "warden_stream_trailers_withheld", {}),
]
# Envoy's own stats are left alone.
UNTAGGED = ["cluster.provider_openai.upstream_rq_total", "http.warden.downstream_rq_2xx",
            "wasm.remote_load_fetch_successes", "warden.requests.openai.masked"]


def tag_sample_problems(tags: list[dict]) -> list[str]:
    problems = []
    for name, metric, labels in TAG_SAMPLES:
        extracted, values = extract_tags(name, tags)
        if (prometheus_name(extracted), values) != (metric, labels):
            problems.append(f"{name}: {prometheus_name(extracted)} {values}, not {metric} {labels}")
    for name in UNTAGGED:
        extracted, values = extract_tags(name, tags)
        if (extracted, values) != (name, {}):
            problems.append(f"{name}: tagged {values} as {extracted}")
    return problems


def test_the_stats_tags_extract_the_labels_from_real_names():
    tags = envoy_stats_tags()
    assert tag_sample_problems(tags) == []
    # The labelled metrics are the ones the dashboard queries.
    board = DASHBOARD.read_text()
    for _, metric, labels in TAG_SAMPLES:
        if labels:
            assert re.search(rf"\b{metric}\{{", board), f"the dashboard never queries {metric}"
    # ...and the Istio gateway's stats inclusion keeps every one of them
    # (Envoy's stats_matcher safe_regex: a full match).
    matcher = yaml.safe_load(istio_gateway(resources())["spec"]["template"]["metadata"]["annotations"]
                             ["proxy.istio.io/config"])["proxyStatsMatcher"]["inclusionRegexps"]
    for name, _, _ in TAG_SAMPLES:
        assert any(re.fullmatch(r, name) for r in matcher), f"Istio's stats matcher drops {name}"


def test_the_tag_extraction_check_fails_on_a_wrong_regex():
    tags = json.loads(json.dumps(envoy_stats_tags()))
    provider = next(t for t in tags if t["tag_name"] == "warden_provider")
    original = dict(provider)
    # The groups around the decision instead of the provider: a value, but the wrong one.
    provider["regex"] = r"^wasmcustom\.warden\.requests\.[^.]+(\.([^.]+))$"
    problems = tag_sample_problems(tags)
    assert problems and all("warden.requests." in p for p in problems), problems
    # Without its `^wasmcustom\.` anchor, it would tag a stat of Envoy's own too.
    loose = [t if t != original else {**t, "regex": r"warden\.requests(\.([^.]+))\.[^.]+$"}
             for t in envoy_stats_tags()]
    assert tag_sample_problems(loose) == ["warden.requests.openai.masked: tagged {'warden_provider': 'openai'} "
                                          "as warden.requests.masked"]


# What both of Envoy's regex engines for stats tags read alike (std::regex
# ECMAScript and RE2) and Python's `re` too, so the check above means what
# Envoy does: literals, `\.`-style escapes of punctuation, `.`, bracket classes
# without escapes or POSIX names, groups and non-capturing groups, `|`,
# anchors and the greedy quantifiers. No lookaround, backreference, named
# group, inline flag or class shorthand (\d, \w differ between the engines
# with Unicode input).
PORTABLE_TOKEN = r"(?:\\[.^$()\[\]{}|*+?\\/-]|\[\^?[^\]\\\[:]+\]|\(\?:|[()|^$*+?.]|[A-Za-z0-9_ ;,=/-])"


def regex_portability_problems(tags: list[dict]) -> list[str]:
    problems = []
    names = [t["tag_name"] for t in tags]
    if len(set(names)) != len(names):
        problems.append(f"a tag name twice (Envoy would apply only the first that matches): {names}")
    for tag in tags:
        regex = tag["regex"]
        if not tag["tag_name"].startswith("warden_"):
            problems.append(f"{tag['tag_name']}: not warden_*, may collide with the mesh's own tags")
        if not re.fullmatch(f"{PORTABLE_TOKEN}*", regex) or re.search(r"\((?!\?:)\?", regex):
            problems.append(f"{tag['tag_name']}: {regex!r} leaves the subset RE2 and std::regex share")
        elif re.compile(regex).groups != 2:
            problems.append(f"{tag['tag_name']}: {regex!r} has not exactly two capture groups")
        elif not (regex.startswith("^wasmcustom\\.warden\\.") and regex.endswith("$")):
            problems.append(f"{tag['tag_name']}: {regex!r} is not anchored to the filter's counters")
    return problems


def test_the_stats_tag_regexes_stay_in_the_common_subset():
    assert regex_portability_problems(envoy_stats_tags()) == []


def test_the_portability_check_refuses_what_one_engine_lacks():
    base = envoy_stats_tags()[0]
    for bad in (r"^wasmcustom\.warden\.requests(?=\.)(\.([^.]+))\.[^.]+$",      # lookahead: not RE2
                r"^wasmcustom\.warden\.requests(?P<p>\.([^.]+))\.[^.]+$",       # named group
                r"^wasmcustom\.warden\.requests(\.(\w+))\.\w+$",                # class shorthand
                r"^wasmcustom\.warden\.requests(\.([[:alnum:]]+))\.[^.]+$",     # POSIX class
                r"^wasmcustom\.warden\.requests(\.([^.]+))\.([^.]+)$",          # three groups
                r"wasmcustom\.warden\.requests(\.([^.]+))\.[^.]+"):             # not anchored
        assert regex_portability_problems([{**base, "regex": bad}]), bad
    assert regex_portability_problems([base, base])   # the same name twice


def dashboard_configmap_problems(docs) -> list[str]:
    maps = [d for _, d in docs if d["kind"] == "ConfigMap"
            and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    if len(maps) != 1:
        return [f"{len(maps)} ConfigMaps labelled grafana_dashboard: \"1\", not 1"]
    data = maps[0].get("data", {})
    if list(data) != ["warden-gateway.json"] or data["warden-gateway.json"] != DASHBOARD.read_text():
        return [f"ConfigMap {maps[0]['metadata']['name']} is not examples/grafana/warden-gateway.json byte for "
                "byte: regenerate it (its comment says how it is made)"]
    return []


def test_the_dashboard_configmap_is_the_dashboard():
    assert dashboard_configmap_problems(resources()) == []
    json.loads(DASHBOARD.read_text())


def test_the_dashboard_check_finds_an_edited_copy():
    docs = json.loads(json.dumps(resources()))
    cm = next(d for _, d in docs if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"].get("labels", {}))
    cm["data"]["warden-gateway.json"] = cm["data"]["warden-gateway.json"].replace("warden_requests", "warden_request", 1)
    assert dashboard_configmap_problems(docs)
    cm["metadata"]["labels"]["grafana_dashboard"] = "0"
    assert dashboard_configmap_problems(docs)


def test_the_gateways_are_scraped_where_their_mesh_serves_prometheus():
    docs = resources()
    # Istio: pilot-agent's merged endpoint (status port 15020), as the injector
    # would set it with metrics merging on (pkg/kube/inject/webhook.go).
    pod = istio_gateway(docs)["spec"]["template"]["metadata"]["annotations"]
    assert (pod["prometheus.io/scrape"], pod["prometheus.io/port"], pod["prometheus.io/path"]) == \
        ("true", "15020", "/stats/prometheus")
    # Envoy Gateway scrapes by itself (port 19001); turning Prometheus off would lose it.
    proxy = find(docs, "EnvoyProxy")[0]["spec"]
    assert not proxy.get("telemetry", {}).get("metrics", {}).get("prometheus", {}).get("disable", False)


# --- the control plane's image ---------------------------------------------------

def oci_script():
    """scripts/oci.py as a module: what the image is built with."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("warden_oci", ROOT / "scripts" / "oci.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def control_plane_image_problems(docs) -> list[str]:
    """Where a control plane workload runs the image otherwise than scripts/oci.py
    builds it: the entrypoint (`warden serve`) kept and given arguments `warden
    serve` accepts, the image's user, port and data directory."""
    oci = oci_script()
    problems = []
    workloads = [d for _, d in docs if d["kind"] in ("Deployment", "StatefulSet")
                 and d["metadata"]["name"] == "warden-control-plane"]
    if not workloads:
        return ["no control plane workload"]
    for w in workloads:
        where = f"{w['kind']} {w['metadata']['name']}"
        pod = w["spec"]["template"]["spec"]
        (c,) = [c for c in pod["containers"] if c["name"] == "warden"]
        security = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
        if (security.get("runAsUser"), security.get("runAsGroup")) != (oci.CONTROL_PLANE_UID, oci.CONTROL_PLANE_UID):
            problems.append(f"{where}: runs as {security.get('runAsUser')}:{security.get('runAsGroup')}, "
                            f"the image's user is {oci.CONTROL_PLANE_UID}")
        if "command" in c:
            problems.append(f"{where}: `command` replaces the image's entrypoint")
        # The entrypoint's `serve` and the container's args, as `warden` parses
        # them (`--help` after them exits 0 only if they parse).
        argv = [str(WARDEN), "serve", *c.get("args", []), "--help"]
        parsed = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if parsed.returncode != 0:
            problems.append(f"{where}: `warden serve {' '.join(c.get('args', []))}` does not parse: "
                            f"{parsed.stderr.strip().splitlines()[0] if parsed.stderr.strip() else parsed.returncode}")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        listen = env.get("WARDEN_LISTEN", f"0.0.0.0:{oci.CONTROL_PLANE_PORT}")
        ports = {p["containerPort"] for p in c.get("ports", [])}
        if ports != {int(listen.rsplit(":", 1)[1])} or not listen.startswith("0.0.0.0:"):
            problems.append(f"{where}: listens on {listen}, container ports {ports}")
        data_dir = env.get("WARDEN_DATA_DIR", oci.CONTROL_PLANE_DATA_DIR)
        if data_dir != oci.CONTROL_PLANE_DATA_DIR or \
                oci.CONTROL_PLANE_DATA_DIR not in {m["mountPath"] for m in c.get("volumeMounts", [])}:
            problems.append(f"{where}: data in {data_dir}, no volume at the image's {oci.CONTROL_PLANE_DATA_DIR}")
        if not env.get("WARDEN_PUBLIC_URL", "").startswith("https://"):
            problems.append(f"{where}: no WARDEN_PUBLIC_URL")
    return problems


def test_control_plane_workloads_run_the_image_as_built():
    docs = resources("kubernetes/")
    assert len([d for _, d in docs if d["metadata"]["name"] == "warden-control-plane" and
                d["kind"] in ("Deployment", "StatefulSet")]) == 2
    assert control_plane_image_problems(docs) == []


def test_the_image_check_finds_a_second_serve_and_a_wrong_user():
    docs = json.loads(json.dumps(resources("kubernetes/postgres/")))
    deployment = find(docs, "Deployment", "warden-control-plane")[0]
    pod = deployment["spec"]["template"]["spec"]
    pod["containers"][0]["args"].insert(0, "serve")
    pod["securityContext"]["runAsUser"] = 1000
    pod["containers"][0]["volumeMounts"] = []
    problems = control_plane_image_problems(docs)
    assert len(problems) == 3, problems
    assert "does not parse" in problems[1] and "'serve'" in problems[1], problems
