"""Every example in examples/ is accepted by the API server as written, applies on its own
(namespace and ServiceAccounts included), and its credentials become Ready under the chart's
default policy (rendered from the chart itself) or the policy the example brings; applied one
after another, in any order, none undoes another (a running pod keeps its value); a credential
that stops being allowed and is allowed again serves the pods still running; the example
minting service works."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from agentcred.api import model
from agentcred.devcluster.controlplane import free_port
from agentcred.devcluster.install import apply_policy
from agentcred.verify import TokenRejected, Verifier
from agents import (
    condition,
    get_credential,
    job_pod,
    pod_events,
    read_secret,
    same_value,
    secret_name_of,
    value_gone,
    value_of,
)
from clusterkit import REPO, Cluster, OperatorProcess, ensure_namespace, wait_for

# Every manifest, the examples' own folders included, is valid and applies on its own.
EXAMPLES = sorted([*(REPO / "examples").glob("*.yaml"), *(REPO / "examples").glob("*/*.yaml")])
NAMESPACE = "agents"
ENABLED = "agentcred.dev/enabled"


def documents_of(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def chart_default_policy(cluster: Cluster) -> dict:
    """The AgentCredentialPolicy `helm install` creates with the chart's default values."""
    helm = cluster.binaries.get("helm") or shutil.which("helm")
    if helm is None:
        pytest.skip("helm is needed to render the chart's default policy")
    rendered = subprocess.run(
        [str(helm), "template", "agentcred", str(REPO / "charts" / "agentcred"), "-n", "agentcred"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [policy] = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == model.POLICY_KIND]
    return policy


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
    default = chart_default_policy(cluster)
    policies = {default["metadata"]["name"]} | {
        d["metadata"]["name"] for path in EXAMPLES for d in documents_of(path) if d["kind"] == model.POLICY_KIND
    }

    def clean() -> None:
        try:
            cluster.core.delete_namespace(NAMESPACE)
        except ApiException as error:
            if error.status != 404:
                raise
        wait_for(lambda: _no_namespace(cluster), timeout=60, what=f"namespace {NAMESPACE} gone")

    clean()
    apply_policy(cluster.api_client, default)
    yield cluster
    clean()
    for name in sorted(policies):
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


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(REPO / "examples")) for p in EXAMPLES])
def test_each_example_applies_on_its_own(fresh_cluster: Cluster, path: Path) -> None:
    applied = fresh_cluster.kubectl("apply", "-f", str(path), check=False)
    assert applied.returncode == 0, applied.stderr
    _ready_everything(fresh_cluster, documents_of(path))


def _labels(cluster: Cluster) -> dict[str, str]:
    return cluster.core.read_namespace(NAMESPACE).metadata.labels or {}


@pytest.mark.parametrize("order", ["listed", "reversed"])
def test_the_examples_in_any_order_undo_nothing(fresh_cluster: Cluster, kubelet, order: str) -> None:
    """`kubectl apply -f` of one example after another (a three-way merge each time): the
    namespace keeps the label the default policy selects, every credential ends Ready, and the
    quickstart's running agent keeps the very value it was issued."""
    quickstart = REPO / "examples" / "quickstart.yaml"
    paths = [quickstart] + [p for p in (EXAMPLES if order == "listed" else EXAMPLES[::-1]) if p != quickstart]
    held, secret = None, ""
    for path in paths:
        applied = fresh_cluster.kubectl("apply", "-f", str(path), check=False)
        assert applied.returncode == 0, applied.stderr
        assert _labels(fresh_cluster).get(ENABLED) == "true", f"{path.name} took the label {ENABLED} away"
        if held is None:
            _ready_everything(fresh_cluster, documents_of(path))
            pod = job_pod(fresh_cluster, NAMESPACE, "research-task", timeout=60)
            secret = secret_name_of(pod)
            held = wait_for(
                lambda name=secret: value_of(read_secret(fresh_cluster, NAMESPACE, name) or {}, "research-llm")
            )
    _ready_everything(fresh_cluster, [d for path in paths for d in documents_of(path)])
    assert same_value(value_of(read_secret(fresh_cluster, NAMESPACE, secret) or {}, "research-llm"), held)
    # The shipped examples raise no finding a cron job would fail on.
    audit = subprocess.run(
        [sys.executable, "-m", "agentcred", "inventory", "-n", NAMESPACE]
        + ["--fail-on", "compromised,expired-exception,overdue-review,orphan"],
        capture_output=True,
        text=True,
        env=fresh_cluster.env(),
        timeout=120,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_a_credential_allowed_again_serves_the_pods_still_running(
    fresh_cluster: Cluster, operator: OperatorProcess, kubelet
) -> None:
    """The label the default policy selects goes (as an example that declared the namespace
    without it once did): the credential is refused, the running agent's value is revoked and
    the pod told why. The label comes back: the same pod, still running, gets a fresh value;
    the old one stays revoked."""
    applied = fresh_cluster.kubectl("apply", "-f", str(REPO / "examples" / "quickstart.yaml"), check=False)
    assert applied.returncode == 0, applied.stderr
    pod = job_pod(fresh_cluster, NAMESPACE, "research-task", timeout=60)
    secret = secret_name_of(pod)
    first = wait_for(lambda: value_of(read_secret(fresh_cluster, NAMESPACE, secret) or {}, "research-llm"))
    audience = "https://llm-gateway.agents.svc"

    fresh_cluster.kubectl("label", "namespace", NAMESPACE, f"{ENABLED}-")
    wait_for(lambda: value_gone(fresh_cluster, NAMESPACE, secret, "research-llm"), what="the value revoked")
    refused = wait_for(
        lambda: (
            (found := condition(get_credential(fresh_cluster, NAMESPACE, "research-llm"), "Ready"))
            and found["status"] == "False"
            and found
        ),
        what="Ready=False",
    )
    assert refused["reason"] == "NoPolicy" and "agentcred.dev/enabled" in refused["message"]
    told = wait_for(
        lambda: [
            e for e in pod_events(fresh_cluster, NAMESPACE, pod["metadata"]["name"]) if e.reason == "CredentialNotReady"
        ],
        what="the pod told why it waits",
    )
    assert "research-llm" in told[0].message

    fresh_cluster.kubectl("label", "namespace", NAMESPACE, f"{ENABLED}=true")
    again = wait_for(
        lambda: value_of(read_secret(fresh_cluster, NAMESPACE, secret) or {}, "research-llm"),
        what="a fresh value for the pod still running",
    )
    assert not same_value(again, first)
    verifier = Verifier.from_url(operator.api_url, cafile=operator.ca_file())  # the revocation list as it is now
    assert (
        verifier.verify(again.decode(), audience=audience, namespace=NAMESPACE)["agentcred"]["pod"]
        == pod["metadata"]["name"]
    )
    with pytest.raises(TokenRejected) as revoked:
        verifier.verify(first.decode(), audience=audience, namespace=NAMESPACE)
    assert revoked.value.reason == "revoked"


def test_the_example_minting_service_serves_its_own_example(fresh_cluster: Cluster, tmp_path: Path) -> None:
    """The three lines minter.py's docstring gives, as written (a free port for 8444, and this
    checkout's .venv and kubectl): no race between writing the example and applying it."""
    minter = REPO / "examples" / "minting-service" / "minter.py"
    documented = [line.strip() for line in (minter.read_text().split('"""')[1]).splitlines()]
    start, wait, apply = _documented_lines(documented)
    port = free_port()
    script = "\n".join(
        [
            f"cd {tmp_path}",
            start.replace(".venv/bin/python", sys.executable)
            .replace("examples/", f"{REPO}/examples/")
            .replace("--port 8444", f"--port {port}")
            .replace("&", "> minter.out 2> minter.log & echo $! > minter.pid"),
            wait,
            apply.replace("kubectl", str(fresh_cluster.binaries.get("kubectl") or "kubectl")),
        ]
    )
    try:
        ran = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, env=fresh_cluster.env(), timeout=120
        )
        assert ran.returncode == 0, ran.stderr + (tmp_path / "minter.log").read_text()
        documents = documents_of(tmp_path / "minter.yaml")
        [ticketing] = [d for d in documents if d["kind"] == "AgentCredential"]
        assert ticketing["spec"]["source"]["webhook"]["healthCheck"] is True
        assert ticketing["spec"]["source"]["webhook"]["url"] == f"https://127.0.0.1:{port}/mint"
        # Ready means the operator's health check reached it over TLS with the CA it wrote.
        _ready_everything(fresh_cluster, documents)
    finally:
        started = tmp_path / "minter.pid"
        if started.exists():
            os.kill(int(started.read_text()), signal.SIGTERM)


def _documented_lines(docstring_lines: list[str]) -> tuple[str, str, str]:
    """The start, wait and apply lines of minter.py's instructions."""
    start = next(line for line in docstring_lines if line.startswith(".venv/bin/python") and "--write" in line)
    wait = next(line for line in docstring_lines if line.startswith("while "))
    apply = next(line for line in docstring_lines if line.startswith("kubectl apply"))
    return start, wait, apply
