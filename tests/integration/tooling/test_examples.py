"""Every example in examples/ is accepted by the API server as written, applies on its own
(namespace and ServiceAccounts included), and its credentials become Ready under the chart's
default policy or the policy the example brings; the example minting service works."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from agentcred.api import model
from agentcred.devcluster.controlplane import free_port
from agentcred.devcluster.install import apply_policy
from agents import condition, get_credential
from clusterkit import REPO, Cluster, OperatorProcess, ensure_namespace, wait_for

# Every manifest, the examples' own folders included, is valid; each top-level one applies on its own.
EXAMPLES = sorted([*(REPO / "examples").glob("*.yaml"), *(REPO / "examples").glob("*/*.yaml")])
STANDALONE = sorted((REPO / "examples").glob("*.yaml"))
NAMESPACE = "agents"


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(REPO / "examples")) for p in EXAMPLES])
def test_example_is_valid(cluster: Cluster, path: Path) -> None:
    ensure_namespace(cluster, NAMESPACE)
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] != "Namespace"]
    assert documents
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(documents), check=False)
    assert result.returncode == 0, result.stderr


def _no_namespace(cluster: Cluster) -> bool:
    try:
        cluster.core.read_namespace(NAMESPACE)
    except ApiException as error:
        return error.status == 404
    return False


@pytest.fixture
def fresh_cluster(cluster: Cluster, operator: OperatorProcess):
    """No namespace `agents`, and the chart's default policy, as after `helm install`."""

    def clean() -> None:
        try:
            cluster.core.delete_namespace(NAMESPACE)
        except ApiException as error:
            if error.status != 404:
                raise
        wait_for(lambda: _no_namespace(cluster), timeout=60, what=f"namespace {NAMESPACE} gone")

    values = yaml.safe_load((REPO / "charts" / "agentcred" / "values.yaml").read_text())["defaultPolicy"]
    spec = {key: values[key] for key in ("namespaceSelector", "sources", "audiences", "mintingServices", "maxTTL")}
    policy = {"apiVersion": model.API_VERSION, "kind": model.POLICY_KIND, "metadata": {"name": "examples-default"}}
    clean()
    apply_policy(cluster.api_client, {**policy, "spec": {**spec, "maxLifetime": values["maxLifetime"]}})
    yield cluster
    clean()
    for name in ("examples-default", "agents-static-values", "agents-minting-service"):
        try:
            cluster.custom.delete_cluster_custom_object(model.GROUP, model.VERSION, model.POLICY_PLURAL, name)
        except ApiException as error:
            if error.status != 404:
                raise


def _ready_everything(cluster: Cluster, documents: list[dict]) -> None:
    for document in documents:
        if document["kind"] != "AgentCredential":
            continue
        name = document["metadata"]["name"]
        ready = wait_for(
            lambda name=name: (found := condition(get_credential(cluster, NAMESPACE, name), "Ready")) and found,
            what=f"{name}'s Ready condition",
        )
        wait_for(
            lambda name=name: condition(get_credential(cluster, NAMESPACE, name), "Ready")["status"] == "True",
            what=f"{name} Ready (last seen: {ready['reason']}: {ready['message']})",
        )
        for account in document["spec"]["subjects"]["serviceAccounts"]:
            cluster.core.read_namespaced_service_account(account, NAMESPACE)  # the example made it


@pytest.mark.parametrize("path", STANDALONE, ids=[p.name for p in STANDALONE])
def test_each_example_applies_on_its_own(fresh_cluster: Cluster, path: Path) -> None:
    applied = fresh_cluster.kubectl("apply", "-f", str(path), check=False)
    assert applied.returncode == 0, applied.stderr
    _ready_everything(fresh_cluster, [d for d in yaml.safe_load_all(path.read_text()) if d])


def test_the_example_minting_service_serves_its_own_example(fresh_cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    printed, log = tmp_path / "minter.yaml", tmp_path / "minter.log"
    with open(printed, "w") as out, open(log, "w") as err:
        minter = subprocess.Popen(
            [sys.executable, str(REPO / "examples" / "minting-service" / "minter.py"), "--port", str(port)],
            stdout=out,
            stderr=err,
            env=fresh_cluster.env(),
        )
    try:
        wait_for(lambda: "listening" in log.read_text(), what="the minter listening")
        documents = [d for d in yaml.safe_load_all(printed.read_text()) if d]
        [ticketing] = [d for d in documents if d["kind"] == "AgentCredential"]
        assert ticketing["spec"]["source"]["webhook"]["healthCheck"] is True
        assert ticketing["spec"]["source"]["webhook"]["url"] == f"https://127.0.0.1:{port}/mint"
        applied = fresh_cluster.kubectl("apply", "-f", str(printed), check=False)
        assert applied.returncode == 0, applied.stderr
        # Ready means the operator's health check reached it over TLS with the CA it printed.
        _ready_everything(fresh_cluster, documents)
    finally:
        minter.terminate()
        minter.wait(timeout=30)
