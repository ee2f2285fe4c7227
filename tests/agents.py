"""Building blocks for projection tests: credentials, agent pods and Jobs, their Secrets.

Values read from Secrets are compared by fingerprint, never printed: a failing assertion
must not put a credential into the test output.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import uuid
from collections.abc import Iterator
from typing import Any

from kubernetes.client.exceptions import ApiException

from agentcred.api import labels, model
from agentcred.api.webhook_configuration import opt_in_check, pod_guard
from clusterkit import LEAK_REPORTER, Cluster, ensure_namespace, opt_in_check_refuses, wait_for
from samples import credential


def create_credential(cluster: Cluster, namespace: str, name: str = "research-llm", **overrides: Any) -> dict:
    overrides.setdefault("projection", {"mountPath": f"/var/run/agentcred/{name}"})
    body = credential(name=name, **overrides)
    cluster.custom.create_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, body)
    return wait_for(lambda: ready_credential(cluster, namespace, name), what=f"AgentCredential {name} Ready")


def get_credential(cluster: Cluster, namespace: str, name: str) -> dict:
    return cluster.custom.get_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, name)


def ready_credential(cluster: Cluster, namespace: str, name: str) -> dict | None:
    body = get_credential(cluster, namespace, name)
    conditions = (body.get("status") or {}).get("conditions") or []
    return body if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None


def condition(body: dict, type_: str) -> dict | None:
    return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def shared_secret(
    cluster: Cluster,
    namespace: str,
    value: str,
    name: str = "upstream-key",
    key: str = "api-key",
    shared_with: str = "*",
) -> None:
    """An upstream Secret for a static source, shared by its owner as agentcred requires."""
    cluster.core.create_namespaced_secret(
        namespace,
        {
            "metadata": {
                "name": name,
                "labels": {labels.SHARED_LABEL: "true"},
                "annotations": {labels.SHARED_WITH_ANNOTATION: shared_with},
            },
            "stringData": {key: value},
        },
    )


def service_account(cluster: Cluster, namespace: str, name: str = "research-agent") -> str:
    cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    return name


def pod_template(credentials: str, sa: str = "research-agent", init_container: bool = False) -> dict:
    spec: dict[str, Any] = {
        "serviceAccountName": sa,
        "restartPolicy": "Never",
        "containers": [
            {"name": "agent", "image": "example.com/agent:1"},
            {"name": "sidecar-tool", "image": "example.com/tool:1"},
        ],
    }
    if init_container:
        spec["initContainers"] = [{"name": "prepare", "image": "example.com/prepare:1"}]
    return {
        "metadata": {
            "labels": {labels.INJECT_LABEL: "true"},
            "annotations": {labels.CREDENTIALS_ANNOTATION: credentials},
        },
        "spec": spec,
    }


def create_job(cluster: Cluster, namespace: str, name: str, credentials: str, **template: Any) -> None:
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": pod_template(credentials, **template)},
    }
    cluster.batch.create_namespaced_job(namespace, body)


def create_pod(cluster: Cluster, namespace: str, name: str, credentials: str, **template: Any) -> dict:
    body = pod_template(credentials, **template)
    body["metadata"]["name"] = name
    return cluster.api_client.sanitize_for_serialization(cluster.core.create_namespaced_pod(namespace, body))


def start_agent(cluster: Cluster, namespace: str, name: str = "agent", credentials: str = "research-llm") -> dict:
    """A bare agent pod asking for `credentials`, once it runs (its values written)."""
    create_pod(cluster, namespace, name, credentials)
    return wait_for(lambda: running_pod(cluster, namespace, name=name), what=f"pod {name} Running")


def operator_caught_up(cluster: Cluster, namespace: str, credentials: str = "research-llm") -> dict:
    """Positive proof the operator has handled the pod events that came before now: a canary
    pod created now in the same namespace (its events follow theirs on the watch) is given its
    values and runs. Assert that something did *not* happen only after this, never after a
    fixed sleep (on a slow machine a sleep passes even if the operator never looked)."""
    return start_agent(cluster, namespace, f"canary-{uuid.uuid4().hex[:6]}", credentials)


def nudge(cluster: Cluster, namespace: str, pod: str) -> None:
    """An edit nobody guards (an unrelated annotation): the operator sees the pod again."""
    cluster.core.patch_namespaced_pod(pod, namespace, {"metadata": {"annotations": {"nudge": uuid.uuid4().hex}}})


def admitted_copy(original: dict, name: str = "copy") -> dict:
    """A pod carrying everything the webhook put on `original` (labels, sealed annotations,
    volumes, the gate): what a pod creator can send within the webhook's reinvocation window."""
    return {
        "metadata": {
            "name": name,
            "labels": dict(original["metadata"]["labels"]),
            "annotations": dict(original["metadata"]["annotations"]),
        },
        "spec": {
            "serviceAccountName": original["spec"].get("serviceAccountName") or "default",
            "containers": [{"name": "c", "image": "x"}],
            "volumes": original["spec"]["volumes"],
            "schedulingGates": [{"name": labels.SCHEDULING_GATE}],
        },
    }


def guard_active(cluster: Cluster, namespace: str, pod: str) -> bool:
    """Does the guard refuse a (dry-run) change of the pod's opt-in label right now?"""
    current = (cluster.core.read_namespaced_pod(pod, namespace).metadata.labels or {}).get(labels.INJECT_LABEL)
    try:
        cluster.core.patch_namespaced_pod(
            pod,
            namespace,
            {"metadata": {"labels": {labels.INJECT_LABEL: "probe" if current != "probe" else "true"}}},
            dry_run="All",
        )
    except ApiException as error:
        return error.status in (403, 422)
    return False


@contextlib.contextmanager
def without_pod_guard(cluster: Cluster) -> Iterator[None]:
    """The pod guard taken away (as if the cluster never installed it): the operator's own
    checks must hold on their own."""
    (_, binding) = pod_guard()[1]
    api = cluster.admission
    api.delete_validating_admission_policy_binding(binding["metadata"]["name"])
    try:
        yield
    finally:
        api.create_validating_admission_policy_binding(binding)


@contextlib.contextmanager
def without_opt_in_check(cluster: Cluster, namespace: str) -> Iterator[None]:
    """The opt-in check taken away (as if the cluster never installed it): what gets past it
    must meet the webhook's and the operator's own checks."""
    (_, binding) = opt_in_check()[1]
    api = cluster.admission
    api.delete_validating_admission_policy_binding(binding["metadata"]["name"])
    try:
        wait_for(lambda: not opt_in_check_refuses(cluster, namespace), what="the opt-in check gone")
        yield
    finally:
        api.create_validating_admission_policy_binding(binding)
        wait_for(lambda: opt_in_check_refuses(cluster, namespace), what="the opt-in check back")


def running_pod(cluster: Cluster, namespace: str, selector: str = "", name: str | None = None) -> dict | None:
    if name:
        pods = [cluster.core.read_namespaced_pod(name, namespace)]
    else:
        pods = cluster.core.list_namespaced_pod(namespace, label_selector=selector).items
    for pod in pods:
        if pod.status.phase == "Running":
            return cluster.api_client.sanitize_for_serialization(pod)
    return None


def job_pod(cluster: Cluster, namespace: str, job: str, timeout: float = 30) -> dict:
    return wait_for(
        lambda: running_pod(cluster, namespace, f"job-name={job}"), timeout=timeout, what=f"a Running pod of Job {job}"
    )


def secret_name_of(pod: dict) -> str:
    return labels.secret_name(pod["metadata"]["annotations"][labels.BINDING_ANNOTATION])


def read_secret(cluster: Cluster, namespace: str, name: str) -> dict | None:
    try:
        return cluster.api_client.sanitize_for_serialization(cluster.core.read_namespaced_secret(name, namespace))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def value_of(secret: dict, credential_name: str) -> bytes | None:
    encoded = (secret.get("data") or {}).get(labels.value_key(credential_name))
    return base64.b64decode(encoded) if encoded else None


def dpop_key_of(cluster: Cluster, pod: dict, credential_name: str = "research-llm") -> dict:
    """The private JWK agentcred wrote beside the pod's DPoP-bound value (its `dpop.jwk`)."""
    secret = read_secret(cluster, pod["metadata"]["namespace"], secret_name_of(pod))
    assert secret is not None, f"pod {pod['metadata']['name']} has no Secret"
    return json.loads(base64.b64decode(secret["data"][labels.dpop_key_key(credential_name)]))


def claims_of(token: bytes) -> dict:
    payload = token.split(b".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))


def state_of(secret: dict) -> dict:
    return json.loads(secret["metadata"]["annotations"][labels.STATE_ANNOTATION])


def secret_gone(cluster: Cluster, namespace: str, name: str) -> bool:
    return read_secret(cluster, namespace, name) is None


def value_gone(cluster: Cluster, namespace: str, name: str, credential_name: str) -> bool:
    secret = read_secret(cluster, namespace, name)
    return secret is None or value_of(secret, credential_name) is None


def audit_lines(operator: Any, action: str, **match: Any) -> list[dict]:
    return [
        line
        for line in operator.audit()
        if line["action"] == action and all(line.get(k) == v for k, v in match.items())
    ]


def same_value(a: bytes | None, b: bytes | None) -> bool:
    """Compare two values without ever showing them."""
    return a is not None and b is not None and hmac.compare_digest(a, b)


def job_condition(cluster: Cluster, namespace: str, name: str, wanted: str) -> bool:
    job = cluster.batch.read_namespaced_job(name, namespace)
    return any(c.type == wanted and c.status == "True" for c in job.status.conditions or [])


def pod_events(cluster: Cluster, namespace: str, pod_name: str) -> list:
    return cluster.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod_name}").items


def reporter_token(cluster: Cluster, who: tuple[str, str] = LEAK_REPORTER) -> str:
    """A token of a leak reporter (the cluster-wide one unless `who` names another), for the intake."""
    namespace, name = who
    ensure_namespace(cluster, namespace)
    try:
        cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    except ApiException as error:
        if error.status != 409:
            raise
    spec = {"audiences": [labels.SERVICE_ACCOUNT_AUDIENCE], "expirationSeconds": 600}
    return cluster.core.create_namespaced_service_account_token(name, namespace, {"spec": spec}).status.token
