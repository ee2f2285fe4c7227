"""Two operator replicas: one leader acts, both serve the webhook with one certificate,
and killing the leader hands over without losing a revocation."""

import json
import socket
import ssl
import time
import urllib.request

import pytest
from kubernetes import client

from agents import audit_lines, create_credential, create_job, job_pod, read_secret, secret_gone, secret_name_of, service_account
from clusterkit import Cluster, OperatorProcess, operator_paused, wait_for

pytestmark = pytest.mark.cluster

NAMESPACE = "agentcred-ha"
LEASE = {"AGENTCRED_LEASE_DURATION": "6", "AGENTCRED_LEASE_RENEW": "1"}


def _holder(cluster: Cluster) -> str | None:
    try:
        lease = client.CoordinationV1Api(cluster.api_client).read_namespaced_lease("agentcred-leader", NAMESPACE)
    except client.exceptions.ApiException:
        return None
    return lease.spec.holder_identity


def _certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True)


def _review(port: int, cafile: str, namespace: str) -> dict:
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "00000000-0000-0000-0000-000000000001", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE",
        "namespace": namespace, "userInfo": {"username": "test"},
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "probe", "namespace": namespace, "labels": {"agentcred.dev/inject": "true"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}}}
    request = urllib.request.Request(f"https://127.0.0.1:{port}/agentcred-inject", data=json.dumps(review).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=cafile), timeout=10) as response:
        return json.loads(response.read())["response"]


def test_one_leader_both_serve_and_failover_loses_no_revocation(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    with operator_paused(operator):
        replicas = {
            "replica-a": OperatorProcess(cluster, namespace=NAMESPACE, standalone=False, env={**LEASE, "POD_NAME": "replica-a"}),
            "replica-b": OperatorProcess(cluster, "--webhook-config", "none", namespace=NAMESPACE, standalone=False,
                                         env={**LEASE, "POD_NAME": "replica-b"}),
        }
        try:
            replicas["replica-a"].start()
            replicas["replica-b"].start()
            leader_name = wait_for(lambda: _holder(cluster), what="a leader")
            follower_name = next(name for name in replicas if name != leader_name)
            leader, follower = replicas[leader_name], replicas[follower_name]

            # Both serve the webhook, with the one shared certificate, and give the same answer.
            assert _certificate(leader.webhook_port) == _certificate(follower.webhook_port)
            cafile = leader.ca_file()
            for replica in replicas.values():
                answer = _review(replica.webhook_port, cafile, namespace)
                assert answer["allowed"] is False and "agentcred.dev/credentials" in answer["status"]["message"]

            service_account(cluster, namespace)
            create_credential(cluster, namespace)
            for name in ("done", "deleted", "running"):
                create_job(cluster, namespace, name, "research-llm")
            pods = {name: job_pod(cluster, namespace, name) for name in ("done", "deleted", "running")}
            assert len(audit_lines(leader, "issue", namespace=namespace)) == 3
            assert audit_lines(follower, "issue", namespace=namespace) == []  # exactly one replica acts

            leader.kill()
            killed_at = time.monotonic()
            kubelet.succeed(namespace, pods["done"]["metadata"]["name"])
            cluster.core.delete_namespaced_pod(pods["deleted"]["metadata"]["name"], namespace)
            wait_for(lambda: _holder(cluster) == follower_name, timeout=30, what="the follower taking the lead")
            for name in ("done", "deleted"):
                wait_for(lambda n=name: secret_gone(cluster, namespace, secret_name_of(pods[n])), timeout=30,
                         what=f"the {name} task's value revoked by the new leader")
            handover = time.monotonic() - killed_at
            assert handover < 20, f"handover took {handover:.1f}s"
            assert read_secret(cluster, namespace, secret_name_of(pods["running"])) is not None
            ended = {pods["done"]["metadata"]["name"], pods["deleted"]["metadata"]["name"]}
            wait_for(lambda: {line["podName"] for line in audit_lines(follower, "revoke", namespace=namespace)} == ended,
                     what="both revocations in the new leader's audit log")
        finally:
            for replica in replicas.values():
                replica.cleanup()
            cluster.delete_namespace(NAMESPACE)
