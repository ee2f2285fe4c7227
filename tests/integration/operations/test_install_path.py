"""The README's install, upgrade and uninstall commands, exactly as written, each on a control
plane of its own that has never seen agentcred: no CRDs, no namespace, no policy.

- `helm install` (the README's line, default values): the CRDs come first from the chart's
  crds/ folder, then everything else, the default AgentCredentialPolicy included;
- `helm upgrade` from the chart as it was released before (0.1.0, read from git history), in
  each way 0.1.0 could be installed at all: the README's upgrade lines leave every
  AgentCredential and the default policy in place (the same objects, never recreated) and the
  CRDs current; a 0.1.0 release that owned the CRDs without the keep policy is stopped before
  it could delete them, with the command that makes the upgrade safe;
- `helm uninstall`: what goes and what stays is what the README says.

The operator's pods never run here (no image, no kubelet): the chart's objects are what is
checked; test_chart.py runs the operator with the chart's identity.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentcred.api import model
from agentcred.api.crd import build_crd
from agentcred.devcluster.controlplane import ControlPlane
from agentcred.devcluster.install import install_agentcred
from clusterkit import REPO, Cluster, OperatorProcess, wait_for

README = (REPO / "README.md").read_text()
INSTALL = "helm install agentcred charts/agentcred -n agentcred --create-namespace"
UPGRADE = (
    "kubectl apply --server-side --force-conflicts -f charts/agentcred/crds/",
    "helm upgrade agentcred charts/agentcred -n agentcred",
)
UNINSTALL = "helm uninstall agentcred -n agentcred"
NAMESPACE = "agentcred"
CRDS = ("agentcredentials.agentcred.dev", "agentcredentialpolicies.agentcred.dev")
# The chart as released before this one: 0.1.0, the last commit before its CRDs moved to crds/.
PREVIOUS = ("0.1.0", "dde311113234794a56428488c2ab2c81655df2de")


def readme_section(heading: str) -> str:
    return README.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def first_block(section: str) -> list[str]:
    """The command lines of a section's first ```sh block."""
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def as_written(cluster: Cluster, line: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    """A README line, run as a person runs it from the repository (helm and kubectl as built)."""
    words = shlex.split(line)
    binary = cluster.binaries[words[0]]
    result = subprocess.run(
        [str(binary), *words[1:]], cwd=cwd, capture_output=True, text=True, env=cluster.env(), timeout=300
    )
    if check:
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture
def empty_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """A control plane of its own, started for this test: it has never seen agentcred."""
    if not cluster.local or "helm" not in cluster.binaries:
        pytest.skip("needs the local control plane and helm")
    with ControlPlane() as plane:
        fresh = Cluster(plane.kubeconfig, binaries=cluster.binaries, local=True, plane=plane)
        assert not [c for c in fresh.extensions.list_custom_resource_definition().items if c.spec.group == model.GROUP]
        yield fresh


@pytest.fixture
def previous_chart(tmp_path: Path) -> Path:
    """The previous release's repository files (chart and CRDs), from git history."""
    version, commit = PREVIOUS
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    if found.returncode != 0:
        pytest.skip(f"chart {version} needs git history (commit {commit[:12]}): not a full clone")
    root = tmp_path / f"agentcred-{version}"
    root.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "charts/agentcred", "crds"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    assert yaml.safe_load((root / "charts/agentcred/Chart.yaml").read_text())["version"] == version
    return root


def crd(cluster: Cluster, name: str) -> object | None:
    try:
        return cluster.extensions.read_custom_resource_definition(name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def policies(cluster: Cluster) -> dict[str, dict]:
    listed = cluster.custom.list_cluster_custom_object(model.GROUP, model.VERSION, model.POLICY_PLURAL)["items"]
    return {p["metadata"]["name"]: p for p in listed}


def first_agent_namespace(cluster: Cluster) -> dict:
    """What the NOTES tell a person to do next: a namespace the default policy selects, a
    ServiceAccount, an AgentCredential."""
    cluster.core.create_namespace({"metadata": {"name": "agents", "labels": {"agentcred.dev/enabled": "true"}}})
    body = yaml.safe_load(
        """
        apiVersion: agentcred.dev/v1alpha1
        kind: AgentCredential
        metadata: {name: research-llm, namespace: agents}
        spec:
          owner: team-research@example.com
          category: model
          subjects: {serviceAccounts: [research-agent]}
          source: {jwt: {audiences: [https://llm-gateway.agents.svc]}}
          scope: {tools: [web-search], resources: ["repo:acme/*"], actions: [read]}
          ttl: 15m
          maxLifetime: 8h
          projection: {mountPath: /var/run/agentcred/research-llm}
        """
    )
    return dict(
        cluster.custom.create_namespaced_custom_object(model.GROUP, model.VERSION, "agents", model.PLURAL, body)
    )


def credential_uid(cluster: Cluster) -> str:
    body = cluster.custom.get_namespaced_custom_object(
        model.GROUP, model.VERSION, "agents", model.PLURAL, "research-llm"
    )
    return str(body["metadata"]["uid"])


def printer_columns(cluster: Cluster) -> list[dict]:
    served = cluster.extensions.read_custom_resource_definition(CRDS[0])
    return [{"name": c.name, "jsonPath": c.json_path} for c in served.spec.versions[0].additional_printer_columns or []]


def current_columns() -> list[dict]:
    return [
        {"name": c["name"], "jsonPath": c["jsonPath"]}
        for c in build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    ]


def test_the_readme_install_works_on_a_cluster_that_never_saw_agentcred_and_uninstall_does_what_it_says(
    empty_cluster: Cluster,
) -> None:
    cluster = empty_cluster
    assert INSTALL in readme_section("## Install on a cluster")
    installed = as_written(cluster, INSTALL)
    assert "STATUS: deployed" in installed.stdout
    for name in CRDS:
        served = crd(cluster, name)
        assert served is not None and any(
            c.type == "Established" and c.status == "True" for c in served.status.conditions
        )
    default = policies(cluster)["agentcred-default"]
    assert default["spec"]["namespaceSelector"] == {"matchLabels": {"agentcred.dev/enabled": "true"}}
    assert cluster.admission.read_mutating_webhook_configuration("agentcred.agentcred.dev")
    assert client.AppsV1Api(cluster.api_client).read_namespaced_deployment("agentcred", NAMESPACE).spec.replicas == 2
    first_agent_namespace(cluster)
    # A second cluster-wide release would admit the same pods: refused, naming the first.
    second = as_written(cluster, "helm install second charts/agentcred -n second --create-namespace", check=False)
    assert second.returncode != 0
    assert "agentcred is already installed as release agentcred in namespace agentcred" in second.stderr

    assert UNINSTALL in readme_section("## Install on a cluster")
    as_written(cluster, UNINSTALL)
    # Stays: the CRDs, and with them every AgentCredential; the signing keys; the namespace.
    assert all(crd(cluster, name) is not None for name in CRDS)
    assert credential_uid(cluster)
    assert cluster.core.read_namespaced_secret("agentcred-signing-keys", NAMESPACE)
    # Goes: everything else the release made, the default policy included.
    assert "agentcred-default" not in policies(cluster)
    leftovers = {
        "deployments": [
            d.metadata.name for d in client.AppsV1Api(cluster.api_client).list_namespaced_deployment(NAMESPACE).items
        ],
        "services": [s.metadata.name for s in cluster.core.list_namespaced_service(NAMESPACE).items],
        "secrets": [
            s.metadata.name
            for s in cluster.core.list_namespaced_secret(NAMESPACE).items
            if s.metadata.name != "agentcred-signing-keys"
        ],
        "configmaps": [
            c.metadata.name
            for c in cluster.core.list_namespaced_config_map(NAMESPACE).items
            if c.metadata.name != "kube-root-ca.crt"
        ],
        "webhooks": [w.metadata.name for w in cluster.admission.list_mutating_webhook_configuration().items],
        "admission policies": [p.metadata.name for p in cluster.admission.list_validating_admission_policy().items],
        "cluster roles": [
            r.metadata.name for r in cluster.rbac.list_cluster_role().items if r.metadata.name.startswith("agentcred")
        ],
    }
    assert leftovers == {kind: [] for kind in leftovers}


def test_the_readme_upgrade_from_the_previous_chart_keeps_every_object_and_updates_the_crds(
    empty_cluster: Cluster, previous_chart: Path
) -> None:
    cluster = empty_cluster
    old = f"{previous_chart}/charts/agentcred"
    # 0.1.0 could not be installed as its README said on a cluster without the CRDs (issue 20).
    failed = as_written(cluster, f"helm install agentcred {old} -n agentcred --create-namespace", check=False)
    assert failed.returncode != 0 and "ensure CRDs are installed first" in failed.stderr

    # What worked with 0.1.0: the CRDs applied by hand, then the chart without its own.
    as_written(cluster, f"kubectl apply -f {previous_chart}/crds/")
    as_written(cluster, f"helm install agentcred {old} -n agentcred --create-namespace --set crds.install=false")
    first_agent_namespace(cluster)
    kept = credential_uid(cluster)
    default_uid = policies(cluster)["agentcred-default"]["metadata"]["uid"]
    assert printer_columns(cluster) != current_columns()  # so the CRDs below really change

    assert all(line in readme_section("## Install on a cluster") for line in UPGRADE)
    for line in UPGRADE:
        as_written(cluster, line)
    assert credential_uid(cluster) == kept
    assert policies(cluster)["agentcred-default"]["metadata"]["uid"] == default_uid  # changed in place, never recreated
    assert printer_columns(cluster) == current_columns()  # the CRDs are this chart's
    status = as_written(cluster, "helm status agentcred -n agentcred -o json").stdout
    assert (
        '"version":2' in status.replace(" ", "")
        and "agentcred-0.2.0" in as_written(cluster, "helm list -n agentcred").stdout
    )


def test_an_upgrade_from_a_release_that_owned_the_crds_never_deletes_them(
    empty_cluster: Cluster, previous_chart: Path
) -> None:
    """0.1.0 installed with its CRDs as templates (possible with defaultPolicy.enabled=false):
    with crds.keep=false the upgrade would have deleted them, and every AgentCredential with
    them; it is refused, naming the command that keeps them, and then goes through."""
    cluster = empty_cluster
    old = f"{previous_chart}/charts/agentcred"
    as_written(
        cluster,
        f"helm install agentcred {old} -n agentcred --create-namespace "
        "--set defaultPolicy.enabled=false --set crds.keep=false",
    )
    wait_for(lambda: all(crd(cluster, name) is not None for name in CRDS), what="0.1.0's CRDs")
    wait_for(lambda: _accepts_credentials(cluster), what="the CRD served")
    first_agent_namespace(cluster)
    kept = credential_uid(cluster)

    refused = as_written(cluster, UPGRADE[1], check=False)
    keep = f"kubectl annotate crd {' '.join(CRDS)} helm.sh/resource-policy=keep"
    assert refused.returncode != 0 and keep in refused.stderr, refused.stderr
    assert credential_uid(cluster) == kept

    as_written(cluster, keep)
    for line in UPGRADE:
        as_written(cluster, line)
    assert credential_uid(cluster) == kept and all(crd(cluster, name) is not None for name in CRDS)
    assert "agentcred-default" not in policies(cluster)  # helm reuses the release's values: no default policy
    assert printer_columns(cluster) == current_columns()


def _accepts_credentials(cluster: Cluster) -> bool:
    try:
        cluster.custom.list_namespaced_custom_object(model.GROUP, model.VERSION, "default", model.PLURAL)
        return True
    except ApiException:
        return False


def test_from_agentcred_run_to_the_chart_as_the_readme_says(empty_cluster: Cluster) -> None:
    """`agentcred dev up`'s objects and an `agentcred run` that ran and stopped: the README's
    install is refused, naming what to remove; the README's lines for that make it work."""
    cluster = empty_cluster
    install_agentcred(cluster.api_client)  # what `agentcred dev up` puts into its control plane
    local = OperatorProcess(cluster).start()  # `agentcred run --standalone --namespace agentcred ...`
    local.cleanup()

    refused = as_written(cluster, INSTALL, check=False)
    assert refused.returncode != 0 and "kubectl delete mutatingwebhookconfiguration agentcred.dev" in refused.stderr
    lines = first_block(readme_section("### From `agentcred run` to the chart"))
    assert lines[-1] == INSTALL
    for line in lines:
        as_written(cluster, line)
    assert "agentcred-default" in policies(cluster)
    assert cluster.admission.read_mutating_webhook_configuration("agentcred.agentcred.dev")
    assert [w.metadata.name for w in cluster.admission.list_mutating_webhook_configuration().items] == [
        "agentcred.agentcred.dev"
    ]
