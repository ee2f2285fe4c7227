"""Attacks on the operator's own admission endpoint and pod watch, by people without admin
rights: a pod creator, another tenant, an anonymous client that reaches the webhook's port
(by default any address may: README, NetworkPolicy) and sends AdmissionReviews itself, not
through the API server."""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentcred.api import labels, model
from agentcred.devcluster.install import apply_policy, permissive_policy
from agentcred.verify import TokenRejected, Verifier
from agents import (
    audit_lines,
    create_credential,
    guard_active,
    read_secret,
    secret_name_of,
    service_account,
    start_agent,
    value_of,
    without_pod_guard,
)
from clusterkit import OPERATOR_NAMESPACE, Cluster, OperatorProcess, wait_for
from identities import PODS_ONLY, narrow_user

AUDIENCE = "https://llm-gateway.internal"


def _post(operator: OperatorProcess, body: bytes) -> tuple[int, bytes]:
    """A request straight to the webhook's port, as any network client may send one."""
    request = urllib.request.Request(
        f"https://127.0.0.1:{operator.webhook_port}/agentcred-inject",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=operator.ca_file())
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _review(pod: dict[str, Any], operation: str = "CREATE", **extra: Any) -> bytes:
    request = {
        "uid": "0b1c0b1c-0000-4000-8000-000000000001",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": operation,
        "namespace": pod["metadata"]["namespace"],
        "userInfo": {"username": "mallory"},
        "object": pod,
        **extra,
    }
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}).encode()


def _pod(namespace: str, name: str = "probe", credentials: str = "research-llm") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {labels.INJECT_LABEL: "true"},
            "annotations": {labels.CREDENTIALS_ANNOTATION: credentials},
        },
        "spec": {"serviceAccountName": "research-agent", "containers": [{"name": "c", "image": "x"}]},
    }


def _response(answer: bytes) -> dict[str, Any]:
    return json.loads(answer)["response"]


def _guard_refuses(cluster: Cluster, namespace: str, pod: str, patch: dict[str, Any]) -> bool:
    try:
        cluster.core.patch_namespaced_pod(pod, namespace, patch, dry_run="All")
    except ApiException as error:
        return error.status in (403, 422)
    return False


# -- the pod watch: what a pod creator does to an admitted pod --------------------------------


def test_an_admitted_pod_whose_seal_is_edited_away_is_revoked_not_forgotten(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    """Without the pod guard, a pod creator could edit an admitted pod's sealed annotations.
    The seal no longer held, so the pod watch forgot the pod: no revocation when its task
    ended, the value (and every token exchanged from it) verified on until the next renewal
    was due -- most of its ttl after the task's end. Now the pod is still the one that was
    given values, and what it holds is revoked at once."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    developer = client.CoreV1Api(narrow_user(cluster, namespace, "developer", PODS_ONLY, tmp_path))
    pod = start_agent(cluster, namespace)
    uid = pod["metadata"]["uid"]
    value = value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm")
    assert value is not None
    sealed = pod["metadata"]["annotations"][labels.SEAL_ANNOTATION]
    edit = {"metadata": {"annotations": {labels.SEAL_ANNOTATION: sealed + "x"}}}

    # With the guard, the edit is refused (once the API server has the guard in force: a test
    # before this one may just have put it back).
    wait_for(lambda: guard_active(cluster, namespace, "agent"), what="the pod guard in force")
    with pytest.raises(ApiException) as refused:
        developer.patch_namespaced_pod("agent", namespace, edit)
    assert refused.value.status in (403, 422)

    with without_pod_guard(cluster):
        wait_for(lambda: not _guard_refuses(cluster, namespace, "agent", edit), what="the guard gone")
        developer.patch_namespaced_pod("agent", namespace, edit)
        kubelet.succeed(namespace, "agent")  # the task ends: its values must not outlive it
        wait_for(
            lambda: audit_lines(operator, "revoke", podUID=uid, credential="research-llm"),
            timeout=15,
            what="the altered pod's value revoked",
        )
    verifier = Verifier.from_url(operator.api_url, cafile=operator.ca_file())
    with pytest.raises(TokenRejected) as rejected:
        verifier.verify(value.decode(), audience=AUDIENCE, namespace=namespace)
    assert rejected.value.reason == "revoked"
    operator.assert_alive()


# -- the webhook's port, reached directly -----------------------------------------------------


@contextlib.contextmanager
def _credential_in_operator_namespace(cluster: Cluster) -> Iterator[str]:
    """A Ready credential in the operator's own namespace (a cluster admin's policy allows it
    there): a namespace the webhook configuration skips, so the API server never asks it."""
    name = "skipped-probe"
    policy = permissive_policy(
        "attack-operator-namespace", {"matchLabels": {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}}
    )
    apply_policy(cluster.api_client, policy)
    try:
        with contextlib.suppress(ApiException):
            service_account(cluster, OPERATOR_NAMESPACE)
        create_credential(cluster, OPERATOR_NAMESPACE, name)
        yield name
    finally:
        with contextlib.suppress(ApiException):
            cluster.core.delete_namespaced_service_account("research-agent", OPERATOR_NAMESPACE)
        with contextlib.suppress(ApiException):
            cluster.custom.delete_namespaced_custom_object(
                model.GROUP, model.VERSION, OPERATOR_NAMESPACE, model.PLURAL, name
            )
        cluster.custom.delete_cluster_custom_object(
            model.GROUP, model.VERSION, model.POLICY_PLURAL, policy["metadata"]["name"]
        )


def test_a_direct_review_seals_no_pod_where_the_webhook_is_never_called(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    """The webhook configuration skips kube-system and the operator's namespace, and pods
    there got nothing because nothing sealed them. A client sending the review itself got a
    seal for such a pod anyway, and a pod created with that answer was issued its values."""
    with _credential_in_operator_namespace(cluster) as name:
        pod = _pod(OPERATOR_NAMESPACE, "sealed-elsewhere", name)
        status, answer = _post(operator, _review(pod))
        assert status == 200
        response = _response(answer)
        assert response["allowed"] is False
        assert "webhook" in response["status"]["message"]


def test_hostile_direct_reviews_get_answers_not_tracebacks(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """Reviews the API server never sends, from a client on the webhook's port: JSON nested
    too deep to parse was a 500 with a traceback in the operator's log (as it was at the token
    service), and a pod whose volumes or owners are not objects crashed the seal check (a
    500 naming a Python error, a traceback each). Now each is a malformed request, refused;
    what the configuration never sends is allowed unchanged."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    logged = len(operator.logs())

    status, _ = _post(operator, b"[" * 100_000)
    assert status == 400
    deep = b'{"request": {"object": {"metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}}}"
    status, _ = _post(operator, deep)
    assert status == 400

    malformed: dict[str, Any] = {
        "projected volume not an object": {"volumes": [{"name": labels.volume_name("x"), "projected": [1]}]},
        "sources not objects": {"volumes": [{"name": labels.volume_name("x"), "projected": {"sources": [1]}}]},
        "secret items not objects": {
            "volumes": [
                {"name": labels.volume_name("x"), "projected": {"sources": [{"secret": {"name": "a", "items": [1]}}]}}
            ]
        },
    }
    for case, spec in malformed.items():
        pod = _pod(namespace)
        pod["spec"].update(spec)
        status, answer = _post(operator, _review(pod))
        assert status == 200, case
        response = _response(answer)
        assert response["allowed"] is False and "malformed pod" in response["status"]["message"], (case, response)
    for case, meta in {
        "owners not objects": {"ownerReferences": ["Job"]},
        "name not a string": {"name": {"nested": [1, 2, 3]}},
    }.items():
        pod = _pod(namespace)
        pod["metadata"].update(meta)
        response = _response(_post(operator, _review(pod))[1])
        assert response["allowed"] is False and "malformed pod" in response["status"]["message"], (case, response)

    # What the configuration never sends: allowed as it is, nothing sealed.
    update = _response(_post(operator, _review(_pod(namespace), operation="UPDATE"))[1])
    subresource = _response(_post(operator, _review(_pod(namespace), subResource="ephemeralcontainers"))[1])
    unlabelled = _pod(namespace)
    unlabelled["metadata"]["labels"] = {}
    plain = _response(_post(operator, _review(unlabelled))[1])
    for response in (update, subresource, plain):
        assert response["allowed"] is True and "patch" not in response

    operator.assert_alive()
    assert "Traceback" not in operator.logs()[logged:]


def test_a_pod_deleted_and_created_again_under_its_name_at_once_loses_its_old_value(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    """A pod creator deletes an agent and creates another under the same name at once, hoping
    the index (by name) takes the new pod for the old: the old pod's value is revoked all the
    same, and only the new pod's verifies."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    developer = client.CoreV1Api(narrow_user(cluster, namespace, "developer", PODS_ONLY, tmp_path))
    old = start_agent(cluster, namespace)
    old_value = value_of(read_secret(cluster, namespace, secret_name_of(old)), "research-llm")
    assert old_value is not None
    developer.delete_namespaced_pod("agent", namespace, grace_period_seconds=0)
    wait_for(lambda: _gone(cluster, namespace, "agent"), what="the old pod gone")
    new = start_agent(cluster, namespace)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    wait_for(lambda: audit_lines(operator, "revoke", podUID=old["metadata"]["uid"]), what="the old pod's value revoked")
    new_value = wait_for(lambda: value_of(read_secret(cluster, namespace, secret_name_of(new)), "research-llm"))
    verifier = Verifier.from_url(operator.api_url, cafile=operator.ca_file())
    with pytest.raises(TokenRejected) as rejected:
        verifier.verify(old_value.decode(), audience=AUDIENCE, namespace=namespace)
    assert rejected.value.reason == "revoked"
    assert (
        verifier.verify(new_value.decode(), audience=AUDIENCE, namespace=namespace)["agentcred"]["podUID"]
        == (new["metadata"]["uid"])
    )


def _gone(cluster: Cluster, namespace: str, name: str) -> bool:
    try:
        cluster.core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        return error.status == 404
    return False
