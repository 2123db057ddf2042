"""Workload identity end to end through the real Envoy: a CI job's GitHub
Actions OIDC token and a Kubernetes projected service-account token are
verified like any issuer's, and the gateway's group rules turn the claims
their platforms sign (`repository`, `ref`, `job_workflow_ref`; the
`kubernetes.io` namespace and service account) into Warden groups, which the
policy grants models to. The tokens have exactly those platforms' shapes;
the control plane's development issuer signs them under the platforms'
issuer names (its JWKS stands in for theirs)."""

from __future__ import annotations

import json
import uuid

import openai
import pytest
import yaml

from harness.stack import default_filter_config, wait_until

GITHUB = "https://token.actions.githubusercontent.com"
KUBERNETES = "https://kubernetes.default.svc.cluster.local"


def dev_jwks(issuer: str, claims: dict) -> dict:
    return {"issuer": issuer, "audiences": ["warden"], "claims": claims,
            "jwks": {"cluster": "warden_control_plane", "path": "/dev/jwks.json",
                     "authority": "127.0.0.1:8080", "refresh_seconds": 300, "max_stale_seconds": 3600}}


@pytest.fixture(scope="module")
def workload_stack(tmp_path_factory):
    from harness.stack import Ports, Stack
    cfg = default_filter_config()
    cfg["authentication"]["issuers"] += [
        dev_jwks(GITHUB, {"subject": "job_workflow_ref", "group_rules": [
            {"group": "ci-release", "when": {"repository": "acme/api", "ref": "refs/heads/main",
                                              "job_workflow_ref": "acme/api/.github/workflows/release.yml@*"}}]}),
        dev_jwks(KUBERNETES, {"group_rules": [
            {"group": "batch-reports", "when": {"/kubernetes.io/namespace": "batch",
                                                 "/kubernetes.io/serviceaccount/name": "report-*"}}]}),
    ]
    cfg["policy"] = {"version": 1, "groups": {
        "ci-release": {"models": ["gpt-4o-mini"]},
        "batch-reports": {"models": ["gpt-4o-mini"]},
    }}
    stack = Stack.start(Ports.free(), tmp_path_factory.mktemp("workload"), filter_config=yaml.safe_dump(cfg))
    try:
        yield stack
    finally:
        stack.stop()


def github_token(stack, repository: str, ref: str) -> str:
    workflow = f"{repository}/.github/workflows/release.yml@{ref}"
    claims = {"ref": ref, "ref_type": "branch", "repository": repository, "repository_owner": "acme",
              "repository_visibility": "private", "run_id": "5545", "run_attempt": "1",
              "actor": "octocat", "event_name": "push", "workflow": "release",
              "workflow_ref": workflow, "job_workflow_ref": workflow, "environment": "production",
              "runner_environment": "github-hosted"}
    extra = ["--issuer", GITHUB, "--ttl", "5m"]
    for key, value in claims.items():
        extra += ["--claim", f"{key}={value}"]
    return stack.token(f"repo:{repository}:ref:{ref}", None, *extra)


def kubernetes_token(stack, namespace: str, account: str) -> str:
    claim = {"namespace": namespace, "serviceaccount": {"name": account, "uid": str(uuid.uuid4())},
             "pod": {"name": f"{account}-7d9f", "uid": str(uuid.uuid4())}}
    return stack.token(f"system:serviceaccount:{namespace}:{account}", None, "--issuer", KUBERNETES,
                       "--claim", f"kubernetes.io={json.dumps(claim)}")


def ask(stack, token: str):
    agent = f"workload/{uuid.uuid4()}"
    client = openai.OpenAI(base_url=f"{stack.gateway_url}/openai/v1", api_key=token, max_retries=0,
                           default_headers={"user-agent": agent})
    try:
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        outcome = answer.choices[0].message.content is not None
    except openai.PermissionDeniedError:
        outcome = False

    def mine() -> list[dict]:
        return [r for r in stack.access_log_records() if r.get("user_agent") == agent]
    wait_until("the audit record", lambda: bool(mine()))
    return outcome, mine()[0]


def test_a_release_job_of_the_main_branch_gets_its_group_and_a_branch_job_does_not(workload_stack):
    allowed, record = ask(workload_stack, github_token(workload_stack, "acme/api", "refs/heads/main"))
    assert allowed
    assert (record["issuer"], record["groups"], record["decision"]) == (GITHUB, "ci-release", "allowed")
    assert record["user"] == "acme/api/.github/workflows/release.yml@refs/heads/main"

    allowed, record = ask(workload_stack, github_token(workload_stack, "acme/api", "refs/heads/feature"))
    assert not allowed
    assert (record["groups"] or None, record["reason"]) == (None, "warden.no_group")


def test_a_service_account_in_its_namespace_gets_its_group(workload_stack):
    allowed, record = ask(workload_stack, kubernetes_token(workload_stack, "batch", "report-weekly"))
    assert allowed
    assert (record["issuer"], record["groups"], record["user"]) == (
        KUBERNETES, "batch-reports", "system:serviceaccount:batch:report-weekly")
    allowed, record = ask(workload_stack, kubernetes_token(workload_stack, "default", "report-weekly"))
    assert not allowed and record["reason"] == "warden.no_group"
