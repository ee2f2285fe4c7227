"""Isolation between namespaces, ServiceAccounts and users."""

import json

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentcred.api import labels, model
from agents import (
    create_credential,
    create_pod,
    operator_caught_up,
    read_secret,
    running_pod,
    secret_name_of,
    service_account,
    start_agent,
    value_of,
)
from clusterkit import Cluster, OperatorProcess, token_kubeconfig, wait_for
from samples import credential


def test_a_pod_never_receives_a_credential_of_another_namespace(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    other = cluster.create_namespace("other")
    try:
        service_account(cluster, other)
        create_credential(cluster, other, name="their-llm")
        service_account(cluster, namespace)  # same ServiceAccount name, other namespace
        with pytest.raises(ApiException) as refused:
            create_pod(cluster, namespace, "thief", "their-llm")
        assert refused.value.status == 403
        said = json.loads(refused.value.body)["message"]
        assert f"AgentCredential their-llm does not exist in namespace {namespace}" in said
        assert "did you mean" not in said  # never a name from another namespace
        # A typo of a credential of its own namespace: the refusal names the likely one.
        create_credential(cluster, namespace, name="research-llm")
        with pytest.raises(ApiException) as typo:
            create_pod(cluster, namespace, "typo", "research-lm")
        assert (
            f"AgentCredential research-lm does not exist in namespace {namespace} (did you mean research-llm?)"
            in json.loads(typo.value.body)["message"]
        )
    finally:
        cluster.delete_namespace(other)


def test_editing_annotations_after_admission_is_refused(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace, name="granted")
    create_credential(cluster, namespace, name="forbidden", subjects={"serviceAccounts": ["someone-else"]})
    create_credential(cluster, namespace, name="also-mine")  # a subject, but not asked for at admission
    create_pod(cluster, namespace, "agent", "granted")
    pod = wait_for(lambda: running_pod(cluster, namespace, name="agent"), what="pod Running")
    for edit in (
        {labels.CREDENTIALS_ANNOTATION: "granted,forbidden,also-mine"},
        {labels.BINDING_ANNOTATION: "0123456789abcdef"},
    ):
        with pytest.raises(ApiException) as refused:
            cluster.core.patch_namespaced_pod("agent", namespace, {"metadata": {"annotations": edit}})
        assert "cannot change after admission" in json.loads(refused.value.body)["message"]
    secret = read_secret(cluster, namespace, secret_name_of(pod))
    assert value_of(secret, "granted") is not None
    assert value_of(secret, "forbidden") is None and value_of(secret, "also-mine") is None
    assert read_secret(cluster, namespace, labels.secret_name("0123456789abcdef")) is None


def test_a_user_who_can_create_pods_cannot_widen_a_credential(
    cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    service_account(cluster, namespace, "developer")
    cluster.rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pods-only"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "patch", "delete"]}
            ],
        },
    )
    cluster.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "developer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods-only"},
            "subjects": [{"kind": "ServiceAccount", "name": "developer", "namespace": namespace}],
        },
    )
    from kubernetes import config

    developer = config.new_client_from_config(
        config_file=str(token_kubeconfig(cluster, namespace, "developer", tmp_path / "dev.kubeconfig"))
    )
    custom = client.CustomObjectsApi(developer)
    attempts = {
        "widen scope": lambda: custom.patch_namespaced_custom_object(
            model.GROUP,
            model.VERSION,
            namespace,
            model.PLURAL,
            "research-llm",
            {"spec": {"scope": {"tools": ["*"], "actions": ["*"], "resources": ["*"]}}},
        ),
        "add a subject": lambda: custom.patch_namespaced_custom_object(
            model.GROUP,
            model.VERSION,
            namespace,
            model.PLURAL,
            "research-llm",
            {"spec": {"subjects": {"serviceAccounts": ["research-agent", "developer"]}}},
        ),
        "create a credential": lambda: custom.create_namespaced_custom_object(
            model.GROUP, model.VERSION, namespace, model.PLURAL, credential(name="mine")
        ),
        "read the values": lambda: client.CoreV1Api(developer).list_namespaced_secret(namespace),
    }
    for what, attempt in attempts.items():
        with pytest.raises(ApiException) as denied:
            attempt()
        assert denied.value.status == 403, what
    # What the developer can do -- create a pod as a ServiceAccount that is a subject -- gets
    # exactly the credential's own scope.
    spec = cluster.custom.get_namespaced_custom_object(
        model.GROUP, model.VERSION, namespace, model.PLURAL, "research-llm"
    )["spec"]
    assert spec["scope"]["tools"] == ["web-search"]


def test_a_finished_pod_revived_by_a_status_write_gets_nothing_again(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    pod = start_agent(cluster, namespace)
    kubelet.succeed(namespace, "agent")
    wait_for(lambda: read_secret(cluster, namespace, secret_name_of(pod)) is None, what="revoked")
    # Only a real kubelet should write pod status; someone with that right says "Running" again.
    cluster.core.patch_namespaced_pod_status("agent", namespace, {"status": {"phase": "Running"}})
    operator_caught_up(cluster, namespace)  # it saw the revived pod
    assert read_secret(cluster, namespace, secret_name_of(pod)) is None
