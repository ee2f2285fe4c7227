"""`agentcred revoke --reason ... --evict`: the person's words reach the audit line and the pod's
Event (the trigger stays `emergency`), and pods are evicted with the caller's own rights."""

import subprocess
import sys
from pathlib import Path

from kubernetes.client.exceptions import ApiException

from agents import (
    audit_lines,
    create_credential,
    create_pod,
    pod_events,
    running_pod,
    secret_name_of,
    service_account,
    value_gone,
)
from clusterkit import Cluster, OperatorProcess, token_kubeconfig, wait_for


def _responder(cluster: Cluster, namespace: str, name: str, may_evict: bool, tmp_path: Path) -> Path:
    """A person (as a ServiceAccount) who may ask for a revoke, and perhaps evict: nothing more."""
    rules = [
        {"apiGroups": ["agentcred.dev"], "resources": ["agentcredentials"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    ]
    if may_evict:
        rules.append({"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]})
    service_account(cluster, namespace, name)
    cluster.rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
    cluster.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
    return token_kubeconfig(cluster, namespace, name, tmp_path / f"{name}.kubeconfig")


def _revoke(cluster: Cluster, kubeconfig: Path, namespace: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agentcred", "revoke", "research-llm", "-n", namespace, *args],
        capture_output=True,
        text=True,
        env=cluster.env(KUBECONFIG=str(kubeconfig)),
        timeout=120,
    )


def _gone(cluster: Cluster, namespace: str, name: str) -> bool:
    try:
        cluster.core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        return error.status == 404
    return False


def test_revoke_says_why_and_evicts_with_the_callers_rights(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    pods = {}
    for name in ("a", "b"):
        create_pod(cluster, namespace, name, "research-llm")
        pods[name] = wait_for(lambda name=name: running_pod(cluster, namespace, name=name), what=f"pod {name}")
    watcher = _responder(cluster, namespace, "watcher", may_evict=False, tmp_path=tmp_path)
    responder = _responder(cluster, namespace, "responder", may_evict=True, tmp_path=tmp_path)

    # Without the right to evict: the value is revoked all the same, the eviction is refused, said so.
    refused = _revoke(cluster, watcher, namespace, "--pod", "a", "--reason", "prompt injection", "--evict")
    assert refused.returncode == 3, refused.stderr
    assert "revoked 1 live value(s)" in refused.stdout
    assert "pod a not evicted: you may not evict pods" in refused.stderr
    assert value_gone(cluster, namespace, secret_name_of(pods["a"]), "research-llm")
    assert not _gone(cluster, namespace, "a")
    [line] = audit_lines(operator, "revoke", podUID=pods["a"]["metadata"]["uid"])
    assert (line["reason"], line["message"]) == ("emergency", "prompt injection")
    event = wait_for(
        lambda: [e for e in pod_events(cluster, namespace, "a") if e.reason == "CredentialRevoked"],
        what="the pod's CredentialRevoked Event",
    )[0]
    assert event.message == "revoked research-llm: emergency: prompt injection"

    evicted = _revoke(cluster, responder, namespace, "--pod", "b", "--reason", "exfiltration", "--evict")
    assert evicted.returncode == 0, evicted.stderr
    assert "evicted pod b" in evicted.stdout
    wait_for(lambda: _gone(cluster, namespace, "b"), what="pod b evicted")
    assert not _gone(cluster, namespace, "a")
    reasons = [
        (line["reason"], line.get("message"))
        for line in audit_lines(operator, "revoke", podName="b", namespace=namespace)
    ]
    assert reasons == [("emergency", "exfiltration")]


def test_a_mistyped_pod_a_missing_credential_and_a_refusal_each_say_so_with_their_own_code(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    create_pod(cluster, namespace, "agent", "research-llm")
    wait_for(lambda: running_pod(cluster, namespace, name="agent"), what="pod agent")
    responder = _responder(cluster, namespace, "responder", may_evict=False, tmp_path=tmp_path)

    typo = _revoke(cluster, responder, namespace, "--pod", "agnet")
    assert typo.returncode == 6 and f"pod agnet not found in namespace {namespace}: nothing revoked" in typo.stderr
    assert not audit_lines(operator, "revoke", namespace=namespace)  # nothing was asked of the operator
    assert running_pod(cluster, namespace, name="agent") is not None

    missing = subprocess.run(
        [sys.executable, "-m", "agentcred", "renew", "research-lm", "-n", namespace],
        capture_output=True,
        text=True,
        env=cluster.env(KUBECONFIG=str(responder)),
        timeout=120,
    )
    assert missing.returncode == 6
    assert f"AgentCredential research-lm not found in namespace {namespace}" in missing.stderr

    # Someone with no rights at all: refused, in one line (no traceback), not the findings' 1.
    service_account(cluster, namespace, "nobody")
    nobody = token_kubeconfig(cluster, namespace, "nobody", tmp_path / "nobody.kubeconfig")
    for command in (["inventory", "-n", namespace], ["revoke", "research-llm", "-n", namespace]):
        refused = subprocess.run(
            [sys.executable, "-m", "agentcred", *command],
            capture_output=True,
            text=True,
            env=cluster.env(KUBECONFIG=str(nobody)),
            timeout=120,
        )
        assert refused.returncode == 5, refused.stderr
        assert "the cluster refused (403)" in refused.stderr and "Traceback" not in refused.stderr
