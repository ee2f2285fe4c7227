"""What an identity that is not an admin can make the operator keep in memory: bounded.

A tenant's namespace admin writes its own AgentCredentials -- their request annotations, their
specs -- as often and as large as the API server lets it. Each test performs such a flood and
reads the operator's own account of what it keeps (`agentcred_kept_entries`, by structure),
which must stay within its bound. Memory in bytes is for the benchmark
(bench/attacks.py), not for asserts."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.request
import uuid
from pathlib import Path

from kubernetes import client

from agentcred.api import labels, model
from agents import create_credential, get_credential, read_secret, secret_name_of, service_account, start_agent
from clusterkit import REPORTER_ENV, Cluster, OperatorProcess, operator_paused, wait_for
from identities import namespace_admin


def kept(operator: OperatorProcess, structure: str) -> float:
    samples = operator.metrics()
    key = ("agentcred_kept_entries", (("structure", structure),))
    assert key in samples, f"the operator does not report how many {structure} entries it keeps"
    return samples[key]


def _annotate(api: client.CustomObjectsApi, namespace: str, name: str, annotation: str, request: dict) -> None:
    api.patch_namespaced_custom_object(
        model.GROUP,
        model.VERSION,
        namespace,
        model.PLURAL,
        name,
        {"metadata": {"annotations": {annotation: json.dumps(request)}}},
    )


def test_request_ids_cannot_fill_the_leaders_memory(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    """Every `agentcred revoke`/`renew` request id the leader carried out was kept in a set
    that never shrank, whatever its length: 1,200 requests with 200 KB ids grew the leader from
    128 to 381 MB. Ids are now what the CLI writes (at most 64 characters) and one per
    credential and kind is kept; a malformed request is refused with an Event, not carried out."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    pod = start_agent(cluster, namespace)
    admin = client.CustomObjectsApi(namespace_admin(cluster, namespace, tmp_path))
    for i in range(20):
        huge = f"{i:04d}" + uuid.uuid4().hex * 6400  # ~200 KB
        _annotate(admin, namespace, "research-llm", labels.RENEW_ANNOTATION, {"id": huge})
    refused = wait_for(
        lambda: [
            e
            for e in cluster.core.list_namespaced_event(
                namespace, field_selector="involvedObject.name=research-llm"
            ).items
            if e.reason == "RequestRefused"
        ],
        what="the malformed requests refused",
    )
    assert all(len(e.message) < 300 for e in refused)
    for _ in range(60):  # well-formed and distinct: carried out, and forgotten but the last
        _annotate(admin, namespace, "research-llm", labels.RENEW_ANNOTATION, {"id": uuid.uuid4().hex})
    last = uuid.uuid4().hex
    _annotate(admin, namespace, "research-llm", labels.RENEW_ANNOTATION, {"id": last})
    wait_for(
        lambda: (
            (get_credential(cluster, namespace, "research-llm").get("status") or {}).get("lastRenewal", {}).get("id")
            == last
        ),
        what="the last renewal carried out",
    )
    # One id per credential and kind, and the suite's other namespaces are gone with theirs.
    assert kept(operator, "handled-requests") <= 4
    assert read_secret(cluster, namespace, secret_name_of(pod)) is not None


def test_spec_edits_cannot_fill_the_scheduler(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    """Each edit of a credential re-plans its pods, and each re-plan scheduled the pod's next
    look again; the scheduler kept every replaced due time until it came due (hours for a
    renewal): 7,500 edits of a credential with 50 pods grew the leader from 86 to 196 MB."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, ttl="1h")
    for i in range(10):
        start_agent(cluster, namespace, f"agent-{i}")
    admin = client.CustomObjectsApi(namespace_admin(cluster, namespace, tmp_path))
    for edit in range(200):
        admin.patch_namespaced_custom_object(
            model.GROUP,
            model.VERSION,
            namespace,
            model.PLURAL,
            "research-llm",
            {"spec": {"owner": f"team-{edit}@example.com"}},
        )
    wait_for(
        lambda: (
            get_credential(cluster, namespace, "research-llm")["status"].get("observedGeneration")
            == get_credential(cluster, namespace, "research-llm")["metadata"]["generation"]
        ),
        what="every edit seen",
    )
    heap, keys = kept(operator, "scheduled"), kept(operator, "scheduled-keys")
    assert keys >= 10
    assert heap <= 2 * keys + 1024 + 1, f"{heap:.0f} scheduled entries for {keys:.0f} keys"


def test_connections_beyond_the_bound_are_closed(cluster: Cluster, operator: OperatorProcess) -> None:
    """Why a replica reached 421 MB after the concurrent floods of garbage tokens, and stayed
    there: every TLS connection costs the operator a 256 KiB read buffer from the moment it is
    accepted (asyncio), more while a body is in flight (a leak report: up to 1 MiB), and glibc
    kept what the flood made it allocate (bench/attacks.py: 80 -> 420 MiB, tracemalloc names
    sslproto.py's buffer first). Each HTTPS server now holds a bounded number of connections at
    once (here 16, by AGENTCRED_MAX_CONNECTIONS) and closes the rest as they come; and the image
    returns such buffers to the system when they are freed (MALLOC_MMAP_THRESHOLD_)."""
    with operator_paused(operator):
        own = OperatorProcess(cluster, env={"AGENTCRED_MAX_CONNECTIONS": "16", **REPORTER_ENV})
        held: list[ssl.SSLSocket] = []
        try:
            own.start()
            context = ssl.create_default_context(cafile=own.ca_file())

            def hold() -> ssl.SSLSocket:
                raw = socket.create_connection(("127.0.0.1", own.api_port), timeout=10)
                return context.wrap_socket(raw, server_hostname="127.0.0.1")

            held = [hold() for _ in range(40)]
            for connection in held:
                connection.setblocking(False)
            closed: set[int] = set()

            def closed_by_the_server() -> bool:
                for index, connection in enumerate(held):
                    if index in closed:
                        continue
                    try:
                        if connection.recv(1) == b"":
                            closed.add(index)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        pass  # open, and quiet
                    except (ssl.SSLError, OSError):
                        closed.add(index)
                return len(closed) >= 40 - 16

            wait_for(closed_by_the_server, interval=0.2, what="the connections over the bound closed")
            assert kept(own, "api-connections") <= 16
            for connection in held:
                connection.close()
            held = []

            # Once they are gone (the server notices in a moment), the endpoint answers as before.
            def answers() -> bool:
                try:
                    with urllib.request.urlopen(f"{own.api_url}/.well-known/jwks.json", context=context, timeout=10):
                        return True
                except OSError:
                    return False

            wait_for(answers, interval=0.5, what="the endpoint answering again")
        finally:
            for connection in held:
                connection.close()
            own.cleanup()
