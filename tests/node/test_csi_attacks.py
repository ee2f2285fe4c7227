"""Attacks on `delivery: csi`, on a real node: a pods-only user of the namespace and another
tenant's namespace admin try to obtain a running pod's csi value by every volume they can write,
and by calling the operator's plugin endpoint with a kubelet token they replay. Each is refused:
the volume is never published (the kubelet's FailedMount event says why), no container starts,
the plugin writes nothing, the operator audits the refusal."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import pytest
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from agentcred.api import labels
from agents import create_credential, service_account
from clusterkit import wait_for
from identities import PODS_ONLY, namespace_admin, narrow_user
from nodekit import MOUNT, TOKEN, NodeCluster, agent_pod_spec, create_agent_pod, csi_records, running, wait_seen

pytestmark = [pytest.mark.cluster, pytest.mark.node]


def victim(cluster: NodeCluster, namespace: str) -> dict:
    """A running pod holding a csi value (minted: it also holds an identity token)."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, projection={"mountPath": MOUNT, "delivery": "csi"})
    create_agent_pod(cluster, namespace, "victim", "research-llm", "watch", MOUNT)
    running(cluster, namespace, "victim")
    wait_seen(cluster, namespace, "victim", TOKEN)
    return cluster.api_client.sanitize_for_serialization(cluster.core.read_namespaced_pod("victim", namespace))


def csi_volume_of(pod: dict) -> dict:
    return next(v for v in pod["spec"]["volumes"] if "csi" in v)


def attacker_pod(name: str, image: str, volume: dict, sa: str = "research-agent") -> dict:
    spec = agent_pod_spec(image, "watch", "/stolen", sa=sa)
    spec["containers"][0]["volumeMounts"] = [{"name": volume["name"], "mountPath": "/stolen", "readOnly": True}]
    spec["volumes"] = [volume]
    return {"metadata": {"name": name}, "spec": spec}


def refused_mount(cluster: NodeCluster, namespace: str, name: str, words: str) -> str:
    """The kubelet's FailedMount event on the pod, naming why; meanwhile nothing ran and the plugin wrote nothing."""

    def event() -> str | None:
        for item in cluster.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items:
            if item.reason == "FailedMount" and words in (item.message or ""):
                return item.message
        return None

    message = wait_for(event, timeout=90, what=f"a FailedMount event on {name} saying {words!r}")
    pod = cluster.core.read_namespaced_pod(name, namespace)
    assert pod.status.phase == "Pending"
    assert all(c.container_id is None and c.state.running is None for c in pod.status.container_statuses or [])
    assert not cluster.containers_of(pod.metadata.uid), "a container (or sandbox) exists for the refused pod"
    assert not csi_records(cluster, pod.metadata.uid), "the plugin published something for the refused pod"
    return message


def test_a_pods_only_user_copying_a_pods_csi_volume_gets_nothing(node_cluster, node_operator, node_namespace, tmp_path):
    """Not opted in (the webhook never sees it), same ServiceAccount, the victim's volume
    attributes word for word: the operator finds no admission for the pod the kubelet names."""
    ns = node_namespace
    target = victim(node_cluster, ns)
    user = CoreV1Api(narrow_user(node_cluster, ns, "pod-creator", PODS_ONLY, tmp_path))
    stolen = {**csi_volume_of(target), "name": "stolen"}
    user.create_namespaced_pod(ns, attacker_pod("thief", node_cluster.probe_image, stolen))
    message = refused_mount(node_cluster, ns, "thief", "was not admitted by agentcred")
    assert "PermissionDenied" in message
    denied = [line for line in node_operator.audit() if line.get("action") == "deny" and line.get("podName") == "thief"]
    assert denied and denied[-1]["reason"] == "csi-not-admitted"


def test_an_opted_in_pod_bringing_a_csi_volume_of_its_own_is_refused(
    node_cluster, node_operator, node_namespace, tmp_path
):
    """Opted in and a subject, but carrying a volume of agentcred's driver under another name
    (the victim's binding): the webhook refuses the pod outright."""
    ns = node_namespace
    target = victim(node_cluster, ns)
    user = CoreV1Api(narrow_user(node_cluster, ns, "pod-creator", PODS_ONLY, tmp_path))
    body = attacker_pod("thief", node_cluster.probe_image, {**csi_volume_of(target), "name": "mine"})
    body["metadata"].update(
        labels={labels.INJECT_LABEL: "true"}, annotations={labels.CREDENTIALS_ANNOTATION: "research-llm"}
    )
    with pytest.raises(ApiException) as refused:
        user.create_namespaced_pod(ns, body)
    assert refused.value.status in (400, 403)
    assert "only the agentcred admission webhook sets these" in refused.value.body and "mine" in refused.value.body


def test_a_service_account_that_is_no_subject_gets_nothing(node_cluster, node_operator, node_namespace, tmp_path):
    ns = node_namespace
    target = victim(node_cluster, ns)
    service_account(node_cluster, ns, "intruder")
    user = CoreV1Api(narrow_user(node_cluster, ns, "pod-creator", PODS_ONLY, tmp_path))
    # Opted in: refused at admission, naming the ServiceAccount.
    with pytest.raises(ApiException) as refused:
        create_agent_pod(node_cluster, ns, "asked", "research-llm", "watch", MOUNT, sa="intruder")
    assert "intruder" in refused.value.body and "not a subject" in refused.value.body
    # Not opted in, the victim's volume copied: never published.
    stolen = {**csi_volume_of(target), "name": "stolen"}
    user.create_namespaced_pod(ns, attacker_pod("thief", node_cluster.probe_image, stolen, sa="intruder"))
    refused_mount(node_cluster, ns, "thief", "was not admitted by agentcred")


def test_another_tenants_admin_naming_a_pods_volume_gets_nothing(node_cluster, node_operator, node_namespace, tmp_path):
    """A namespace admin of another tenant, with an AgentCredential of the same name in their
    own namespace and a pod there copying the victim's volume attributes."""
    target = victim(node_cluster, node_namespace)
    other = node_cluster.create_namespace("n")
    try:
        admin = CoreV1Api(namespace_admin(node_cluster, other, tmp_path))
        service_account(node_cluster, other)
        create_credential(node_cluster, other, projection={"mountPath": MOUNT, "delivery": "csi"})
        stolen = {**csi_volume_of(target), "name": "stolen"}
        admin.create_namespaced_pod(other, attacker_pod("thief", node_cluster.probe_image, stolen))
        refused_mount(node_cluster, other, "thief", "was not admitted by agentcred")
    finally:
        node_cluster.delete_namespace(other)


def test_a_pod_naming_the_secret_a_csi_pod_would_have_gets_nothing(
    node_cluster, node_operator, node_namespace, tmp_path
):
    """With Secret delivery a pod creator could mount `agentcred-<binding>`; with csi there is
    no such Secret to name."""
    ns = node_namespace
    target = victim(node_cluster, ns)
    binding = target["metadata"]["annotations"][labels.BINDING_ANNOTATION]
    user = CoreV1Api(narrow_user(node_cluster, ns, "pod-creator", PODS_ONLY, tmp_path))
    volume = {"name": "stolen", "secret": {"secretName": labels.secret_name(binding)}}
    user.create_namespaced_pod(ns, attacker_pod("thief", node_cluster.probe_image, volume))
    refused_mount(node_cluster, ns, "thief", "not found")


def _post(operator, path: str, body: dict, bearer: str) -> tuple[int, dict]:
    context = ssl.create_default_context(cafile=operator.ca_file())
    request = urllib.request.Request(
        f"{operator.api_url}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _identity_token(cluster: NodeCluster, pod: dict) -> str:
    """The pod's projected identity token (audience agentcred, bound to the pod) -- what a
    kubelet passes at publish too -- as someone who got hold of it would replay it."""
    path = (
        cluster.node.kubelet_root
        / "pods"
        / pod["metadata"]["uid"]
        / "volumes"
        / "kubernetes.io~projected"
        / labels.IDENTITY_VOLUME
        / labels.IDENTITY_TOKEN_FILE
    )
    return path.read_text().strip()


def _plugin_token(cluster: NodeCluster, node: str) -> str:
    core = cluster.core
    uid = core.read_node(node).metadata.uid
    request = {
        "spec": {
            "audiences": [labels.SERVICE_ACCOUNT_AUDIENCE],
            "expirationSeconds": 600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid},
        }
    }
    return core.create_namespaced_service_account_token(
        labels.CSI_NODE_SERVICE_ACCOUNT, "agentcred", request
    ).status.token


def test_a_replayed_kubelet_token_is_refused(node_cluster, node_operator, node_namespace, tmp_path) -> None:
    ns = node_namespace
    target = victim(node_cluster, ns)
    pod_token = _identity_token(node_cluster, target)
    volume = csi_volume_of(target)["csi"]["volumeAttributes"]
    ask = {
        "volumeId": "csi-replayed",
        "credential": volume[labels.CSI_CREDENTIAL_ATTRIBUTE],
        "binding": volume[labels.CSI_BINDING_ATTRIBUTE],
        "pod": {
            "namespace": ns,
            "name": "victim",
            "uid": target["metadata"]["uid"],
            "serviceAccount": "research-agent",
        },
        "podToken": pod_token,
    }
    # Straight to the operator with the pod's token as the caller: not a node plugin.
    status, answer = _post(node_operator, "/v1/csi/publish", ask, pod_token)
    assert status == 401 and "value" not in answer, answer
    # With a token of one's own ServiceAccount: not the node plugin's either.
    service_account(node_cluster, ns, "mallory")
    own = node_cluster.core.create_namespaced_service_account_token(
        "mallory", ns, {"spec": {"audiences": [labels.SERVICE_ACCOUNT_AUDIENCE], "expirationSeconds": 600}}
    ).status.token
    status, answer = _post(node_operator, "/v1/csi/publish", ask, own)
    assert status == 401 and "not agentcred's node plugin" in answer["message"]
    # A plugin of another node (a compromised node) replaying it: the pod is not on its node.
    node_cluster.core.create_node({"metadata": {"name": "elsewhere"}})
    try:
        status, answer = _post(node_operator, "/v1/csi/publish", ask, _plugin_token(node_cluster, "elsewhere"))
        assert status == 403 and answer["reason"] == "wrong-node", answer
    finally:
        node_cluster.core.delete_node("elsewhere")
    plugin = _plugin_token(node_cluster, node_cluster.node_name)
    # The node's own plugin, the token replayed for another pod: bound to the victim, not to it.
    other = create_agent_pod(node_cluster, ns, "other", "research-llm", "watch", MOUNT)
    running(node_cluster, ns, "other")
    other_volume = next(v for v in other.spec.volumes if v.csi is not None).csi.volume_attributes
    replay = {
        **ask,
        "binding": other_volume[labels.CSI_BINDING_ATTRIBUTE],
        "pod": {**ask["pod"], "name": "other", "uid": other.metadata.uid},
    }
    status, answer = _post(node_operator, "/v1/csi/publish", replay, plugin)
    assert status == 403 and answer["reason"] == "token-mismatch", answer
    # Once the victim is gone, its token is worth nothing (the API server refuses it; a review
    # answered moments before may still be cached for 10 s: then there is no admitted pod).
    node_cluster.core.delete_namespaced_pod("victim", ns, grace_period_seconds=0)
    wait_for(lambda: _gone(node_cluster, ns, "victim"), timeout=60, what="the victim gone")
    status, answer = _post(node_operator, "/v1/csi/publish", ask, plugin)
    assert status == 403 and answer["reason"] in ("token-refused", "not-admitted") and "value" not in answer


def _gone(cluster: NodeCluster, namespace: str, name: str) -> bool:
    try:
        cluster.core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        return error.status == 404
    return False
