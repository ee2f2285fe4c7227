"""On a real node the kubelet, not agentcred, decides when a mounted Secret's new content
reaches the container: at the pod's next sync (every syncFrequency, plus up to half of it
again). A renewal must be started early enough that the container sees the new value before
the old one expires. Here the node's kubelet syncs every 10s (`agentcred dev up`'s setting)."""

import datetime as dt

import pytest

from agents import claims_of, read_secret, secret_name_of, service_account, value_of
from agents import create_credential as _create_credential
from nodekit import MOUNT, TOKEN, create_agent_pod, fingerprint, running, wait_seen

pytestmark = [pytest.mark.cluster, pytest.mark.node]


def test_the_container_sees_the_renewed_value_before_the_old_one_expires(
    node_cluster, node_operator, node_namespace
) -> None:
    ns = node_namespace
    service_account(node_cluster, ns)
    _create_credential(node_cluster, ns, ttl="40s", renewBefore="20s", projection={"mountPath": MOUNT})
    pod = create_agent_pod(node_cluster, ns, "agent", "research-llm", "watch", MOUNT)
    running(node_cluster, ns, "agent")
    secret_name = secret_name_of(node_cluster.api_client.sanitize_for_serialization(pod))
    first = value_of(read_secret(node_cluster, ns, secret_name), "research-llm")
    expires = dt.datetime.fromtimestamp(claims_of(first)["exp"], dt.timezone.utc)
    seen_first = wait_seen(node_cluster, ns, "agent", TOKEN)
    assert seen_first[0]["sha256"] == fingerprint(first)
    # The renewal is written 20s before expiry; the kubelet takes up to ~15s to deliver it.
    events = wait_seen(
        node_cluster,
        ns,
        "agent",
        TOKEN,
        predicate=lambda events: len({e["sha256"] for e in events}) >= 2,
        timeout=60,
        what="the renewed value inside the container",
    )
    renewed = next(e for e in events if e["sha256"] != fingerprint(first))
    seen_at = dt.datetime.fromtimestamp(renewed["t"], dt.timezone.utc)
    assert seen_at < expires, f"the new value reached the container {seen_at - expires} after the old one expired"
    current = value_of(read_secret(node_cluster, ns, secret_name), "research-llm")
    assert renewed["sha256"] == fingerprint(current)
    assert claims_of(current)["exp"] > claims_of(first)["exp"]
