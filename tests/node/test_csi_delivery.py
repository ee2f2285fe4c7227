"""On a real node, `delivery: csi`: agentcred's CSI node plugin, registered with the kubelet,
publishes a pod's value into a tmpfs of that pod alone. The container reads the value the
operator issued for it (a token naming that pod, signed by the operator's keys); no Secret is
ever created, and nothing in etcd -- neither the value nor its fingerprint -- shows it; a
renewal replaces the file from the value's own expiry, a revocation removes it at once, and
the task's end takes it away."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import jwt
import pytest

from agentcred.api import labels
from agents import create_credential as _create_credential
from agents import reporter_token
from clusterkit import wait_for
from nodekit import (
    MOUNT,
    TOKEN,
    NodeCluster,
    create_agent_pod,
    csi_records,
    csi_value,
    etcd_dump,
    fingerprint,
    running,
    wait_seen,
)

pytestmark = [pytest.mark.cluster, pytest.mark.node]


def csi_credential(cluster: NodeCluster, namespace: str, **overrides: object) -> dict:
    projection = {"mountPath": MOUNT, "delivery": "csi", **overrides.pop("projection", {})}  # type: ignore[dict-item]
    return _create_credential(cluster, namespace, projection=projection, **overrides)


def claims_of(value: bytes, operator) -> dict:
    """The token's claims, its signature checked against the operator's JWKS by PyJWT."""
    keys = jwt.PyJWKClient(f"{operator.api_url}/.well-known/jwks.json", ssl_context=_ssl(operator))
    key = keys.get_signing_key_from_jwt(value.decode())
    return jwt.decode(value.decode(), key.key, algorithms=["EdDSA", "ES256", "RS256"], options={"verify_aud": False})


def _ssl(operator):
    import ssl

    return ssl.create_default_context(cafile=operator.ca_file())


def test_the_container_reads_its_value_and_no_secret_exists(node_cluster, node_operator, node_namespace) -> None:
    ns = node_namespace
    from agents import service_account

    service_account(node_cluster, ns)
    csi_credential(node_cluster, ns, projection={"fileMode": 0o440})
    pod = create_agent_pod(node_cluster, ns, "agent", "research-llm", "watch", MOUNT, fs_group=2000)
    assert not pod.spec.scheduling_gates, "a pod the CSI plugin serves needs no scheduling gate"
    volume = next(v for v in pod.spec.volumes if v.csi is not None)
    assert volume.csi.driver == labels.CSI_DRIVER and volume.csi.read_only
    running(node_cluster, ns, "agent")
    events = wait_seen(node_cluster, ns, "agent", TOKEN)
    uid = pod.metadata.uid
    value = csi_value(node_cluster, uid, "research-llm")
    assert value is not None
    assert events[0]["sha256"] == fingerprint(value), "the container read another value than the plugin wrote"
    assert events[0]["mode"] == "0440"
    claims = claims_of(value, node_operator)
    assert claims["agentcred"]["podUID"] == uid and claims["agentcred"]["pod"] == "agent"
    assert claims["sub"] == f"system:serviceaccount:{ns}:research-agent"
    # No Secret for it, ever: none in the namespace, and the operator never wrote one.
    assert not node_cluster.core.list_namespaced_secret(ns, label_selector=f"{labels.MANAGED_LABEL}=true").items
    # Nothing in etcd holds the value, nor any part of its bookkeeping that could find it.
    issued = [line for line in node_operator.audit() if line.get("action") == "issue" and line.get("podUID") == uid]
    assert issued, "no issue audit line"
    value_fingerprint = issued[-1]["fingerprint"]
    token_id = issued[-1].get("tokenId")
    needles = [value, value_fingerprint.encode(), value_fingerprint.rpartition(":")[2].encode()]
    needles += [token_id.encode()] if token_id else []
    needles += [hashlib.sha256(value).hexdigest().encode()]
    dump = etcd_dump(node_cluster)
    assert len(dump) > 100, "the scan did not read the key space"
    found = [
        key.decode(errors="replace") for key, stored in dump for needle in needles if needle in stored or needle in key
    ]
    assert not found, f"etcd holds the value or its fingerprint under {sorted(set(found))}"
    records = csi_records(node_cluster, uid)
    assert len(records) == 1 and records[0]["credential"] == "research-llm"


def test_renewed_from_its_own_expiry_and_revoked_at_once(node_cluster, node_operator, node_namespace) -> None:
    """ttl 20s, renewBefore 10s: no kubelet period applies (a Secret volume would refuse such a
    ttl on this node); the file is replaced while the container runs; `agentcred revoke`
    removes it within a second or two."""
    ns = node_namespace
    from agents import service_account

    service_account(node_cluster, ns)
    csi_credential(node_cluster, ns, ttl="20s", renewBefore="10s", maxLifetime="1h")
    pod = create_agent_pod(node_cluster, ns, "agent", "research-llm", "watch", "-every", "200ms", MOUNT)
    running(node_cluster, ns, "agent")
    first = wait_seen(node_cluster, ns, "agent", TOKEN)[0]["sha256"]
    renewed = wait_seen(
        node_cluster,
        ns,
        "agent",
        TOKEN,
        lambda events: len({e["sha256"] for e in events if e.get("sha256")}) >= 2,
        timeout=40,
        what="a renewed value in the container",
    )
    assert renewed[0]["sha256"] == first
    live = csi_value(node_cluster, pod.metadata.uid, "research-llm")
    assert live is not None and fingerprint(live) == renewed[-1]["sha256"]
    started = time.time()
    revoked = subprocess.run(
        [sys.executable, "-m", "agentcred", "revoke", "research-llm", "-n", ns, "--pod", "agent"],
        capture_output=True,
        text=True,
        env=node_cluster.env(),
        timeout=120,
    )
    assert revoked.returncode == 0, revoked.stderr
    gone = wait_seen(
        node_cluster, ns, "agent", TOKEN, lambda events: events[-1].get("gone"), timeout=30, what="the file removed"
    )
    # The container's clock is the host's: the file was gone moments after the command returned.
    assert gone[-1]["t"] - started < 10, f"revocation reached the file {gone[-1]['t'] - started:.1f}s after revoke"
    assert csi_value(node_cluster, pod.metadata.uid, "research-llm") is None
    # And it stays gone: no fresh value for a pod barred from the credential.
    audit = [line for line in node_operator.audit() if line.get("podUID") == pod.metadata.uid]
    assert any(line["action"] == "revoke" and line.get("reason") == "emergency" for line in audit)


def _intake(operator, path: str, items: list[dict], token: str) -> tuple[int, object]:
    import json
    import ssl
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{operator.api_url}{path}",
        data=json.dumps(items).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=operator.ca_file())) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_trace_leak_response_and_inventory_know_csi_values(node_cluster, node_operator, node_namespace) -> None:
    """A csi value is traced to its pod, a leak report revokes it in the container and a fresh
    one follows (onLeak: reissue), and the inventory counts it, as for Secret-delivered values."""
    ns = node_namespace
    from agentcred.client.inventory import read_cluster
    from agents import service_account

    service_account(node_cluster, ns)
    csi_credential(node_cluster, ns)
    pod = create_agent_pod(node_cluster, ns, "agent", "research-llm", "watch", "-every", "200ms", MOUNT)
    running(node_cluster, ns, "agent")
    wait_seen(node_cluster, ns, "agent", TOKEN)
    value = csi_value(node_cluster, pod.metadata.uid, "research-llm")
    assert value is not None
    token = reporter_token(node_cluster)
    status, traced = _intake(node_operator, "/v1/trace", [{"token": value.decode()}], token)
    assert status == 200, traced
    assert traced[0]["verdict"] == "ours" and any(h["pod"] == "agent" for h in traced[0]["holders"]), traced
    listed = wait_for(
        lambda: next((e for e in read_cluster(node_cluster.api_client, namespace=ns).credentials if e.active), None),
        timeout=30,
        what="the inventory counting the csi value",
    )
    assert (listed.delivery, listed.active) == ("csi", 1)
    status, reported = _intake(node_operator, "/v1/leaks", [{"token": value.decode()}], token)
    assert status == 200 and reported[0]["outcome"] == "revoked", reported
    fresh = wait_seen(
        node_cluster,
        ns,
        "agent",
        TOKEN,
        lambda events: events[-1].get("sha256") and events[-1]["sha256"] != fingerprint(value),
        timeout=30,
        what="a fresh value after the leak",
    )
    # The leaked value is out of the file (removed, or straight replaced when the revocation and
    # the fresh value reached the plugin in one sync), and revoked wherever it is shown.
    held = csi_value(node_cluster, pod.metadata.uid, "research-llm")
    assert held is not None and fingerprint(held) == fresh[-1]["sha256"] != fingerprint(value)
    status, again = _intake(node_operator, "/v1/trace", [{"token": value.decode()}], token)
    assert status == 200 and again[0]["verdict"] == "ours"
    assert all(h["state"] != "live" for h in again[0]["holders"]), again
