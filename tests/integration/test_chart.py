"""The Helm chart: lint and template variants, install on the real control plane, the
operator running as the chart's ServiceAccount (and refused outside its RBAC), upgrade,
uninstall leaving nothing behind, and bad values refused by the schema."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agentcred.webhook import pod_guard
from agents import create_credential, create_job, job_pod, read_secret, secret_gone, secret_name_of, service_account
from clusterkit import REPO, Cluster, OperatorProcess, operator_paused, token_kubeconfig, wait_for

pytestmark = pytest.mark.cluster

CHART = REPO / "charts" / "agentcred"
RELEASE = "agentcred"
NAMESPACE = "agentcred-chart"


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(cluster.binaries["helm"]), *args], capture_output=True, text=True,
                            env=cluster.env(), timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def render(cluster: Cluster, *sets: str) -> list[dict]:
    args = [a for s in sets for a in ("--set", s)]
    out = helm(cluster, "template", RELEASE, str(CHART), "-n", NAMESPACE, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def kinds(documents: list[dict]) -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in documents}


@pytest.fixture(scope="module", autouse=True)
def needs_helm(cluster: Cluster) -> None:
    if "helm" not in cluster.binaries:
        pytest.skip("helm was not built (local control plane only)")


def test_lint_and_default_rendering_is_hardened(cluster: Cluster) -> None:
    assert "0 chart(s) failed" in helm(cluster, "lint", str(CHART), "--strict").stdout
    rendered = kinds(render(cluster))
    deployment = rendered["Deployment/agentcred"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 2 and "--standalone" not in container["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "privileged": False, "capabilities": {"drop": ["ALL"]}}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert rendered["PodDisruptionBudget/agentcred"]["spec"]["minAvailable"] == 1
    webhook = rendered["MutatingWebhookConfiguration/agentcred.agentcred.dev"]["webhooks"][0]
    assert webhook["failurePolicy"] == "Fail" and webhook["timeoutSeconds"] == 5
    assert webhook["objectSelector"] == {"matchLabels": {"agentcred.dev/inject": "true"}}
    assert NAMESPACE in webhook["namespaceSelector"]["matchExpressions"][0]["values"]
    assert "caBundle" not in webhook["clientConfig"]  # the operator injects it; upgrades keep it
    for plural in ("agentcredentials", "agentcredentialpolicies"):
        crd = rendered[f"CustomResourceDefinition/{plural}.agentcred.dev"]
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["spec"] == yaml.safe_load((REPO / "crds" / f"{plural}.agentcred.dev.yaml").read_text())["spec"]
    # The label guard is what `agentcred run` installs when it manages its own configuration.
    for _, body in pod_guard("agentcred.agentcred.dev"):
        shipped = rendered[f"{body['kind']}/{body['metadata']['name']}"]
        assert shipped["spec"] == body["spec"]
    policy = rendered["AgentCredentialPolicy/agentcred-default"]["spec"]
    assert policy["namespaceSelector"] == {"matchLabels": {"agentcred.dev/enabled": "true"}} and policy["sources"] == ["jwt"]
    role = rendered["ClusterRole/agentcred"]
    verbs = {(rule["apiGroups"][0], rule["resources"][0]): set(rule["verbs"]) for rule in role["rules"]}
    assert verbs[("", "pods")] == {"get", "list", "watch", "patch"}  # never create or delete pods
    assert ("", "nodes") not in verbs
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in role["rules"])


@pytest.mark.parametrize("sets, check", [
    (["replicaCount=1"], lambda r: "--standalone" in r["Deployment/agentcred"]["spec"]["template"]["spec"]["containers"][0]["args"]
     and "PodDisruptionBudget/agentcred" not in r),
    (["serviceMonitor.enabled=true", "networkPolicy.enabled=true", "dashboards.enabled=true"],
     lambda r: {"ServiceMonitor/agentcred", "NetworkPolicy/agentcred", "ConfigMap/agentcred-dashboard"} <= set(r)
     and json.loads(r["ConfigMap/agentcred-dashboard"]["data"]["agentcred.json"])["panels"]),
    (["crds.install=false", "rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=custom"],
     lambda r: not any(k.startswith(("CustomResourceDefinition/", "ClusterRole", "Role", "ServiceAccount/")) for k in r)
     and r["Deployment/agentcred"]["spec"]["template"]["spec"]["serviceAccountName"] == "custom"),
    (["webhook.url=https://127.0.0.1:9443", "issuer=https://tokens.example.com", "crds.keep=false"],
     lambda r: r["MutatingWebhookConfiguration/agentcred.agentcred.dev"]["webhooks"][0]["clientConfig"]
     == {"url": "https://127.0.0.1:9443/agentcred-inject"}
     and {"name": "AGENTCRED_ISSUER", "value": "https://tokens.example.com"}
     in r["Deployment/agentcred"]["spec"]["template"]["spec"]["containers"][0]["env"]
     and not r["CustomResourceDefinition/agentcredentials.agentcred.dev"]["metadata"]["annotations"]),
])
def test_template_variants(cluster: Cluster, sets: list[str], check) -> None:
    assert check(kinds(render(cluster, *sets)))


@pytest.mark.parametrize("sets, message", [
    (["replicaCount=-1"], "/replicaCount': minimum"),
    (["replicaCount=two"], "/replicaCount': got string, want integer"),
    (["surprise=1"], "additional properties 'surprise' not allowed"),
    (["webhook.timeoutSeconds=60"], "/webhook/timeoutSeconds': maximum"),
    (["image.pullPolicy=Sometimes"], "/image/pullPolicy'"),
    (["issuer=http://plain"], "/issuer'"),
])
def test_bad_values_are_refused_by_the_schema(cluster: Cluster, sets: list[str], message: str) -> None:
    args = [a for s in sets for a in ("--set", s)]
    result = helm(cluster, "template", RELEASE, str(CHART), *args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_install_run_as_the_chart_service_account_upgrade_uninstall(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    with operator_paused(operator):
        chart_operator = OperatorProcess(cluster, "--webhook-config", "inject-ca", namespace=NAMESPACE,
                                         standalone=False,
                                         env={"AGENTCRED_WEBHOOK_CONFIGURATION": "agentcred.agentcred.dev"})
        helm(cluster, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", "--wait=false",
             "--set", "crds.install=false", "--set", f"webhook.url=https://127.0.0.1:{chart_operator.webhook_port}")
        try:
            kubeconfig = token_kubeconfig(cluster, NAMESPACE, "agentcred", tmp_path / "sa.kubeconfig")
            chart_operator.kubeconfig = kubeconfig
            chart_operator.start()
            try:
                # The whole projection path works with exactly the chart's RBAC.
                service_account(cluster, namespace)
                create_credential(cluster, namespace)
                create_job(cluster, namespace, "task", "research-llm")
                pod = job_pod(cluster, namespace, "task")
                assert read_secret(cluster, namespace, secret_name_of(pod)) is not None
                kubelet.succeed(namespace, pod["metadata"]["name"])
                wait_for(lambda: secret_gone(cluster, namespace, secret_name_of(pod)), what="revoked as the chart's SA")
                lease = cluster.api_client.sanitize_for_serialization(
                    client.CoordinationV1Api(cluster.api_client).read_namespaced_lease("agentcred-leader", NAMESPACE))
                assert lease["spec"]["holderIdentity"]
                forbidden = [line for line in chart_operator.logs().splitlines() if "Forbidden" in line or " 403" in line]
                assert not forbidden, forbidden[:5]
            finally:
                chart_operator.cleanup()

            # Outside its RBAC, the same identity is refused.
            as_operator = config.new_client_from_config(config_file=str(kubeconfig))
            core = client.CoreV1Api(as_operator)
            refused = []
            for attempt in (
                lambda: core.list_namespaced_config_map(namespace),
                lambda: core.create_namespaced_pod(namespace, {"metadata": {"name": "x"},
                                                               "spec": {"containers": [{"name": "c", "image": "x"}]}}),
                lambda: core.delete_namespaced_pod(pod["metadata"]["name"], namespace),
                lambda: core.list_node(),
                lambda: client.RbacAuthorizationV1Api(as_operator).create_cluster_role_binding(
                    {"metadata": {"name": "escalate"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                     "kind": "ClusterRole", "name": "cluster-admin"}, "subjects": [{"kind": "ServiceAccount",
                     "name": "agentcred", "namespace": NAMESPACE}]}),
                lambda: client.AdmissionregistrationV1Api(as_operator).delete_mutating_webhook_configuration(
                    "agentcred.agentcred.dev"),
                lambda: core.delete_namespaced_config_map("agentcred-revocations-0", NAMESPACE),
            ):
                with pytest.raises(ApiException) as denied:
                    attempt()
                refused.append(denied.value.status)
            assert refused == [403] * 7

            helm(cluster, "upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--set", "crds.install=false",
                 "--set", f"webhook.url=https://127.0.0.1:{chart_operator.webhook_port}", "--set", "keyRotationDays=7")
        finally:
            helm(cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait")

        leftovers = {
            "secrets": [s.metadata.name for s in cluster.core.list_namespaced_secret(NAMESPACE).items],
            "configmaps": [c.metadata.name for c in cluster.core.list_namespaced_config_map(NAMESPACE).items
                           if c.metadata.name != "kube-root-ca.crt"],
            "leases": [item.metadata.name for item in
                       client.CoordinationV1Api(cluster.api_client).list_namespaced_lease(NAMESPACE).items],
            "serviceaccounts": [s.metadata.name for s in cluster.core.list_namespaced_service_account(NAMESPACE).items
                                if s.metadata.name != "default"],
            "webhooks": [w.metadata.name for w in cluster.admission.list_mutating_webhook_configuration().items
                         if w.metadata.name.startswith(RELEASE)],
            "clusterroles": [r.metadata.name for r in cluster.rbac.list_cluster_role().items if r.metadata.name == RELEASE],
        }
        assert leftovers == {k: [] for k in leftovers}
        cluster.delete_namespace(NAMESPACE)
