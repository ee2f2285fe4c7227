"""Attacks on the CSI plugins' endpoints by a plugin of another node, on the real control plane.

The test plays the node plugins as the kubelet drives them: a pod with `delivery: csi` is
admitted and bound to the stand-in kubelet's node, that node's plugin (its ServiceAccount
token bound to the Node) publishes the pod's volume with a token the API server binds to the
pod, and keeps a sync waiting for changes. A second Node's plugin -- a compromised node, with
the plugin's own ServiceAccount token bound to its Node -- then names the first node's volume
(its id is the kubelet's: derived from the pod's UID and the volume's name, both readable from
the pod) in its own syncs, as unpublished or as held. Neither may touch a volume of another
node: the revocation still reaches the right node at once, and nothing is sent elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agentcred.api import labels
from agentcred.rules.csi import PUBLISH_PATH, SYNC_PATH
from agents import audit_lines, create_credential, service_account, start_agent
from clusterkit import OPERATOR_NAMESPACE, Cluster, OperatorProcess, ensure_namespace, wait_for
from oauth import bound_token

MOUNT = "/var/run/agentcred"
NODE = "agentcred-node-0"  # the stand-in kubelet's
SYNC_WAIT = 25  # seconds a sync may wait; a revocation must come long before


def _post(operator: OperatorProcess, path: str, body: dict[str, Any], bearer: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{operator.api_url}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=operator.ca_file())
    try:
        with urllib.request.urlopen(request, context=context, timeout=SYNC_WAIT + 30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _plugin_token(cluster: Cluster, node: str) -> str:
    """The node plugin's ServiceAccount token bound to `node`, as its DaemonSet pod would hold it."""
    uid = cluster.core.read_node(node).metadata.uid
    spec = {
        "audiences": [labels.SERVICE_ACCOUNT_AUDIENCE],
        "expirationSeconds": 600,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid},
    }
    return cluster.core.create_namespaced_service_account_token(
        labels.CSI_NODE_SERVICE_ACCOUNT, OPERATOR_NAMESPACE, {"spec": spec}
    ).status.token


def _volume_id(pod: dict[str, Any], volume: str) -> str:
    """The id the kubelet gives an inline CSI volume: anyone who reads the pod can work it out."""
    return "csi-" + hashlib.sha256(f"{pod['metadata']['uid']}{volume}".encode()).hexdigest()


@pytest.fixture
def plugin_account(cluster: Cluster) -> None:
    ensure_namespace(cluster, OPERATOR_NAMESPACE)
    try:
        service_account(cluster, OPERATOR_NAMESPACE, labels.CSI_NODE_SERVICE_ACCOUNT)
    except Exception as error:  # made by an earlier test of the session
        if getattr(error, "status", None) != 409:
            raise


@pytest.fixture
def elsewhere(cluster: Cluster) -> Iterator[str]:
    """A second Node, whose plugin is compromised."""
    name = f"elsewhere-{uuid.uuid4().hex[:6]}"
    cluster.core.create_node({"metadata": {"name": name}})
    yield name
    cluster.core.delete_node(name)


def _published(cluster: Cluster, operator: OperatorProcess, namespace: str, plugin: str) -> tuple[dict, dict, dict]:
    """A running csi pod on NODE, its volume published by NODE's plugin and acknowledged by a sync."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, projection={"mountPath": MOUNT, "delivery": "csi"})
    pod = start_agent(cluster, namespace, "victim")
    assert pod["spec"]["nodeName"] == NODE
    volume = next(v for v in pod["spec"]["volumes"] if "csi" in v)
    attributes = volume["csi"]["volumeAttributes"]
    ask = {
        "volumeId": _volume_id(pod, volume["name"]),
        "credential": attributes[labels.CSI_CREDENTIAL_ATTRIBUTE],
        "binding": attributes[labels.CSI_BINDING_ATTRIBUTE],
        "pod": {
            "namespace": namespace,
            "name": "victim",
            "uid": pod["metadata"]["uid"],
            "serviceAccount": "research-agent",
        },
        "podToken": bound_token(cluster, namespace, pod),
    }
    status, published = _post(operator, PUBLISH_PATH, ask, plugin)
    assert status == 200 and published.get("value"), published
    held = {"volumeId": ask["volumeId"], "record": published["record"], "fingerprint": published["fingerprint"]}
    status, answer = _post(operator, SYNC_PATH, {"volumes": [held]}, plugin)
    assert status == 200 and answer["updates"] == [], answer
    return pod, held, published


def test_a_plugin_of_another_node_cannot_make_the_operator_forget_a_volume(
    cluster: Cluster, operator: OperatorProcess, kubelet: object, namespace: str, plugin_account: None, elsewhere: str
) -> None:
    """The compromised node reports the victim's volume as unpublished while the victim's node
    waits for changes; then the victim's pod ends. The revocation must wake the victim's node at
    once (before, the operator had forgotten the volume and the value stayed in the pod until
    that node's sync next came back on its own)."""
    plugin = _plugin_token(cluster, NODE)
    pod, held, _ = _published(cluster, operator, namespace, plugin)
    answers: list[tuple[float, int, dict[str, Any]]] = []

    def wait_for_changes() -> None:
        started = time.monotonic()
        status, answer = _post(operator, SYNC_PATH, {"volumes": [held], "wait": SYNC_WAIT}, plugin)
        answers.append((time.monotonic() - started, status, answer))

    waiting = threading.Thread(target=wait_for_changes)
    waiting.start()
    try:
        time.sleep(1)  # the victim's node is waiting at the operator now
        forged = {"volumeId": held["volumeId"], "record": "forged", "fingerprint": held["fingerprint"]}
        status, answer = _post(operator, SYNC_PATH, {"unpublished": [forged]}, _plugin_token(cluster, elsewhere))
        assert status == 200, answer
        cluster.core.delete_namespaced_pod("victim", namespace, grace_period_seconds=0)
    finally:
        waiting.join(SYNC_WAIT + 40)
    ((elapsed, status, answer),) = answers
    assert status == 200, answer
    assert [u["volumeId"] for u in answer["updates"] if "revoked" in u] == [held["volumeId"]], answer
    assert elapsed < SYNC_WAIT - 5, f"the revocation reached the victim's node when its sync lapsed ({elapsed:.1f} s)"
    assert any(line.get("podUID") == pod["metadata"]["uid"] for line in audit_lines(operator, "revoke"))
    refused = audit_lines(operator, "deny", reason="csi-wrong-node", volumeId=held["volumeId"])
    assert refused and refused[-1]["node"] == elsewhere, "the compromised node's attempt is not audited"


def test_a_plugin_of_another_node_naming_a_volume_as_held_gets_nothing(
    cluster: Cluster, operator: OperatorProcess, kubelet: object, namespace: str, plugin_account: None, elsewhere: str
) -> None:
    """The compromised node claims the victim's volume (its id, with a record it made up, and
    with the victim's real record, as if it had read the victim node's state): it is told to
    remove the file, is sent no value, and the victim's node still gets its renewals."""
    plugin = _plugin_token(cluster, NODE)
    _, held, published = _published(cluster, operator, namespace, plugin)
    thief = _plugin_token(cluster, elsewhere)
    for claimed in (
        {**held, "record": "forged", "fingerprint": ""},
        {**held, "fingerprint": ""},  # the real record, the value "lost": would it be sent again?
    ):
        status, answer = _post(operator, SYNC_PATH, {"volumes": [claimed]}, thief)
        assert status == 200, answer
        assert all("value" not in update for update in answer["updates"]), "a value went to another node's plugin"
        assert [u.get("revoked") for u in answer["updates"]] == ["unreadable-record"], answer
    # Nor later: a value the reconciler sends again for a "lost" one goes to the victim's node only.
    status, answer = _post(operator, SYNC_PATH, {"volumes": [{**held, "fingerprint": ""}], "wait": 10}, thief)
    assert status == 200 and all("value" not in update for update in answer["updates"]), answer

    def renewed() -> dict[str, Any] | None:
        status, answer = _post(operator, SYNC_PATH, {"volumes": [{**held, "fingerprint": "lost"}]}, plugin)
        assert status == 200, answer
        return next((u for u in answer["updates"] if "value" in u), None)

    update = wait_for(renewed, timeout=30, interval=0.5, what="the victim's node sent its value again")
    assert update["volumeId"] == held["volumeId"] and update["fingerprint"] != published["fingerprint"]
