"""The operator cannot be turned into cluster-admin. Acting as the chart's ServiceAccount (a
token of it, after `helm install`), every write outside what the operator does is refused by
the chart's ValidatingAdmissionPolicy (charts/agentcred/templates/operatorbounds.yaml) --
where RBAC alone would have let it through -- and what the operator does still passes. The
projection path as that ServiceAccount, end to end, is test_chart.py's install test."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agentcred.api import model
from clusterkit import REPO, Cluster, OperatorProcess, operator_paused, token_kubeconfig, wait_for
from samples import credential

CHART = REPO / "charts" / "agentcred"
RELEASE = "bounds"  # not "agentcred": the objects are named after the release (<fullname>)
NAMESPACE = "agentcred-bounds"
FULLNAME = "bounds-agentcred"
POLICIES = f"{FULLNAME}.agentcred.dev-operator"  # -secrets, -pods, -pod-lifecycle, -webhook, -credentials
WEBHOOK_CONFIGURATION = f"{FULLNAME}.agentcred.dev"
GATE = "agentcred.dev/credentials"
MANAGED = {"agentcred.dev/managed": "true"}


def helm(cluster: Cluster, *args: str) -> str:
    result = subprocess.run(
        [str(cluster.binaries["helm"]), *args], capture_output=True, text=True, env=cluster.env(), timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def message(error: ApiException) -> str:
    try:
        return json.loads(error.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(error)


def refused_by_policy(policy: str, attempt: Callable[[], Any]) -> str:
    """The request fails, and it is that operator-bounds policy (not RBAC) that refuses it."""
    with pytest.raises(ApiException) as refused:
        attempt()
    said = message(refused.value)
    assert refused.value.status == 403 and f"ValidatingAdmissionPolicy '{POLICIES}-{policy}'" in said, said
    return said


def refused_by_rbac(attempt: Callable[[], Any]) -> None:
    with pytest.raises(ApiException) as refused:
        attempt()
    said = message(refused.value)
    assert refused.value.status == 403 and "cannot" in said and "ValidatingAdmissionPolicy" not in said, said


def managed_name() -> str:
    return f"agentcred-{uuid.uuid4().hex[:16]}"


def managed_secret(name: str, **extra: Any) -> dict[str, Any]:
    # No value of 12 characters or more: the session's leak check would look for it in logs.
    return {"metadata": {"name": name, "labels": dict(MANAGED)}, "type": "Opaque", "stringData": {"v": "x"}, **extra}


@pytest.fixture(scope="module")
def operator_api(
    cluster: Cluster, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[client.ApiClient]:
    """The chart installed (its webhook unreachable and ignored: no operator runs here), and
    a client acting as its ServiceAccount once the policy is in force. The session's operator
    is stopped meanwhile: the chart refuses to install beside another agentcred admitting the
    same pods."""
    if "helm" not in cluster.binaries:
        pytest.skip("helm was not built (local control plane only)")
    with operator_paused(operator):
        yield from _installed(cluster, tmp_path_factory)


def _installed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[client.ApiClient]:
    helm(
        cluster,
        "install",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--create-namespace",
        "--wait=false",
        "--set",
        "replicaCount=1",
        "--set",
        "webhook.url=https://127.0.0.1:9",
        "--set",
        "webhook.failurePolicy=Ignore",
    )
    try:
        kubeconfig = token_kubeconfig(cluster, NAMESPACE, FULLNAME, tmp_path_factory.mktemp("bounds") / "sa.kubeconfig")
        api = config.new_client_from_config(config_file=str(kubeconfig))
        cluster.core.create_namespaced_pod(
            NAMESPACE,
            {
                "metadata": {"name": "probe", "labels": {"probe": "a"}},
                "spec": {"containers": [{"name": "c", "image": "probe"}]},
            },
        )
        cluster.custom.create_namespaced_custom_object(
            model.GROUP, model.VERSION, NAMESPACE, model.PLURAL, credential(name="probe")
        )
        wait_for(lambda: _in_force(cluster, api), what="the operator-bounds policies in force")
        yield api
    finally:
        helm(cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait")
        cluster.core.delete_namespaced_secret(f"{FULLNAME}-signing-keys", NAMESPACE)  # kept on uninstall
        cluster.delete_namespace(NAMESPACE)


def _in_force(cluster: Cluster, api: client.ApiClient) -> bool:
    """Policies load asynchronously: a write each policy refuses is its probe (undone if it
    got through). The -pod-lifecycle policy has none (RBAC refuses its writes first); it is
    created in the same batch as the others."""
    core, admission = client.CoreV1Api(api), client.AdmissionregistrationV1Api(api)
    probes = (
        (
            "secrets",
            lambda: core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "probe"}, "type": "Opaque"}),
            lambda: cluster.core.delete_namespaced_secret("probe", NAMESPACE),
        ),
        (
            "pods",
            lambda: core.patch_namespaced_pod("probe", NAMESPACE, {"metadata": {"labels": {"probe": "b"}}}),
            lambda: cluster.core.patch_namespaced_pod("probe", NAMESPACE, {"metadata": {"labels": {"probe": "a"}}}),
        ),
        (
            "credentials",
            lambda: client.CustomObjectsApi(api).patch_namespaced_custom_object(
                model.GROUP, model.VERSION, NAMESPACE, model.PLURAL, "probe", {"spec": {"owner": "probe-b"}}
            ),
            lambda: cluster.custom.patch_namespaced_custom_object(
                model.GROUP, model.VERSION, NAMESPACE, model.PLURAL, "probe", {"spec": {"owner": "probe"}}
            ),
        ),
        (
            "webhook",
            lambda: admission.patch_mutating_webhook_configuration(
                WEBHOOK_CONFIGURATION, {"metadata": {"labels": {"probe": "b"}}}
            ),
            lambda: cluster.admission.patch_mutating_webhook_configuration(
                WEBHOOK_CONFIGURATION, {"metadata": {"labels": {"probe": None}}}
            ),
        ),
    )
    for policy, attempt, undo in probes:
        try:
            attempt()
        except ApiException as error:
            if f"{POLICIES}-{policy}" in message(error):
                continue
            raise
        undo()
        return False
    return True


def test_secrets_it_does_not_manage_cannot_be_made_changed_or_deleted(
    cluster: Cluster, operator_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(operator_api)
    # RBAC lets the operator create any Secret anywhere; the policy does not. This is the
    # escalation: a token Secret for a powerful controller, filled in by the token controller.
    said = refused_by_policy(
        "secrets",
        lambda: core.create_namespaced_secret(
            "kube-system",
            {
                "metadata": {
                    "name": "gc-token",
                    "annotations": {"kubernetes.io/service-account.name": "generic-garbage-collector"},
                },
                "type": "kubernetes.io/service-account-token",
            },
        ),
    )
    assert "Opaque Secrets named agentcred-<16 hex digits>" in said
    with pytest.raises(ApiException) as absent:
        cluster.core.read_namespaced_secret("gc-token", "kube-system")
    assert absent.value.status == 404
    for body in (
        {"metadata": {"name": managed_name()}, "type": "Opaque"},  # no managed label
        {"metadata": {"name": "agentcred-keys", "labels": MANAGED}, "type": "Opaque"},  # not its name
        {
            "metadata": {
                "name": managed_name(),
                "labels": MANAGED,
                "annotations": {  # its name and label, not Opaque
                    "kubernetes.io/service-account.name": "default"
                },
            },
            "type": "kubernetes.io/service-account-token",
        },
        {"metadata": {"name": managed_name(), "labels": MANAGED}, "type": "bootstrap.kubernetes.io/token"},
        {"metadata": {"name": f"{FULLNAME}-signing-keys"}, "type": "Opaque"},  # its state, elsewhere
    ):
        refused_by_policy("secrets", lambda body=body: core.create_namespaced_secret(namespace, body))
    refused_by_policy(
        "secrets",
        lambda: core.create_namespaced_secret(
            "kube-system", {"metadata": {"name": "bootstrap-token-abcdef"}, "type": "bootstrap.kubernetes.io/token"}
        ),
    )

    # Someone else's Secret: not changed, not adopted by labelling it, not deleted.
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "theirs"}, "type": "Opaque", "stringData": {"a": "b"}}
    )
    assert "may change only Secrets it manages" in refused_by_policy(
        "secrets", lambda: core.patch_namespaced_secret("theirs", namespace, {"stringData": {"a": "c"}})
    )
    refused_by_policy(
        "secrets", lambda: core.patch_namespaced_secret("theirs", namespace, {"metadata": {"labels": MANAGED}})
    )
    assert "may delete only Secrets it manages" in refused_by_policy(
        "secrets", lambda: core.delete_namespaced_secret("theirs", namespace)
    )
    assert cluster.core.read_namespaced_secret("theirs", namespace).data == {"a": "Yg=="}

    # What the operator does passes: write, change and delete a per-pod Secret; keep its state.
    name = managed_name()
    core.create_namespaced_secret(namespace, managed_secret(name))
    core.patch_namespaced_secret(
        name,
        namespace,
        {"metadata": {"labels": {"credential.agentcred.dev/x": "true"}}, "stringData": {"w": "y"}, "data": {"v": None}},
    )
    refused_by_policy(
        "secrets",
        lambda: core.patch_namespaced_secret(
            name, namespace, {"metadata": {"labels": {"agentcred.dev/managed": None}}}
        ),
    )  # it stays managed
    core.delete_namespaced_secret(name, namespace)
    core.patch_namespaced_secret(
        f"{FULLNAME}-signing-keys", NAMESPACE, {"metadata": {"labels": {"agentcred.dev/role": "keyring"}}}
    )
    serving = core.read_namespaced_secret(f"{FULLNAME}-webhook-tls", NAMESPACE)
    core.replace_namespaced_secret(f"{FULLNAME}-webhook-tls", NAMESPACE, serving)
    refused_by_policy("secrets", lambda: core.delete_namespaced_secret(f"{FULLNAME}-signing-keys", NAMESPACE))


def test_pods_can_only_lose_the_scheduling_gate_or_be_quarantined(
    cluster: Cluster, operator_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(operator_api)
    cluster.core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "agent", "labels": {"app": "agent"}, "annotations": {"team": "research"}},
            "spec": {
                "schedulingGates": [{"name": GATE}, {"name": "example.com/quota"}],
                "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "main", "image": "registry.example/agent:1"}],
            },
        },
    )

    def patch(body: Any) -> Callable[[], Any]:
        return lambda: core.patch_namespaced_pod("agent", namespace, body)

    for attempt in (
        patch({"spec": {"containers": [{"name": "main", "image": "registry.example/evil:1"}]}}),
        patch({"metadata": {"labels": {"app": "other"}}}),
        patch({"metadata": {"annotations": {"team": "other"}}}),
        patch({"metadata": {"annotations": {"team": None}}}),
        patch({"metadata": {"finalizers": ["example.com/hold"]}}),
        patch(
            {
                "metadata": {
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": str(uuid.uuid4())}
                    ]
                }
            }
        ),
        patch({"spec": {"activeDeadlineSeconds": 1}}),
        patch({"spec": {"nodeSelector": {"kubernetes.io/hostname": "attacker"}}}),
        lambda: core.patch_namespaced_pod(
            "agent", namespace, [{"op": "add", "path": "/spec/tolerations/-", "value": {"operator": "Exists"}}]
        ),
        patch({"spec": {"schedulingGates": [{"$patch": "delete", "name": "example.com/quota"}]}}),
        patch({"metadata": {"labels": {"agentcred.dev/quarantined": "false"}}}),
        patch({"metadata": {"labels": {"agentcred.dev/quarantined": "true", "app": "other"}}}),
    ):
        refused_by_policy("pods", attempt)
    # A leaked value's quarantine is the one label it may add (a NetworkPolicy selects it).
    patch({"metadata": {"labels": {"agentcred.dev/quarantined": "true"}}})()
    assert cluster.core.read_namespaced_pod("agent", namespace).metadata.labels == {
        "app": "agent",
        "agentcred.dev/quarantined": "true",
    }
    # Nor create, delete or write a subresource of a pod, even were RBAC widened by mistake.
    cluster.rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "too-much"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods", "pods/ephemeralcontainers", "pods/status", "pods/eviction"],
                    "verbs": ["get", "create", "patch", "update", "delete"],
                }
            ],
        },
    )
    cluster.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "too-much"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "too-much"},
            "subjects": [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}],
        },
    )
    wait_for(lambda: _may(cluster, "patch", "pods", "ephemeralcontainers", namespace), what="the extra RoleBinding")
    debug = {"spec": {"ephemeralContainers": [{"name": "debug", "image": "registry.example/shell:1"}]}}
    privileged = {
        "metadata": {"name": "privileged"},
        "spec": {
            "containers": [
                {"name": "main", "image": "registry.example/agent:1", "securityContext": {"privileged": True}}
            ]
        },
    }
    for attempt in (
        lambda: core.patch_namespaced_pod_ephemeralcontainers("agent", namespace, debug),
        lambda: core.patch_namespaced_pod_status("agent", namespace, {"status": {"phase": "Failed"}}),
        lambda: core.create_namespaced_pod_eviction("agent", namespace, {"metadata": {"name": "agent"}}),
        lambda: core.delete_namespaced_pod("agent", namespace),
        lambda: core.create_namespaced_pod(namespace, privileged),
    ):
        assert "may not create or delete pods" in refused_by_policy("pod-lifecycle", attempt)

    # What the operator does passes: remove its gate (twice: the second is a no-op), and its
    # own annotations.
    for _ in range(2):
        core.patch_namespaced_pod(
            "agent", namespace, {"spec": {"schedulingGates": [{"$patch": "delete", "name": GATE}]}}
        )
    core.patch_namespaced_pod("agent", namespace, {"metadata": {"annotations": {"agentcred.dev/note": "x"}}})
    pod = cluster.core.read_namespaced_pod("agent", namespace)
    assert [g.name for g in pod.spec.scheduling_gates] == ["example.com/quota"]
    assert pod.spec.containers[0].image == "registry.example/agent:1"
    assert pod.metadata.labels == {"app": "agent", "agentcred.dev/quarantined": "true"}


def _may(cluster: Cluster, verb: str, resource: str, subresource: str, namespace: str) -> bool:
    review = client.AuthorizationV1Api(cluster.api_client).create_subject_access_review(
        {
            "spec": {
                "user": f"system:serviceaccount:{NAMESPACE}:{FULLNAME}",
                "resourceAttributes": {
                    "verb": verb,
                    "resource": resource,
                    "subresource": subresource,
                    "namespace": namespace,
                },
            }
        }
    )
    return bool(review.status.allowed)


def test_webhook_configuration_only_gets_its_ca_bundle(operator_api: client.ApiClient) -> None:
    admission = client.AdmissionregistrationV1Api(operator_api)

    def json_patch(*operations: dict[str, Any]) -> Callable[[], Any]:
        return lambda: admission.patch_mutating_webhook_configuration(WEBHOOK_CONFIGURATION, list(operations))

    for attempt in (  # see every pod, in every namespace (kube-system too), or call elsewhere
        json_patch({"op": "remove", "path": "/webhooks/0/objectSelector"}),
        json_patch({"op": "replace", "path": "/webhooks/0/namespaceSelector", "value": {}}),
        json_patch({"op": "replace", "path": "/webhooks/0/clientConfig/url", "value": "https://attacker.example"}),
        json_patch({"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Fail"}),
    ):
        refused_by_policy("webhook", attempt)
    json_patch({"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Y2E="})()  # what it does


def test_the_bounds_cannot_be_lifted_by_the_operator(operator_api: client.ApiClient) -> None:
    admission = client.AdmissionregistrationV1Api(operator_api)
    for policy in ("secrets", "pods", "pod-lifecycle", "webhook", "credentials"):
        refused_by_rbac(lambda policy=policy: admission.delete_validating_admission_policy(f"{POLICIES}-{policy}"))
        refused_by_rbac(
            lambda policy=policy: admission.delete_validating_admission_policy_binding(f"{POLICIES}-{policy}")
        )
        refused_by_rbac(
            lambda policy=policy: admission.patch_validating_admission_policy_binding(
                f"{POLICIES}-{policy}", {"spec": {"validationActions": ["Audit"]}}
            )
        )
    refused_by_rbac(
        lambda: client.RbacAuthorizationV1Api(operator_api).patch_cluster_role(
            FULLNAME, {"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}
        )
    )


def test_agentcredentials_change_only_in_the_operators_own_finalizer(
    cluster: Cluster, operator_api: client.ApiClient, namespace: str
) -> None:
    """RBAC grants the operator `patch` on every tenant's AgentCredentials, for its finalizer:
    with that token anyone could rewrite a tenant's credential -- its owner, subjects, scope,
    audiences (within the policy), onLeak, ttl. Only its finalizer may change now."""
    custom = client.CustomObjectsApi(operator_api)
    cluster.custom.create_namespaced_custom_object(
        model.GROUP, model.VERSION, namespace, model.PLURAL, credential(name="tenants")
    )

    def patch(body: Any) -> Callable[[], Any]:
        kind = "application/json-patch+json" if isinstance(body, list) else "application/merge-patch+json"
        return lambda: custom.patch_namespaced_custom_object(
            model.GROUP, model.VERSION, namespace, model.PLURAL, "tenants", body, _content_type=kind
        )

    for body in (
        {"spec": {"owner": "attacker@example.com"}},
        {"spec": {"subjects": {"serviceAccounts": ["default"]}}},
        {"spec": {"scope": {"tools": ["*"], "actions": ["*"], "resources": ["*"]}}},
        {"spec": {"source": {"jwt": {"audiences": ["https://attacker.example"]}}}},
        {"spec": {"onLeak": "quarantine"}},
        {"spec": {"ttl": "1h", "maxLifetime": "24h"}},
        {"metadata": {"labels": {"team": "attacker"}}},
        {"metadata": {"annotations": {"agentcred.dev/revoke": '{"id": "forged"}'}}},
        [{"op": "add", "path": "/metadata/finalizers", "value": ["example.com/hold-forever"]}],
    ):
        said = refused_by_policy("credentials", patch(body))
        assert "only in its own finalizer" in said
    with pytest.raises(ApiException) as refused:
        custom.delete_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, "tenants")
    assert refused.value.status == 403
    current = cluster.custom.get_namespaced_custom_object(
        model.GROUP, model.VERSION, namespace, model.PLURAL, "tenants"
    )
    assert current["spec"]["owner"] == "team-research@example.com" and "labels" not in current["metadata"]

    # What the operator does passes: its finalizer on and off, and the status.
    patch([{"op": "add", "path": "/metadata/finalizers", "value": ["agentcred.dev/revoke-projections"]}])()
    patch(
        [
            {"op": "test", "path": "/metadata/finalizers/0", "value": "agentcred.dev/revoke-projections"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ]
    )()
    custom.patch_namespaced_custom_object_status(
        model.GROUP, model.VERSION, namespace, model.PLURAL, "tenants", {"status": {"activeProjections": 0}}
    )
