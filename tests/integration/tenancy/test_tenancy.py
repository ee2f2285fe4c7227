"""Tenants cannot mint for each other: AgentCredentialPolicy, static sources shared by their
owners, minting services named by policy -- attacks by namespace admins, on the real control
plane (issue: trust boundaries, items 1, 2 and 2b)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentcred.api import model
from agentcred.devcluster.install import apply_policy
from agentcred.verify import TokenRejected, Verifier
from agents import (
    audit_lines,
    condition,
    create_pod,
    get_credential,
    read_secret,
    running_pod,
    secret_name_of,
    service_account,
    shared_secret,
    start_agent,
    value_gone,
    value_of,
)
from clusterkit import Cluster, OperatorProcess, wait_for
from identities import namespace_admin
from samples import EXCEPTION, credential

TENANT_LABEL = "agentcred.dev/tenant"  # the suite's permissive policy skips namespaces carrying it
GATEWAY_A, GATEWAY_B = "https://gateway.team-a.internal", "https://gateway.team-b.internal"


def _tenant_admin(cluster: Cluster, namespace: str, tmp_path: Path) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(namespace_admin(cluster, namespace, tmp_path))


def _policy(name: str, tenant: str, **spec: Any) -> dict:
    return {
        "apiVersion": model.API_VERSION,
        "kind": model.POLICY_KIND,
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {TENANT_LABEL: tenant}},
            "sources": ["jwt"],
            "maxTTL": "1h",
            "maxLifetime": "8h",
            **spec,
        },
    }


@pytest.fixture
def tenants(cluster: Cluster) -> Any:
    made = {tenant: cluster.create_namespace(f"team-{tenant}", labels={TENANT_LABEL: tenant}) for tenant in "ab"}
    policies = [
        _policy(
            f"team-{tenant}-{made[tenant]}",
            tenant,
            audiences=[f"https://*.team-{tenant}.internal"],
            scope={"tools": ["*"], "actions": ["read"], "resources": [f"repo:team-{tenant}/*"]},
        )
        for tenant in "ab"
    ]
    for body in policies:
        apply_policy(cluster.api_client, body)
    yield made
    for body in policies:
        cluster.custom.delete_cluster_custom_object(
            model.GROUP, model.VERSION, model.POLICY_PLURAL, body["metadata"]["name"]
        )
    for namespace in made.values():
        cluster.delete_namespace(namespace)


def _create(api: client.CustomObjectsApi, namespace: str, name: str, **spec: Any) -> None:
    spec.setdefault("projection", {"mountPath": f"/var/run/agentcred/{name}"})
    api.create_namespaced_custom_object(
        model.GROUP, model.VERSION, namespace, model.PLURAL, credential(name=name, **spec)
    )


def _ready(cluster: Cluster, namespace: str, name: str) -> dict:
    return wait_for(lambda: condition(get_credential(cluster, namespace, name), "Ready"), what=f"{name} judged")


def test_a_tenant_cannot_mint_for_another_tenants_gateway(
    cluster: Cluster, operator: OperatorProcess, kubelet, tenants: dict, tmp_path: Path
) -> None:
    a = tenants["a"]
    admin_a = _tenant_admin(cluster, a, tmp_path)
    service_account(cluster, a)
    # Team A's admin writes a credential for team B's gateway, with every scope.
    _create(
        admin_a,
        a,
        "steal",
        source={"jwt": {"audiences": [GATEWAY_B]}},
        scope={"tools": ["*"], "actions": ["*"], "resources": ["*"]},
    )
    verdict = _ready(cluster, a, "steal")
    assert (verdict["status"], verdict["reason"]) == ("False", "PolicyDenied")
    assert f"audience '{GATEWAY_B}' is not allowed" in verdict["message"]
    assert "scope actions pattern '*' is wider than allowed" in verdict["message"]
    with pytest.raises(ApiException) as refused:
        create_pod(cluster, a, "thief", "steal")
    assert refused.value.status == 403 and "PolicyDenied" in json.loads(refused.value.body)["message"]

    # Within its own policy it works, and the token says whose it is.
    _create(
        admin_a,
        a,
        "own",
        source={"jwt": {"audiences": [GATEWAY_A]}},
        scope={"tools": ["web-search"], "actions": ["read"], "resources": ["repo:team-a/*"]},
    )
    wait_for(lambda: _ready(cluster, a, "own")["status"] == "True", what="own credential Ready")
    pod = start_agent(cluster, a, credentials="own")
    token = value_of(read_secret(cluster, a, secret_name_of(pod)), "own").decode()
    verifier = Verifier.from_url(operator.api_url, cafile=operator.ca_file())
    assert verifier.verify(token, audience=GATEWAY_A, namespace=a)["agentcred"]["namespace"] == a
    with pytest.raises(TokenRejected) as foreign:
        verifier.verify(token, audience=GATEWAY_A, namespace=tenants["b"])  # B's gateway pins its tenant
    assert foreign.value.reason == "wrong-namespace"

    # Policies are the cluster admins': the tenant admin can neither write nor widen one.
    with pytest.raises(ApiException) as denied:
        admin_a.create_cluster_custom_object(
            model.GROUP, model.VERSION, model.POLICY_PLURAL, _policy("mine", "a", audiences=["*"])
        )
    assert denied.value.status == 403
    assert audit_lines(operator, "deny", namespace=a)


def test_narrowing_a_policy_revokes_what_it_no_longer_allows(
    cluster: Cluster, operator: OperatorProcess, kubelet, tenants: dict, tmp_path: Path
) -> None:
    a = tenants["a"]
    service_account(cluster, a)
    _create(
        cluster.custom,
        a,
        "llm",
        source={"jwt": {"audiences": [GATEWAY_A]}},
        ttl="30m",
        scope={"tools": ["web-search"], "actions": ["read"], "resources": ["repo:team-a/x"]},
    )
    wait_for(lambda: _ready(cluster, a, "llm")["status"] == "True", what="Ready")
    pod = start_agent(cluster, a, credentials="llm")
    name = f"team-a-{a}"
    cluster.custom.patch_cluster_custom_object(
        model.GROUP, model.VERSION, model.POLICY_PLURAL, name, {"spec": {"maxTTL": "10m"}}
    )
    wait_for(lambda: _ready(cluster, a, "llm")["reason"] == "PolicyDenied", what="not Ready under the new policy")
    wait_for(lambda: value_gone(cluster, a, secret_name_of(pod), "llm"), what="the value revoked")
    assert [line["reason"] for line in audit_lines(operator, "revoke", podUID=pod["metadata"]["uid"])] == [
        "credential-not-ready"
    ]


def test_no_policy_no_token(cluster: Cluster, operator: OperatorProcess, tmp_path: Path) -> None:
    lone = cluster.create_namespace("lone", labels={TENANT_LABEL: "nobody"})
    try:
        _create(cluster.custom, lone, "llm")
        verdict = _ready(cluster, lone, "llm")
        assert (verdict["status"], verdict["reason"]) == ("False", "NoPolicy")
        assert f"no AgentCredentialPolicy applies to namespace {lone}" in verdict["message"]
    finally:
        cluster.delete_namespace(lone)


def test_the_operator_is_nobodys_ssrf_tool(
    cluster: Cluster, operator: OperatorProcess, tenants: dict, tmp_path: Path
) -> None:
    a = tenants["a"]
    apply_policy(
        cluster.api_client,
        _policy(
            f"team-a-{a}",
            "a",
            sources=["jwt", "webhook"],
            audiences=["https://*.team-a.internal"],
            mintingServices=["https://minter.team-a.internal/*"],
        ),
    )
    admin_a = _tenant_admin(cluster, a, tmp_path)
    for name, url in (
        ("metadata", "https://169.254.169.254/latest/meta-data"),
        ("apiserver", "https://kubernetes.default.svc/api"),
        ("lookalike", "https://minter.team-a.internal.evil.example/mint"),
    ):
        _create(admin_a, a, name, source={"webhook": {"url": url}})
        verdict = _ready(cluster, a, name)
        assert verdict["reason"] == "PolicyDenied" and f"minting service '{url}' is not allowed" in verdict["message"]


def test_a_tenant_cannot_copy_a_secret_its_owner_did_not_share(
    cluster: Cluster, operator: OperatorProcess, kubelet, tenants: dict, tmp_path: Path
) -> None:
    a = tenants["a"]
    apply_policy(
        cluster.api_client,
        _policy(f"team-a-{a}", "a", sources=["jwt", "secretRef"], audiences=["https://*.team-a.internal"]),
    )
    # A Secret in the namespace that the tenant's own RBAC could read is not the question:
    # one it may not read (a pods-and-credentials user), and that nobody shared.
    cluster.core.create_namespaced_secret(
        a, {"metadata": {"name": "db-root"}, "stringData": {"password": "s3cret-root"}}
    )
    service_account(cluster, a)
    _create(
        cluster.custom,
        a,
        "exfiltrate",
        category="retrieval",
        source={"secretRef": {"name": "db-root", "key": "password"}},
        exception={**EXCEPTION, "approvedBy": "myself@team-a"},
    )
    verdict = _ready(cluster, a, "exfiltrate")
    assert (verdict["status"], verdict["reason"]) == ("False", "UpstreamNotShared")
    with pytest.raises(ApiException):
        create_pod(cluster, a, "thief", "exfiltrate")

    # Shared with another credential only: still no.
    shared_secret(cluster, a, "vendor-key", name="vendor", key="key", shared_with="vendor-llm/key")
    _create(
        cluster.custom,
        a,
        "grab",
        category="tool",
        source={"secretRef": {"name": "vendor", "key": "key"}},
        exception=EXCEPTION,
    )
    refused = _ready(cluster, a, "grab")
    assert (
        refused["reason"] == "UpstreamNotShared"
        and "is shared with vendor-llm/key, not with grab" in refused["message"]
    )
    _create(
        cluster.custom,
        a,
        "vendor-llm",
        category="tool",
        source={"secretRef": {"name": "vendor", "key": "key"}},
        exception=EXCEPTION,
    )
    wait_for(lambda: _ready(cluster, a, "vendor-llm")["status"] == "True", what="the named credential Ready")
    create_pod(cluster, a, "agent", "vendor-llm")
    pod = wait_for(lambda: running_pod(cluster, a, name="agent"), what="pod Running")
    assert value_of(read_secret(cluster, a, secret_name_of(pod)), "vendor-llm") is not None

    # Sharing names the key: pointing the credential at another key of the same Secret gets nothing.
    cluster.core.patch_namespaced_secret("vendor", a, {"stringData": {"root-key": "s3cret-root"}})
    cluster.custom.patch_namespaced_custom_object(
        model.GROUP,
        model.VERSION,
        a,
        model.PLURAL,
        "vendor-llm",
        {"spec": {"source": {"secretRef": {"key": "root-key"}}}},
    )
    other_key = wait_for(
        lambda: (found := _ready(cluster, a, "vendor-llm"))["reason"] == "UpstreamNotShared" and found,
        what="the other key refused",
    )
    assert "shares key key with AgentCredential vendor-llm, not root-key" in other_key["message"]
    wait_for(lambda: value_gone(cluster, a, secret_name_of(pod), "vendor-llm"), what="the value revoked")

    # Where the policy allows no static sources at all, even a shared one is refused.
    apply_policy(
        cluster.api_client, _policy(f"team-a-{a}", "a", sources=["jwt"], audiences=["https://*.team-a.internal"])
    )
    wait_for(lambda: _ready(cluster, a, "vendor-llm")["reason"] == "PolicyDenied", what="static sources refused")
    assert "source secretRef is not allowed" in _ready(cluster, a, "vendor-llm")["message"]


def _rejected_status_writes(operator: OperatorProcess) -> float:
    return sum(
        value
        for (name, labels_), value in operator.metrics().items()
        if name == "agentcred_api_errors_total"
        and dict(labels_).get("operation") == "PATCH agentcredentials/status"
        and dict(labels_).get("status") == "422"
    )


def _status_writer_passes(operator: OperatorProcess) -> float:
    return operator.metrics().get(("agentcred_status_writer_passes_total", ()), 0.0)


def test_a_refusal_too_long_for_the_status_is_cut_to_fit_and_not_retried_forever(
    cluster: Cluster, operator: OperatorProcess, tenants: dict, tmp_path: Path
) -> None:
    """A tenant writes 64 long resource patterns its policy does not allow: the PolicyDenied
    message names each, and is longer than the CRD lets a condition's message be. The status
    write was refused (422) and tried again every interval for as long as the credential
    existed -- 101 such credentials made 860 rejected writes per 10 s -- and its Ready
    condition was never written. Now the message is cut to fit and the write goes through."""
    a = tenants["a"]
    admin_a = _tenant_admin(cluster, a, tmp_path)
    wide = [f"repo:team-b/{i:02d}-" + "x" * 200 for i in range(64)]
    _create(admin_a, a, "verbose", scope={"tools": ["web-search"], "actions": ["read"], "resources": wide})
    verdict = wait_for(
        lambda: condition(get_credential(cluster, a, "verbose"), "Ready"), timeout=20, what="verbose judged"
    )
    assert (verdict["status"], verdict["reason"]) == ("False", "PolicyDenied")
    assert len(verdict["message"]) <= 4096 and wide[0] in verdict["message"]
    assert verdict["message"].endswith("(cut to fit)")
    # And nothing keeps knocking at the API server: the rejected writes stop. Counted from the
    # end of a pass that began after the verdict was read (the second to end from now), then
    # over six more passes: each one would have tried the refused write again.
    seen = _status_writer_passes(operator)
    wait_for(lambda: _status_writer_passes(operator) >= seen + 2, what="a whole status-writer pass")
    settled, passes = _rejected_status_writes(operator), _status_writer_passes(operator)
    wait_for(lambda: _status_writer_passes(operator) >= passes + 6, what="six more status-writer passes")
    assert _rejected_status_writes(operator) == settled
