"""The Helm chart: lint and template variants, install on the real control plane, the
operator running as the chart's ServiceAccount (and refused outside its RBAC and the
operator-bounds policy: more in test_operator_bounds.py), upgrade, uninstall leaving nothing
behind but the signing keys, bad values refused by the schema, the chart as a subchart, two
releases side by side, and the README's permission tables matching the rendered RBAC."""

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agentcred.api.webhook_configuration import opt_in_check, pod_guard
from agents import create_credential, create_job, job_pod, read_secret, secret_gone, secret_name_of, service_account
from clusterkit import REPO, Cluster, OperatorProcess, operator_paused, token_kubeconfig, wait_for

CHART = REPO / "charts" / "agentcred"
RELEASE = "agentcred"
NAMESPACE = "agentcred-chart"


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(cluster.binaries["helm"]), *args], capture_output=True, text=True, env=cluster.env(), timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def render(cluster: Cluster, *sets: str, release: str = RELEASE) -> list[dict]:
    args = [a for s in sets for a in ("--set", s)]
    out = helm(cluster, "template", release, str(CHART), "-n", NAMESPACE, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def env_of(rendered: dict[str, dict], deployment: str = "Deployment/agentcred") -> dict[str, str]:
    container = rendered[deployment]["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


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
    assert (
        pod["securityContext"]["runAsNonRoot"] is True
        and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert rendered["PodDisruptionBudget/agentcred"]["spec"]["minAvailable"] == 1
    webhook = rendered["MutatingWebhookConfiguration/agentcred.agentcred.dev"]["webhooks"][0]
    assert webhook["failurePolicy"] == "Fail" and webhook["timeoutSeconds"] == 5
    assert webhook["objectSelector"] == {"matchLabels": {"agentcred.dev/inject": "true"}}
    assert NAMESPACE in webhook["namespaceSelector"]["matchExpressions"][0]["values"]
    assert "caBundle" not in webhook["clientConfig"]  # the operator injects it; upgrades keep it
    # The CRDs are not templates: they are the chart's crds/ folder (tests/unit/test_crd.py: the
    # files in crds/), which `helm install` creates first (test_install_path.py).
    assert not any(key.startswith("CustomResourceDefinition/") for key in rendered)
    # The label guard and the opt-in check are what `agentcred run` installs when it manages
    # its own configuration (there, failing closed: the check refuses pods no webhook admitted).
    for _, body in pod_guard("agentcred.agentcred.dev") + opt_in_check("agentcred.agentcred.dev", NAMESPACE):
        shipped = rendered[f"{body['kind']}/{body['metadata']['name']}"]
        assert shipped["spec"] == body["spec"]
    lenient = kinds(render(cluster, "webhook.failurePolicy=Ignore", "webhook.excludeNamespaces={legacy}"))
    check = opt_in_check("agentcred.agentcred.dev", NAMESPACE, excluded=("legacy",), admitted_only=False)[0][1]
    assert lenient["ValidatingAdmissionPolicy/agentcred.agentcred.dev-opt-in"]["spec"] == check["spec"]
    policy = rendered["AgentCredentialPolicy/agentcred-default"]["spec"]
    assert policy["namespaceSelector"] == {"matchLabels": {"agentcred.dev/enabled": "true"}} and policy["sources"] == [
        "jwt"
    ]
    role = rendered["ClusterRole/agentcred"]
    verbs = {(rule["apiGroups"][0], rule["resources"][0]): set(rule["verbs"]) for rule in role["rules"]}
    assert verbs[("", "pods")] == {"get", "list", "watch", "patch"}  # never create or delete pods
    assert ("", "nodes") not in verbs
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in role["rules"])
    # The operator's state is named after the release; for the release "agentcred", as before.
    env = env_of(rendered)
    assert env["AGENTCRED_INSTANCE"] == "agentcred" and env["AGENTCRED_WEBHOOK_CONFIG"] == "inject-ca"
    assert {
        "Secret/agentcred-signing-keys",
        "Secret/agentcred-webhook-tls",
        "Lease/agentcred-leader",
        "ConfigMap/agentcred-revocations-0",
        "ConfigMap/agentcred-revocations-7",
        "ConfigMap/agentcred-ca-bundle",
    } <= set(rendered)
    keys = rendered["Secret/agentcred-signing-keys"]["metadata"]
    assert keys["annotations"] == {"helm.sh/resource-policy": "keep"}  # outstanding tokens stay verifiable
    for bound in ("secrets", "pods", "pod-lifecycle", "webhook", "credentials"):  # the operator's own bounds
        name = f"agentcred.agentcred.dev-operator-{bound}"
        policy = rendered[f"ValidatingAdmissionPolicy/{name}"]["spec"]
        assert policy["failurePolicy"] == "Fail" and policy["matchConditions"] == [
            {
                "name": "is-the-operator",
                "expression": f"request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:agentcred'",
            }
        ]
        binding = rendered[f"ValidatingAdmissionPolicyBinding/{name}"]["spec"]
        assert binding == {"policyName": name, "validationActions": ["Deny"]}
    # People manage AgentCredentials through the built-in roles; never policies.
    for name, aggregate in (("agentcred-edit", {"admin", "edit"}), ("agentcred-view", {"view"})):
        people = rendered[f"ClusterRole/{name}"]
        assert {k.rsplit("-", 1)[1] for k in people["metadata"]["labels"] if "aggregate-to-" in k} == aggregate
        assert [r["resources"] for r in people["rules"]] == [["agentcredentials"]]


@pytest.mark.parametrize(
    ("sets", "check"),
    [
        (
            ["replicaCount=1"],
            lambda r: (
                "--standalone" in r["Deployment/agentcred"]["spec"]["template"]["spec"]["containers"][0]["args"]
                and "PodDisruptionBudget/agentcred" not in r
            ),
        ),
        (
            ["serviceMonitor.enabled=true", "networkPolicy.enabled=true", "dashboards.enabled=true"],
            lambda r: (
                {"ServiceMonitor/agentcred", "NetworkPolicy/agentcred", "ConfigMap/agentcred-dashboard"} <= set(r)
                and json.loads(r["ConfigMap/agentcred-dashboard"]["data"]["agentcred.json"])["panels"]
            ),
        ),
        (
            ["rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=custom"],
            lambda r: (
                not any(k.startswith(("ClusterRole", "Role", "ServiceAccount/")) for k in r)
                and r["Deployment/agentcred"]["spec"]["template"]["spec"]["serviceAccountName"] == "custom"
                and "system:serviceaccount:agentcred-chart:custom"
                in r["ValidatingAdmissionPolicy/agentcred.agentcred.dev-operator-secrets"]["spec"]["matchConditions"][
                    0
                ]["expression"]
            ),
        ),
        (
            ["rbac.aggregateToDefaultRoles=false", "signingKeys.keepOnUninstall=false", "webhook.failurePolicy=Ignore"],
            lambda r: (
                "ClusterRole/agentcred-edit" not in r
                and "ClusterRole/agentcred-view" not in r
                and "annotations" not in r["Secret/agentcred-signing-keys"]["metadata"]
                and r["MutatingWebhookConfiguration/agentcred.agentcred.dev"]["webhooks"][0]["failurePolicy"]
                == "Ignore"
            ),
        ),
        (
            [
                "extraArgs[0]=--verbose",
                "extraEnv[0].name=HTTPS_PROXY",
                "extraEnv[0].value=http://proxy.example:3128",
                "podAnnotations.a=b",
                "podLabels.c=d",
                "priorityClassName=system-cluster-critical",
            ],
            lambda r: (
                r["Deployment/agentcred"]["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "--verbose"
                and env_of(r)["HTTPS_PROXY"] == "http://proxy.example:3128"
                and r["Deployment/agentcred"]["spec"]["template"]["metadata"]["annotations"] == {"a": "b"}
                and r["Deployment/agentcred"]["spec"]["template"]["metadata"]["labels"]["c"] == "d"
                and r["Deployment/agentcred"]["spec"]["template"]["spec"]["priorityClassName"]
                == "system-cluster-critical"
            ),
        ),
        (
            [
                "global.imageRegistry=registry.example:5000",
                f"image.digest=sha256:{'a' * 64}",
                "global.imagePullSecrets[0]=shared",
                "imagePullSecrets[0].name=own",
                "global.priorityClassName=platform",
                "commonLabels.team=platform",
                "logLevel=warning",
                "webhook.hostNetwork=true",
            ],
            lambda r: (
                (pod := r["Deployment/agentcred"]["spec"]["template"]["spec"])["containers"][0]["image"]
                == f"registry.example:5000/agentcred/agentcred@sha256:{'a' * 64}"
                and pod["imagePullSecrets"] == [{"name": "own"}, {"name": "shared"}]
                and pod["priorityClassName"] == "platform"
                and pod["hostNetwork"] is True
                and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
                and "--log-level=warning" in pod["containers"][0]["args"]
                and all(doc["metadata"]["labels"]["team"] == "platform" for doc in r.values())
                and r["Deployment/agentcred"]["spec"]["template"]["metadata"]["labels"]["team"] == "platform"
            ),
        ),
        (
            ["auditLog=/var/log/agentcred/audit.log"],
            lambda r: (
                {"name": "audit-log", "mountPath": "/var/log/agentcred"}
                in (pod := r["Deployment/agentcred"]["spec"]["template"]["spec"])["containers"][0]["volumeMounts"]
                and {"name": "audit-log", "emptyDir": {}} in pod["volumes"]
            ),
        ),
        (
            [
                "auditLog=/shipped/audit.log",
                "extraVolumes[0].name=shipped",
                "extraVolumes[0].hostPath.path=/var/log/agentcred",
                "extraVolumeMounts[0].name=shipped",
                "extraVolumeMounts[0].mountPath=/shipped",
            ],
            lambda r: (
                [
                    m["name"]
                    for m in r["Deployment/agentcred"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                ]
                == ["tmp", "shipped"]  # the audit log goes to the volume given, and no emptyDir over it
                and r["Deployment/agentcred"]["spec"]["template"]["spec"]["volumes"][-1]
                == {"name": "shipped", "hostPath": {"path": "/var/log/agentcred"}}
            ),
        ),
        (
            [
                "serviceMonitor.enabled=true",
                "serviceMonitor.namespace=monitoring",
                "serviceMonitor.interval=1m",
                "serviceMonitor.scrapeTimeout=20s",
            ],
            lambda r: (
                (monitor := r["ServiceMonitor/agentcred"])["metadata"]["namespace"] == "monitoring"
                and monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
                and monitor["spec"]["endpoints"][0]["scrapeTimeout"] == "20s"
            ),
        ),
        (
            ["defaultPolicy.maxTTL=2d", "defaultPolicy.maxLifetime=1d12h"],
            lambda r: (
                r["AgentCredentialPolicy/agentcred-default"]["spec"]["maxTTL"] == "2d"
                and r["AgentCredentialPolicy/agentcred-default"]["spec"]["maxLifetime"] == "1d12h"
            ),
        ),
        (
            ["fullnameOverride=tokens"],
            lambda r: (
                {
                    "Deployment/tokens",
                    "Secret/tokens-signing-keys",
                    "Lease/tokens-leader",
                    "Role/tokens",
                    "ValidatingAdmissionPolicy/tokens.agentcred.dev-operator-secrets",
                }
                <= set(r)
                and env_of(r, "Deployment/tokens")["AGENTCRED_INSTANCE"] == "tokens"
            ),
        ),
        (
            ["webhook.url=https://127.0.0.1:9443", "issuer=https://tokens.example.com"],
            lambda r: (
                r["MutatingWebhookConfiguration/agentcred.agentcred.dev"]["webhooks"][0]["clientConfig"]
                == {"url": "https://127.0.0.1:9443/agentcred-inject"}
                and {"name": "AGENTCRED_ISSUER", "value": "https://tokens.example.com"}
                in r["Deployment/agentcred"]["spec"]["template"]["spec"]["containers"][0]["env"]
            ),
        ),
    ],
)
def test_template_variants(cluster: Cluster, sets: list[str], check) -> None:
    assert check(kinds(render(cluster, *sets)))


def ports_of(rendered: dict[str, dict]) -> tuple[set[str], set[str]]:
    container = rendered["Deployment/agentcred"]["spec"]["template"]["spec"]["containers"][0]
    return {p["name"] for p in container["ports"]}, {p["name"] for p in rendered["Service/agentcred"]["spec"]["ports"]}


def test_ext_authz_is_opened_only_for_allowed_gateways(cluster: Cluster) -> None:
    """No gateway allowed: the operator serves no gRPC, and the chart opens no port for it."""
    plain = kinds(render(cluster, "networkPolicy.enabled=true"))
    assert "ext-authz" not in set.union(*ports_of(plain))
    assert env_of(plain)["AGENTCRED_GATEWAYS"] == ""
    allowed = kinds(
        render(cluster, "networkPolicy.enabled=true", "gateway.allowed[0]=edge/envoy", "gateway.grpcPort=9292")
    )
    container_ports, service_ports = ports_of(allowed)
    assert "ext-authz" in container_ports and "ext-authz" in service_ports
    env = env_of(allowed)
    assert env["AGENTCRED_GATEWAYS"] == "edge/envoy" and env["AGENTCRED_GATEWAY_GRPC_PORT"] == "9292"
    ingress = allowed["NetworkPolicy/agentcred"]["spec"]["ingress"]
    opened = [rule["from"] for rule in ingress if rule["ports"][0]["port"] == "ext-authz"]
    assert opened == [[{"namespaceSelector": {}}]]


def test_cert_manager_issues_the_serving_certificate(cluster: Cluster) -> None:
    rendered = kinds(render(cluster, "certManager.enabled=true"))
    webhook = rendered["MutatingWebhookConfiguration/agentcred.agentcred.dev"]
    assert webhook["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NAMESPACE}/agentcred-webhook-tls"
    }
    assert "caBundle" not in webhook["webhooks"][0]["clientConfig"]
    certificate = rendered["Certificate/agentcred-webhook-tls"]["spec"]
    assert certificate["secretName"] == "agentcred-webhook-tls"  # the Secret the operator reads
    assert certificate["dnsNames"] == [
        "agentcred",
        f"agentcred.{NAMESPACE}",
        f"agentcred.{NAMESPACE}.svc",
        f"agentcred.{NAMESPACE}.svc.cluster.local",
    ]
    assert certificate["issuerRef"] == {"name": "agentcred-ca", "kind": "Issuer", "group": "cert-manager.io"}
    assert rendered["Certificate/agentcred-ca"]["spec"]["isCA"] is True
    assert rendered["Issuer/agentcred-ca"]["spec"] == {"ca": {"secretName": "agentcred-ca"}}
    # The operator leaves the webhook configuration and that Secret to cert-manager, and may not write them.
    assert env_of(rendered)["AGENTCRED_WEBHOOK_CONFIG"] == "none"
    assert env_of(rendered)["AGENTCRED_SERVING_CERTIFICATE"] == "external"  # read, never written
    assert "Secret/agentcred-webhook-tls" not in rendered
    assert not any(
        "mutatingwebhookconfigurations" in r["resources"] for r in rendered["ClusterRole/agentcred"]["rules"]
    )
    role_secrets = [r for r in rendered["Role/agentcred"]["rules"] if r["resources"] == ["secrets"]]
    assert role_secrets == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["agentcred-signing-keys"], "verbs": ["update"]}
    ]
    bounds = json.dumps(rendered["ValidatingAdmissionPolicy/agentcred.agentcred.dev-operator-secrets"])
    assert "agentcred-webhook-tls" not in bounds and "agentcred-signing-keys" in bounds

    given = kinds(
        render(
            cluster,
            "certManager.enabled=true",
            "certManager.issuerRef.name=corp",
            "certManager.issuerRef.kind=ClusterIssuer",
        )
    )
    assert not any(k.startswith("Issuer/") or k == "Certificate/agentcred-ca" for k in given)
    assert given["Certificate/agentcred-webhook-tls"]["spec"]["issuerRef"] == {
        "name": "corp",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_namespace_scoped_rendering(cluster: Cluster) -> None:
    """watchNamespaces: Roles in the watched namespaces replace the cluster-wide grant on pods,
    Secrets, AgentCredentials and Events; what stays cluster-wide is what has no namespace."""
    documents = render(cluster, "watchNamespaces={team-a,team-b}")
    rendered = kinds(documents)
    cluster_wide = {r for rule in rendered["ClusterRole/agentcred"]["rules"] for r in rule["resources"]}
    assert cluster_wide == {
        "agentcredentialpolicies",
        "namespaces",
        "tokenreviews",
        "customresourcedefinitions",
        "mutatingwebhookconfigurations",
    }
    webhook_rule = next(
        rule
        for rule in rendered["ClusterRole/agentcred"]["rules"]
        if "mutatingwebhookconfigurations" in rule["resources"]
    )
    assert webhook_rule["resourceNames"] == ["agentcred.agentcred.dev"]
    by_place = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
        for d in documents
        if d["kind"] in ("Role", "RoleBinding")
    }
    for namespace in ("team-a", "team-b"):
        role = by_place[("Role", namespace, "agentcred-watch")]
        verbs = {(rule["apiGroups"][0], r): set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"]}
        assert verbs == {
            ("agentcred.dev", "agentcredentials"): {"get", "list", "watch", "patch"},
            ("agentcred.dev", "agentcredentials/status"): {"get", "patch"},
            ("", "pods"): {"get", "list", "watch", "patch"},
            ("", "secrets"): {"get", "list", "watch", "create", "patch", "delete"},
            ("", "events"): {"create", "patch"},
        }
        binding = by_place[("RoleBinding", namespace, "agentcred-watch")]
        assert binding["roleRef"]["name"] == "agentcred-watch"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "agentcred", "namespace": NAMESPACE}]
    assert {k[1] for k in by_place if k[2] == "agentcred-watch"} == {"team-a", "team-b"}
    # Its own state: read by name too, since no cluster-wide Secret read covers it now.
    own = next(r for r in rendered["Role/agentcred"]["rules"] if r["resources"] == ["secrets"])
    assert set(own["verbs"]) == {"get", "update"}
    assert set(own["resourceNames"]) == {"agentcred-signing-keys", "agentcred-webhook-tls"}
    webhook = rendered["MutatingWebhookConfiguration/agentcred.agentcred.dev"]["webhooks"][0]
    assert webhook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", NAMESPACE]},
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]},
    ]
    assert env_of(rendered)["AGENTCRED_WATCH_NAMESPACES"] == "team-a,team-b"
    # The pod guard, as `agentcred run --watch-namespace` installs it: only there.
    for _, body in pod_guard("agentcred.agentcred.dev", ("team-a", "team-b")):
        assert rendered[f"{body['kind']}/{body['metadata']['name']}"]["spec"] == body["spec"]
    # The operator-bounds policies refuse writes elsewhere too, should someone widen its RBAC.
    for bound in ("secrets", "pods"):
        validations = rendered[f"ValidatingAdmissionPolicy/agentcred.agentcred.dev-operator-{bound}"]["spec"][
            "validations"
        ]
        assert "request.namespace in ['team-a', 'team-b']" in validations[0]["expression"]
    # The default stays cluster-wide: no Role elsewhere, no In selector, no setting.
    default = render(cluster)
    assert not [d for d in default if d["metadata"]["name"] == "agentcred-watch"]
    assert "AGENTCRED_WATCH_NAMESPACES" not in env_of(kinds(default))
    assert "namespace-scoped" not in json.dumps(default)


def test_network_policy_limits_each_port_and_egress(cluster: Cluster) -> None:
    policy = kinds(render(cluster, "networkPolicy.enabled=true"))["NetworkPolicy/agentcred"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    ingress = {rule["ports"][0]["port"]: rule["from"] for rule in policy["ingress"]}
    assert ingress["api"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"agentcred.dev/inject": "true"}}}
    ]
    assert ingress["health"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    ]
    assert {peer["ipBlock"]["cidr"] for peer in ingress["webhook"]} == {"0.0.0.0/0", "::/0"}
    api_server, dns = policy["egress"]
    assert {p["port"] for p in api_server["ports"]} == {443, 6443}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}

    narrowed = kinds(
        render(
            cluster,
            "networkPolicy.enabled=true",
            "networkPolicy.apiFrom=null",
            "networkPolicy.webhookFrom[0].ipBlock.cidr=10.0.0.0/24",
            "networkPolicy.egress.apiServer.to[0].ipBlock.cidr=10.0.0.1/32",
            "networkPolicy.egress.mintingServices[0].to[0].podSelector.matchLabels.app=mint",
            "networkPolicy.egress.mintingServices[0].ports[0].port=8443",
        )
    )["NetworkPolicy/agentcred"]["spec"]
    assert [rule["ports"][0]["port"] for rule in narrowed["ingress"]] == ["webhook", "health"]  # api closed
    assert narrowed["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    assert narrowed["egress"][0]["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert narrowed["egress"][2] == {
        "to": [{"podSelector": {"matchLabels": {"app": "mint"}}}],
        "ports": [{"port": 8443}],
    }


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["replicaCount=-1"], "/replicaCount': minimum"),
        (["replicaCount=two"], "/replicaCount': got string, want integer"),
        (["surprise=1"], "additional properties 'surprise' not allowed"),
        (["webhook.timeoutSeconds=60"], "/webhook/timeoutSeconds': maximum"),
        (["image.pullPolicy=Sometimes"], "/image/pullPolicy'"),
        (["issuer=http://plain"], "/issuer'"),
        (["webhook.failurePolicy=Sometimes"], "/webhook/failurePolicy'"),
        (["serviceMonitor.interval=90"], "/serviceMonitor/interval'"),
        (["extraEnv[0].value=x"], "/extraEnv/0'"),
        (["nameOverride=Not_A_Name"], "/nameOverride'"),
        (["certManager.issuerRef.kind=ClusterIssuer"], "/certManager/issuerRef'"),
        (["networkPolicy.egress.dns.to=null"], "/networkPolicy/egress/dns"),
        (["watchNamespaces={Team_A}"], "/watchNamespaces/0'"),
        (["watchNamespaces={a,a}"], "/watchNamespaces'"),
        (["image.digest=latest"], "/image/digest'"),
        (["logLevel=verbose"], "/logLevel'"),
        (["auditLog=audit.log"], "/auditLog'"),
        (["defaultPolicy.maxTTL=2w"], "/defaultPolicy/maxTTL'"),
        (["serviceMonitor.scrapeTimeout=10"], "/serviceMonitor/scrapeTimeout'"),
        (["extraVolumeMounts[0].name=x"], "/extraVolumeMounts/0'"),
        (["watchNamespaces={kube-system}"], "the webhook never sees namespace kube-system"),
        ([f"watchNamespaces={{{NAMESPACE}}}"], f"the webhook never sees namespace {NAMESPACE}"),
        (["watchNamespaces={legacy}", "webhook.excludeNamespaces={legacy}"], "the webhook never sees namespace legacy"),
    ],
)
def test_bad_values_are_refused_by_the_schema(cluster: Cluster, sets: list[str], message: str) -> None:
    args = [a for s in sets for a in ("--set", s)]
    result = helm(cluster, "template", RELEASE, str(CHART), "-n", NAMESPACE, *args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "sets",
    [
        ["global.imageRegistry=registry.example"],  # what an umbrella chart passes to every subchart
        ["nameOverride=tokens", "fullnameOverride=agent-tokens"],
        ["serviceMonitor.enabled=true", "serviceMonitor.interval=1m30s"],
        ["webhook.failurePolicy=Ignore", "extraArgs[0]=--verbose", "extraEnv[0].name=A", "extraEnv[0].value=b"],
        ["podAnnotations.a=b", "podLabels.c=d", "priorityClassName=high"],
    ],
)
def test_common_values_are_accepted(cluster: Cluster, sets: list[str]) -> None:
    assert render(cluster, *sets)


def test_as_a_dependency_of_an_umbrella_chart(cluster: Cluster, tmp_path: Path) -> None:
    umbrella = tmp_path / "platform"
    umbrella.mkdir()
    (umbrella / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "platform",
                "version": "1.0.0",
                "dependencies": [{"name": "agentcred", "version": "0.2.0", "repository": f"file://{CHART}"}],
            }
        )
    )
    (umbrella / "values.yaml").write_text(
        yaml.safe_dump(
            {
                "global": {"imageRegistry": "registry.example", "labels": {"team": "platform"}},
                "agentcred": {"replicaCount": 3},
            }
        )
    )
    helm(cluster, "dependency", "build", str(umbrella), "--skip-refresh")
    assert "0 chart(s) failed" in helm(cluster, "lint", str(umbrella), "--strict").stdout
    out = helm(cluster, "template", "platform", str(umbrella), "-n", NAMESPACE).stdout
    rendered = kinds([doc for doc in yaml.safe_load_all(out) if doc])
    assert rendered["Deployment/platform-agentcred"]["spec"]["replicas"] == 3
    assert env_of(rendered, "Deployment/platform-agentcred")["AGENTCRED_INSTANCE"] == "platform-agentcred"
    assert not any(k.startswith("CustomResourceDefinition/") for k in rendered)
    refused = helm(cluster, "template", "platform", str(umbrella), "--set", "agentcred.surprise=1", check=False)
    assert refused.returncode != 0 and "additional properties 'surprise' not allowed" in refused.stderr


def test_two_releases_in_one_namespace_share_no_object(cluster: Cluster) -> None:
    first = render(cluster, release="agentcred")
    # The CSI driver's name is the cluster's (pods' inline volumes name it, one plugin per node
    # answers it): one release runs it, the others leave it off.
    assert "CSIDriver/csi.agentcred.dev" in kinds(render(cluster, release="tenant-b"))
    second = render(cluster, "csiNode.enabled=false", release="tenant-b")
    key = lambda doc: (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])  # noqa: E731
    assert not {key(d) for d in first} & {key(d) for d in second}
    rendered = kinds(second)
    assert env_of(rendered, "Deployment/tenant-b-agentcred")["AGENTCRED_INSTANCE"] == "tenant-b-agentcred"
    state = {
        "Secret/tenant-b-agentcred-signing-keys",
        "Secret/tenant-b-agentcred-webhook-tls",
        "Lease/tenant-b-agentcred-leader",
        "ConfigMap/tenant-b-agentcred-revocations-0",
    }
    assert state <= set(rendered)
    named = {n for rule in rendered["Role/tenant-b-agentcred"]["rules"] for n in rule.get("resourceNames", [])}
    assert {
        "tenant-b-agentcred-leader",
        "tenant-b-agentcred-signing-keys",
        "tenant-b-agentcred-webhook-tls",
        "tenant-b-agentcred-revocations-7",
        "tenant-b-agentcred-ca-bundle",
    } <= named and not any(n.startswith("agentcred-") for n in named)
    bounds = rendered["ValidatingAdmissionPolicy/tenant-b-agentcred.agentcred.dev-operator-secrets"]["spec"]
    own_state = next(v["expression"] for v in bounds["variables"] if v["name"] == "ownState")
    assert "'tenant-b-agentcred-signing-keys', 'tenant-b-agentcred-webhook-tls'" in own_state
    assert f"system:serviceaccount:{NAMESPACE}:tenant-b-agentcred" in bounds["matchConditions"][0]["expression"]


def readme_tables() -> list[set[tuple[str, str, frozenset, frozenset]]]:
    """The rows of the tables under "Permissions, and why": (resource, where, verbs, names)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Permissions, and why", 1)[1].split("\n## ", 1)[0]
    tables, rows = [], None
    for line in section.splitlines():
        if not line.startswith("|"):
            rows = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "resource" or set(cells[0]) <= {"-"}:
            continue
        if rows is None:
            rows = set()
            tables.append(rows)
        resource, where, verbs = cells[0].strip("`"), cells[1], cells[2]
        names = set()
        named = re.sub(r"\(.*?\)", "", where.split(":", 1)[1]) if ":" in where else ""  # remarks in parentheses
        for name in re.findall(r"`([^`]+)`", named):
            name = name.replace("<fullname>", RELEASE)
            names |= {name.replace("<n>", str(n)) for n in range(8)} if "<n>" in name else {name}
        scope = (
            "cluster"
            if where.startswith("cluster")
            else "namespace"
            if where.startswith("its namespace")
            else "watched"
            if where.startswith("each watched namespace")
            else ",".join(sorted(re.findall(r"`(admin|edit|view)`", where)))
        )
        rows.add((resource, scope, frozenset(v.strip() for v in verbs.split(",")), frozenset(names)))
    return tables


def test_readme_permission_tables_match_the_rendered_rbac(cluster: Cluster) -> None:
    rendered = kinds(render(cluster))

    def rules(role: dict, scope: str) -> set:
        return {
            (resource, scope, frozenset(rule["verbs"]), frozenset(rule.get("resourceNames", [])))
            for rule in role["rules"]
            for resource in rule["resources"]
        }

    operator = rules(rendered["ClusterRole/agentcred"], "cluster") | rules(rendered["Role/agentcred"], "namespace")
    people = rules(rendered["ClusterRole/agentcred-edit"], "admin,edit") | rules(
        rendered["ClusterRole/agentcred-view"], "view"
    )
    scoped = kinds(render(cluster, "watchNamespaces={team-a}"))  # README: Namespace-scoped mode
    namespaced = (
        rules(scoped["ClusterRole/agentcred"], "cluster")
        | rules(scoped["Role/agentcred"], "namespace")
        | rules(scoped["Role/agentcred-watch"], "watched")
    )
    assert readme_tables() == [operator, people, namespaced]


def test_notes_print_the_first_steps_and_create_nothing(cluster: Cluster) -> None:
    out = helm(cluster, "install", "notes", str(CHART), "-n", "agentcred-notes", "--dry-run=client").stdout
    notes = out.split("NOTES:", 1)[1]
    for command in (
        "kubectl create namespace agents",
        "kubectl label namespace agents agentcred.dev/enabled=true",
        "kubectl -n agents create serviceaccount research-agent",
        "kubectl -n agentcred-notes delete secret notes-agentcred-signing-keys",
        "`agentcred dev up` runs none and has no Deployment\n"
        "   controller: there, run the operator with `agentcred run`",
    ):
        assert command in notes, notes
    assert "kind: Namespace" not in out and "kind: ServiceAccount\nmetadata:\n  name: research-agent" not in out
    assert "crds.install" not in notes
    # 0.1.0's values still validate, and the notes say they do nothing now.
    old_values = helm(
        cluster, "install", "notes", str(CHART), "-n", "agentcred-notes", "--dry-run=client", "--set", "crds.keep=false"
    ).stdout.split("NOTES:", 1)[1]
    assert "crds.install and crds.keep do nothing" in old_values
    assert "kubectl apply --server-side --force-conflicts -f charts/agentcred/crds/" in old_values
    scoped = helm(
        cluster,
        "install",
        "notes",
        str(CHART),
        "-n",
        "agentcred-notes",
        "--dry-run=client",
        "--set",
        "watchNamespaces={team-a,team-b}",
    ).stdout.split("NOTES:", 1)[1]
    assert "namespace-scoped" in scoped and "team-a, team-b" in scoped
    assert "kubectl -n team-a create serviceaccount research-agent" in scoped
    assert "create namespace" not in scoped and " agents" not in scoped, scoped


def test_install_run_as_the_chart_service_account_upgrade_uninstall(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    with operator_paused(operator):
        chart_operator = OperatorProcess(
            cluster,
            "--webhook-config",
            "inject-ca",
            namespace=NAMESPACE,
            standalone=False,
            env={"AGENTCRED_WEBHOOK_CONFIGURATION": "agentcred.agentcred.dev"},
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
        )
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
                    client.CoordinationV1Api(cluster.api_client).read_namespaced_lease("agentcred-leader", NAMESPACE)
                )
                assert lease["spec"]["holderIdentity"]
                forbidden = [
                    line for line in chart_operator.logs().splitlines() if "Forbidden" in line or " 403" in line
                ]
                assert not forbidden, forbidden[:5]
            finally:
                chart_operator.cleanup()

            # Outside its RBAC, the same identity is refused.
            as_operator = config.new_client_from_config(config_file=str(kubeconfig))
            core = client.CoreV1Api(as_operator)
            refused = []
            for attempt in (
                lambda: core.list_namespaced_config_map(namespace),
                lambda: core.create_namespaced_pod(
                    namespace, {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
                ),
                lambda: core.delete_namespaced_pod(pod["metadata"]["name"], namespace),
                lambda: core.list_node(),
                lambda: client.RbacAuthorizationV1Api(as_operator).create_cluster_role_binding(
                    {
                        "metadata": {"name": "escalate"},
                        "roleRef": {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "ClusterRole",
                            "name": "cluster-admin",
                        },
                        "subjects": [{"kind": "ServiceAccount", "name": "agentcred", "namespace": NAMESPACE}],
                    }
                ),
                lambda: client.AdmissionregistrationV1Api(as_operator).delete_mutating_webhook_configuration(
                    "agentcred.agentcred.dev"
                ),
                lambda: core.delete_namespaced_config_map("agentcred-revocations-0", NAMESPACE),
                lambda: client.AdmissionregistrationV1Api(as_operator).delete_validating_admission_policy(
                    "agentcred.agentcred.dev-operator-secrets"
                ),
            ):
                with pytest.raises(ApiException) as denied:
                    attempt()
                refused.append(denied.value.status)
            assert refused == [403] * 8
            # RBAC would let these through; the operator-bounds policies do not (test_operator_bounds.py).
            for attempt, policy in (
                (
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
                    "secrets",
                ),
                (
                    lambda: core.patch_namespaced_pod(
                        pod["metadata"]["name"],
                        namespace,
                        {"spec": {"containers": [{"name": "agent", "image": "evil"}]}},
                    ),
                    "pods",
                ),
            ):
                with pytest.raises(ApiException) as denied:
                    attempt()
                assert f"ValidatingAdmissionPolicy 'agentcred.agentcred.dev-operator-{policy}'" in denied.value.body

            helm(
                cluster,
                "upgrade",
                RELEASE,
                str(CHART),
                "-n",
                NAMESPACE,
                "--set",
                f"webhook.url=https://127.0.0.1:{chart_operator.webhook_port}",
                "--set",
                "keyRotationDays=7",
            )
        finally:
            helm(cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait")

        # The signing keys stay (tokens still outstanding stay verifiable), and a reinstall
        # under the same name takes them over as they are; nothing else stays.
        def keys_digest() -> str:  # compared by digest: a failed assertion prints no key
            data = cluster.core.read_namespaced_secret("agentcred-signing-keys", NAMESPACE).data or {}
            return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest() if data else ""

        kept = cluster.core.read_namespaced_secret("agentcred-signing-keys", NAMESPACE)
        assert kept.metadata.annotations["helm.sh/resource-policy"] == "keep"
        written = keys_digest()
        assert written
        helm(
            cluster,
            "install",
            RELEASE,
            str(CHART),
            "-n",
            NAMESPACE,
            "--wait=false",
            "--set",
            "webhook.url=https://127.0.0.1:9",
            "--set",
            "webhook.failurePolicy=Ignore",
        )
        assert keys_digest() == written
        helm(cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait")
        cluster.core.delete_namespaced_secret("agentcred-signing-keys", NAMESPACE)

        leftovers = {
            "secrets": [s.metadata.name for s in cluster.core.list_namespaced_secret(NAMESPACE).items],
            "configmaps": [
                c.metadata.name
                for c in cluster.core.list_namespaced_config_map(NAMESPACE).items
                if c.metadata.name != "kube-root-ca.crt"
            ],
            "leases": [
                item.metadata.name
                for item in client.CoordinationV1Api(cluster.api_client).list_namespaced_lease(NAMESPACE).items
            ],
            "serviceaccounts": [
                s.metadata.name
                for s in cluster.core.list_namespaced_service_account(NAMESPACE).items
                if s.metadata.name != "default"
            ],
            "webhooks": [
                w.metadata.name
                for w in cluster.admission.list_mutating_webhook_configuration().items
                if w.metadata.name.startswith(RELEASE)
            ],
            "clusterroles": [
                r.metadata.name for r in cluster.rbac.list_cluster_role().items if r.metadata.name.startswith(RELEASE)
            ],
            "policies": [
                p.metadata.name
                for p in cluster.admission.list_validating_admission_policy().items
                if p.metadata.name.startswith(f"{RELEASE}.agentcred.dev-")
            ],
        }
        assert leftovers == {k: [] for k in leftovers}
        cluster.delete_namespace(NAMESPACE)
