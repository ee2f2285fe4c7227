"""Namespace-scoped mode (`watchNamespaces`), proven as the cluster-wide RBAC is (test_chart.py,
test_operator_bounds.py): the chart installed with watchNamespaces=[a], the operator running as
the chart's ServiceAccount with exactly the chart's RBAC and `--watch-namespace a`. A pod in a
gets its value and loses it when its task ends; an opted-in pod in b is never seen by the
webhook and gets nothing; that identity is refused in b by RBAC, and by the operator-bounds
policies should someone widen its RBAC; a webhook configuration widened by hand still
admits nothing outside the watch."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agentcred.api import labels, model
from agentcred.runtime.events import COMPONENT
from agents import (
    audit_lines,
    create_credential,
    create_job,
    create_pod,
    job_pod,
    read_secret,
    ready_credential,
    running_pod,
    secret_gone,
    secret_name_of,
    service_account,
    value_of,
)
from clusterkit import REPO, Cluster, OperatorProcess, operator_paused, token_kubeconfig, wait_for
from samples import credential

CHART = REPO / "charts" / "agentcred"
RELEASE = "scoped"
NAMESPACE = "agentcred-scoped"
FULLNAME = "scoped-agentcred"
SERVICE_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
WEBHOOK_CONFIGURATION = f"{FULLNAME}.agentcred.dev"
POLICIES = f"{WEBHOOK_CONFIGURATION}-operator"
MANAGED = {labels.MANAGED_LABEL: "true"}


@dataclass
class Scoped:
    watched: str  # namespace a
    outside: str  # namespace b
    operator: OperatorProcess
    api: client.ApiClient  # acting as the chart's ServiceAccount


def helm(cluster: Cluster, *args: str) -> str:
    result = subprocess.run(
        [str(cluster.binaries["helm"]), *args], capture_output=True, text=True, env=cluster.env(), timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(error)


def refused_by_rbac(attempt: Callable[[], Any]) -> str:
    with pytest.raises(ApiException) as refused:
        attempt()
    said = message(refused.value)
    assert refused.value.status == 403 and "cannot" in said and "ValidatingAdmissionPolicy" not in said, said
    return said


def refused_by_policy(policy: str, attempt: Callable[[], Any]) -> str:
    with pytest.raises(ApiException) as refused:
        attempt()
    said = message(refused.value)
    assert refused.value.status == 403 and f"ValidatingAdmissionPolicy '{POLICIES}-{policy}'" in said, said
    return said


@pytest.fixture(scope="module")
def scoped(cluster: Cluster, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scoped]:
    if "helm" not in cluster.binaries:
        pytest.skip("helm was not built (local control plane only)")
    # The session's operator sees every namespace: it must not answer for b meanwhile.
    with operator_paused(operator):
        watched, outside = cluster.create_namespace("scoped-a"), cluster.create_namespace("scoped-b")
        chart_operator = OperatorProcess(
            cluster,
            "--webhook-config",
            "inject-ca",
            "--watch-namespace",
            watched,
            namespace=NAMESPACE,
            standalone=False,
            env={"AGENTCRED_INSTANCE": FULLNAME, "AGENTCRED_WEBHOOK_CONFIGURATION": WEBHOOK_CONFIGURATION},
        )
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
            f"webhook.url=https://127.0.0.1:{chart_operator.webhook_port}",
            "--set",
            f"watchNamespaces={{{watched}}}",
        )
        try:
            kubeconfig = token_kubeconfig(
                cluster, NAMESPACE, FULLNAME, tmp_path_factory.mktemp("scoped") / "sa.kubeconfig"
            )
            chart_operator.kubeconfig = kubeconfig
            chart_operator.start()
            try:
                yield Scoped(
                    watched, outside, chart_operator, config.new_client_from_config(config_file=str(kubeconfig))
                )
            finally:
                chart_operator.cleanup()
        finally:
            helm(cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait")
            cluster.core.delete_namespaced_secret(f"{FULLNAME}-signing-keys", NAMESPACE)  # kept on uninstall
            for name in (NAMESPACE, watched, outside):
                cluster.delete_namespace(name)


def test_the_chart_grants_the_watched_namespace_only(cluster: Cluster, scoped: Scoped) -> None:
    role = cluster.rbac.read_cluster_role(FULLNAME)
    cluster_wide = {resource for rule in role.rules for resource in rule.resources}
    assert not cluster_wide & {"secrets", "pods", "agentcredentials", "events"}, cluster_wide
    assert cluster.rbac.read_namespaced_role(f"{FULLNAME}-watch", scoped.watched).rules
    with pytest.raises(ApiException) as absent:
        cluster.rbac.read_namespaced_role(f"{FULLNAME}-watch", scoped.outside)
    assert absent.value.status == 404
    hook = cluster.admission.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION).webhooks[0]
    expressions = {e.operator: e.values for e in hook.namespace_selector.match_expressions}
    assert expressions["In"] == [scoped.watched] and NAMESPACE in expressions["NotIn"]


def test_a_pod_in_the_watched_namespace_gets_its_value_and_loses_it_when_it_ends(
    cluster: Cluster, scoped: Scoped, kubelet: Any
) -> None:
    namespace = scoped.watched
    service_account(cluster, namespace)
    create_credential(cluster, namespace)  # Ready: its status written with the Role's grant
    create_job(cluster, namespace, "task", "research-llm")
    pod = job_pod(cluster, namespace, "task")
    secret = read_secret(cluster, namespace, secret_name_of(pod))
    assert secret is not None and value_of(secret, "research-llm")
    kubelet.succeed(namespace, pod["metadata"]["name"])
    wait_for(lambda: secret_gone(cluster, namespace, secret_name_of(pod)), what="revoked as the scoped operator")
    wait_for(lambda: audit_lines(scoped.operator, "revoke", namespace=namespace), what="the revoke audit line")
    assert audit_lines(scoped.operator, "issue", namespace=namespace)


def test_an_opted_in_pod_outside_is_not_admitted_and_gets_nothing(
    cluster: Cluster, scoped: Scoped, kubelet: Any
) -> None:
    outside = scoped.outside
    service_account(cluster, outside)
    cluster.custom.create_namespaced_custom_object(
        model.GROUP, model.VERSION, outside, model.PLURAL, credential(name="outside-llm")
    )
    pod = create_pod(cluster, outside, "agent", "outside-llm")
    # The webhook never saw it: created as it was written, no binding, no gate, no volume.
    annotations = pod["metadata"].get("annotations") or {}
    assert labels.BINDING_ANNOTATION not in annotations and labels.SEAL_ANNOTATION not in annotations
    assert not pod["spec"].get("schedulingGates")
    assert not any("agentcred" in (v.get("name") or "") for v in pod["spec"].get("volumes") or [])
    wait_for(lambda: running_pod(cluster, outside, name="agent"), what="the pod outside running, ungated")

    # What was created in b before this credential in a is settled once a's is Ready: the
    # operator never saw b's credential nor its pod.
    watched = scoped.watched
    service_account(cluster, watched, "later-agent")
    create_credential(cluster, watched, "later-llm", subjects={"serviceAccounts": ["later-agent"]})
    body = cluster.custom.get_namespaced_custom_object(model.GROUP, model.VERSION, outside, model.PLURAL, "outside-llm")
    assert not body.get("status") and not (body["metadata"].get("finalizers") or [])
    assert ready_credential(cluster, outside, "outside-llm") is None
    managed = cluster.core.list_namespaced_secret(outside, label_selector=f"{labels.MANAGED_LABEL}=true").items
    assert managed == []
    events = cluster.core.list_namespaced_event(outside).items
    assert not [
        e for e in events if e.reporting_component == COMPONENT or (e.source and e.source.component) == COMPONENT
    ]
    assert not [line for line in scoped.operator.audit() if line.get("namespace") == outside]


def test_the_charts_rbac_was_all_it_needed(scoped: Scoped) -> None:
    forbidden = [
        line
        for line in scoped.operator.logs().splitlines()
        if "Forbidden" in line or " 403" in line or "Not enough permissions" in line
    ]
    assert not forbidden, forbidden[:5]


def test_its_identity_is_refused_outside_the_watched_namespace(cluster: Cluster, scoped: Scoped) -> None:
    core = client.CoreV1Api(scoped.api)
    custom = client.CustomObjectsApi(scoped.api)
    watched, outside = scoped.watched, scoped.outside
    cluster.core.create_namespaced_pod(
        outside, {"metadata": {"name": "target"}, "spec": {"containers": [{"name": "c", "image": "example.com/x:1"}]}}
    )
    cluster.core.create_namespaced_secret(
        outside, {"metadata": {"name": "theirs"}, "type": "Opaque", "stringData": {"k": "v"}}
    )
    managed_there = {
        "metadata": {"name": f"agentcred-{uuid.uuid4().hex[:16]}", "labels": MANAGED},
        "type": "Opaque",
        "stringData": {"v": "x"},
    }
    for attempt in (
        lambda: core.read_namespaced_secret("theirs", outside),
        lambda: core.list_namespaced_secret(outside),
        lambda: core.list_secret_for_all_namespaces(label_selector=f"{labels.MANAGED_LABEL}=true"),
        lambda: core.create_namespaced_secret(outside, managed_there),
        lambda: core.delete_namespaced_secret("theirs", outside),
        lambda: core.list_namespaced_pod(outside),
        lambda: core.list_pod_for_all_namespaces(),
        lambda: core.patch_namespaced_pod("target", outside, {"metadata": {"annotations": {"agentcred.dev/x": "y"}}}),
        lambda: core.create_namespaced_event(
            outside,
            {"metadata": {"generateName": "x."}, "involvedObject": {"kind": "Pod", "name": "target"}, "reason": "X"},
        ),
        lambda: custom.list_namespaced_custom_object(model.GROUP, model.VERSION, outside, model.PLURAL),
        lambda: custom.list_cluster_custom_object(model.GROUP, model.VERSION, model.PLURAL),
        lambda: core.read_namespaced_secret("anything", "kube-system"),
    ):
        refused_by_rbac(attempt)
    # What it does in a, and what stays cluster-wide (policies and namespaces read, TokenReview).
    core.list_namespaced_secret(watched, label_selector=f"{labels.MANAGED_LABEL}=true")
    custom.list_namespaced_custom_object(model.GROUP, model.VERSION, watched, model.PLURAL)
    custom.list_cluster_custom_object(model.GROUP, model.VERSION, model.POLICY_PLURAL)
    core.list_namespace()
    # The operator-bounds policies apply in a as they do cluster-wide ...
    refused_by_policy(
        "secrets", lambda: core.create_namespaced_secret(watched, {"metadata": {"name": "mine"}, "type": "Opaque"})
    )
    # ... and refuse b even where someone widens its RBAC by mistake.
    cluster.rbac.create_namespaced_role(
        outside,
        {
            "metadata": {"name": "too-much"},
            "rules": [{"apiGroups": [""], "resources": ["secrets", "pods"], "verbs": ["get", "create", "patch"]}],
        },
    )
    cluster.rbac.create_namespaced_role_binding(
        outside,
        {
            "metadata": {"name": "too-much"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "too-much"},
            "subjects": [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}],
        },
    )
    wait_for(lambda: _may(cluster, "create", "secrets", outside), what="the extra RoleBinding")
    assert "namespace-scoped" in refused_by_policy(
        "secrets", lambda: core.create_namespaced_secret(outside, managed_there)
    )
    assert "namespace-scoped" in refused_by_policy(
        "pods",
        lambda: core.patch_namespaced_pod("target", outside, {"metadata": {"annotations": {"agentcred.dev/x": "y"}}}),
    )


def _may(cluster: Cluster, verb: str, resource: str, namespace: str) -> bool:
    review = client.AuthorizationV1Api(cluster.api_client).create_subject_access_review(
        {
            "spec": {
                "user": SERVICE_ACCOUNT,
                "resourceAttributes": {"verb": verb, "resource": resource, "namespace": namespace},
            }
        }
    )
    return bool(review.status.allowed)


def test_a_webhook_configuration_widened_by_hand_still_admits_nothing_outside(cluster: Cluster, scoped: Scoped) -> None:
    """Were the configuration to send it b's pods, the operator refuses them (admitted and gated,
    they would wait forever: nothing there follows them)."""
    original = cluster.admission.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION)
    selector = original.webhooks[0].namespace_selector
    index = next(i for i, e in enumerate(selector.match_expressions) if e.operator == "In")
    cluster.admission.patch_mutating_webhook_configuration(
        WEBHOOK_CONFIGURATION, [{"op": "remove", "path": f"/webhooks/0/namespaceSelector/matchExpressions/{index}"}]
    )
    try:
        outside = scoped.outside
        service_account(cluster, outside, "widened-agent")

        def refused() -> str | None:
            try:  # a new name each time: one let through before the widening took stays
                create_pod(cluster, outside, f"probe-{uuid.uuid4().hex[:6]}", "outside-llm", sa="widened-agent")
            except ApiException as error:
                return message(error)
            return None

        said = wait_for(refused, what="the widened webhook configuration in force")
        assert "namespace-scoped" in said and outside in said, said
        assert audit_lines(scoped.operator, "deny", namespace=outside)
    finally:
        cluster.admission.patch_mutating_webhook_configuration(
            WEBHOOK_CONFIGURATION,
            [
                {
                    "op": "add",
                    "path": "/webhooks/0/namespaceSelector",
                    "value": cluster.api_client.sanitize_for_serialization(selector),
                }
            ],
        )
