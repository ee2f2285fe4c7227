"""Two operator replicas: one leader acts, both serve the webhook with one certificate,
and killing the leader hands over without losing a revocation."""

import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client

from agentcred.verify import TokenRejected, Verifier
from agents import (
    audit_lines,
    create_credential,
    create_job,
    job_pod,
    read_secret,
    secret_gone,
    secret_name_of,
    service_account,
    start_agent,
)
from clusterkit import PATIENCE, Cluster, OperatorProcess, operator_paused, wait_for
from oauth import JWT_BEARER, bound_token, post

NAMESPACE = "agentcred-ha"
LEASE = {"AGENTCRED_LEASE_DURATION": "6", "AGENTCRED_LEASE_RENEW": "1"}
ISSUER = "https://agentcred.agentcred-ha.svc:8443"
STALE_NAMESPACE = "agentcred-ha-stale"  # its own: the first test's namespace may still be terminating


def _holder(cluster: Cluster, namespace: str = NAMESPACE) -> str | None:
    try:
        lease = client.CoordinationV1Api(cluster.api_client).read_namespaced_lease("agentcred-leader", namespace)
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
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": namespace,
            "userInfo": {"username": "test"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "probe", "namespace": namespace, "labels": {"agentcred.dev/inject": "true"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        },
    }
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/agentcred-inject",
        data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=cafile), timeout=10) as response:
        return json.loads(response.read())["response"]


def test_one_leader_both_serve_and_failover_loses_no_revocation(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    with operator_paused(operator):
        replicas = {
            "replica-a": OperatorProcess(
                cluster, namespace=NAMESPACE, standalone=False, env={**LEASE, "POD_NAME": "replica-a"}
            ),
            "replica-b": OperatorProcess(
                cluster,
                "--webhook-config",
                "none",
                namespace=NAMESPACE,
                standalone=False,
                env={**LEASE, "POD_NAME": "replica-b"},
            ),
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
                wait_for(
                    lambda n=name: secret_gone(cluster, namespace, secret_name_of(pods[n])),
                    timeout=30,
                    what=f"the {name} task's value revoked by the new leader",
                )
            handover = time.monotonic() - killed_at
            assert handover < 20 * PATIENCE, f"handover took {handover:.1f}s"
            assert read_secret(cluster, namespace, secret_name_of(pods["running"])) is not None
            ended = {pods["done"]["metadata"]["name"], pods["deleted"]["metadata"]["name"]}
            wait_for(
                lambda: {line["podName"] for line in audit_lines(follower, "revoke", namespace=namespace)} == ended,
                what="both revocations in the new leader's audit log",
            )
        finally:
            for replica in replicas.values():
                replica.cleanup()
            cluster.delete_namespace(NAMESPACE)


def _exchange(replica: OperatorProcess, cafile: str, token: str) -> tuple[int, dict]:
    form = {"grant_type": JWT_BEARER, "assertion": token, "scope": "tool:web-search action:read resource:repo:acme/app"}
    status, answer, _ = post(f"{replica.api_url}/oauth2/token", cafile, form)
    return status, answer


def test_every_replica_exchanges_and_a_stale_leader_hands_out_nothing_that_outlives_a_revoke(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    with operator_paused(operator):
        replicas = {
            # One issuer for both, as replicas behind one Service have.
            name: OperatorProcess(
                cluster,
                "--issuer",
                ISSUER,
                *(() if name == "replica-c" else ("--webhook-config", "none")),
                namespace=STALE_NAMESPACE,
                standalone=False,
                env={**LEASE, "POD_NAME": name},
            )
            for name in ("replica-c", "replica-d")
        }
        try:
            for replica in replicas.values():
                replica.start()
            leader_name = wait_for(lambda: _holder(cluster, STALE_NAMESPACE), what="a leader")
            follower_name = next(name for name in replicas if name != leader_name)
            leader, follower = replicas[leader_name], replicas[follower_name]
            cafile = leader.ca_file()
            service_account(cluster, namespace)
            create_credential(cluster, namespace)
            pod = start_agent(cluster, namespace)
            token = bound_token(cluster, namespace, pod)

            # A follower answers exchanges from the shared state, as the leader does.
            for replica in (follower, leader):
                status, body = _exchange(replica, cafile, token)
                assert status == 200, (replica is leader, body)

            # The leader freezes; the follower takes over and an emergency revoke goes through it.
            leader.pause()
            try:
                try:
                    wait_for(
                        lambda: _holder(cluster, STALE_NAMESPACE) == follower_name,
                        timeout=30,
                        what="the follower taking the lead",
                    )
                except TimeoutError:
                    print(follower.logs()[-6000:])
                    raise
                revoked = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "agentcred",
                        "revoke",
                        "research-llm",
                        "-n",
                        namespace,
                        "--pod",
                        "agent",
                        "--reason",
                        "test",
                    ],
                    capture_output=True,
                    text=True,
                    env=cluster.env(),
                    timeout=120,
                )
                assert revoked.returncode == 0, revoked.stderr
            finally:
                leader.resume()
            # The stale leader, before it notices, may still answer: whatever it hands out is revoked.
            status, body = _exchange(leader, cafile, token)
            verifier = Verifier.from_url(follower.api_url, issuer=ISSUER, cafile=cafile)
            if status == 200:
                with pytest.raises(TokenRejected) as rejected:
                    verifier.verify(body["access_token"], audience="https://llm-gateway.internal", namespace=None)
                assert rejected.value.reason == "revoked"
            # And once the revocation list has reached every replica, both refuse.
            for replica in (follower, leader):
                wait_for(
                    lambda r=replica: (
                        _exchange(r, cafile, token)
                        == (
                            400,
                            {"error": "invalid_grant", "error_description": "research-llm was revoked for pod agent"},
                        )
                    ),
                    what="the revocation seen by every replica",
                )
            # The paused leader resumed believing it still led, and handled what it had missed
            # (the revoke request among it): a second `revoke` line for the same value, and
            # calls a minting service would have seen twice. Its lead ends with its Lease, by
            # its own clock, paused or not: it acts on nothing once it resumes.
            assert len(audit_lines(follower, "revoke", namespace=namespace, podName="agent")) == 1
            assert audit_lines(leader, "revoke", namespace=namespace) == []
        finally:
            for replica in replicas.values():
                replica.resume()
                replica.cleanup()
            cluster.delete_namespace(STALE_NAMESPACE)


PAUSED_NAMESPACE = "agentcred-ha-paused"


def test_a_leader_paused_past_its_lease_acts_on_nothing_when_it_resumes(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """The leader is frozen (SIGSTOP: a starved process, a suspended VM) until its Lease lapses
    and the follower takes over; a pod ends meanwhile and the new leader revokes its value, at
    the minting service too. The old leader, resumed, handled the pod's deletion it had missed
    before its next renewal told it it no longer led: a second `revoke` audit line and a second
    revoke call to the minting service. Its lead now ends with its Lease by its own clock."""
    from minting_service import MintingService

    service = MintingService().start()
    with operator_paused(operator):
        replicas = {
            name: OperatorProcess(
                cluster,
                "--issuer",
                ISSUER,
                *(() if name == "replica-g" else ("--webhook-config", "none")),
                namespace=PAUSED_NAMESPACE,
                standalone=False,
                env={**LEASE, "POD_NAME": name},
            )
            for name in ("replica-g", "replica-h")
        }
        try:
            for replica in replicas.values():
                replica.start()
            leader_name = wait_for(lambda: _holder(cluster, PAUSED_NAMESPACE), what="a leader")
            follower_name = next(name for name in replicas if name != leader_name)
            leader, follower = replicas[leader_name], replicas[follower_name]
            service_account(cluster, namespace)
            source = {"webhook": {"url": service.url, "caBundle": service.ca_pem, "timeout": "2s"}}
            create_credential(cluster, namespace, name="minted", category="tool", source=source)
            pod = start_agent(cluster, namespace, credentials="minted")
            assert len(service.minted) == 1

            leader.pause()
            try:
                wait_for(
                    lambda: _holder(cluster, PAUSED_NAMESPACE) == follower_name,
                    timeout=30,
                    what="the follower taking the lead",
                )
                cluster.core.delete_namespaced_pod("agent", namespace, grace_period_seconds=0)
                try:
                    wait_for(
                        lambda: audit_lines(follower, "revoke", podUID=pod["metadata"]["uid"]) and service.revoked,
                        what="the new leader revoking the ended task's value",
                    )
                except TimeoutError as timeout:
                    raise AssertionError(f"{timeout}; the new leader's log:\n{follower.log_tail(80)}") from None
            finally:
                leader.resume()
            # Positive proof that the resumed replica has looked at its Lease again (what it did
            # wrongly, it did before that): its own line saying it lost the lead.
            wait_for(lambda: "lost the lead" in leader.logs(), what="the resumed replica noticing it lost the lead")
            assert audit_lines(leader, "revoke", podUID=pod["metadata"]["uid"]) == []
            assert len(service.revoked) == 1, service.revoked
        finally:
            for replica in replicas.values():
                replica.resume()
                replica.cleanup()
            cluster.delete_namespace(PAUSED_NAMESPACE)
            service.stop()


UNSAVED_NAMESPACE = "agentcred-ha-unsaved"


def _refuse_revocation_writes(cluster: Cluster, namespace: str) -> None:
    """An admission policy refusing every write of the revocation list's ConfigMaps: the leader
    cannot save it, as when a tenant's churn made a shard too large to save."""
    name = "test-revocations-unsaved"
    cluster.admission.create_validating_admission_policy(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "resources": ["configmaps"],
                            "operations": ["CREATE", "UPDATE"],
                        }
                    ]
                },
                "matchConditions": [
                    {
                        "name": "revocation-shards",
                        "expression": (
                            f"request.namespace == '{namespace}' && request.name.startsWith('agentcred-revocations')"
                        ),
                    }
                ],
                "validations": [{"expression": "false", "message": "the revocation list cannot be saved (test)"}],
            },
        }
    )
    cluster.admission.create_validating_admission_policy_binding(
        {"metadata": {"name": name}, "spec": {"policyName": name, "validationActions": ["Deny"]}}
    )


def _allow_revocation_writes(cluster: Cluster) -> None:
    for delete in (
        cluster.admission.delete_validating_admission_policy_binding,
        cluster.admission.delete_validating_admission_policy,
    ):
        try:
            delete("test-revocations-unsaved")
        except client.exceptions.ApiException as error:
            if error.status != 404:
                raise


def test_a_follower_that_cannot_be_sure_of_the_revocation_list_issues_nothing(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """The leader revokes a running pod but cannot save the revocation list (a shard too large,
    the API server refusing). The follower never learnt of the revocation and went on issuing
    the pod tokens verifiers accepted. The leader now marks on its Lease how current the saved
    list is; a follower that sees the mark grow old refuses to issue, until the list is saved."""
    with operator_paused(operator):
        replicas = {
            name: OperatorProcess(
                cluster,
                "--issuer",
                ISSUER,
                *(() if name == "replica-i" else ("--webhook-config", "none")),
                namespace=UNSAVED_NAMESPACE,
                standalone=False,
                env={**LEASE, "POD_NAME": name},
            )
            for name in ("replica-i", "replica-j")
        }
        try:
            for replica in replicas.values():
                replica.start()
            leader_name = wait_for(lambda: _holder(cluster, UNSAVED_NAMESPACE), what="a leader")
            follower = next(r for name, r in replicas.items() if name != leader_name)
            cafile = follower.ca_file()
            service_account(cluster, namespace)
            create_credential(cluster, namespace)
            pod = start_agent(cluster, namespace)
            token = bound_token(cluster, namespace, pod)
            assert _exchange(follower, cafile, token)[0] == 200

            _refuse_revocation_writes(cluster, UNSAVED_NAMESPACE)
            revoked = subprocess.run(
                [sys.executable, "-m", "agentcred", "revoke", "research-llm", "-n", namespace, "--pod", "agent"],
                capture_output=True,
                text=True,
                env=cluster.env(),
                timeout=120,
            )
            assert revoked.returncode == 0, revoked.stderr

            def follower_refuses() -> bool:
                status, answer = _exchange(follower, cafile, token)
                return status == 503 and "cannot be sure" in answer["error_description"]

            wait_for(follower_refuses, interval=0.5, what="the follower refusing to issue")
            # Once the list can be saved, the follower knows why, and says so.
            _allow_revocation_writes(cluster)
            wait_for(
                lambda: (
                    _exchange(follower, cafile, token)
                    == (400, {"error": "invalid_grant", "error_description": "research-llm was revoked for pod agent"})
                ),
                interval=0.5,
                what="the revocation reaching the follower",
            )
        finally:
            _allow_revocation_writes(cluster)
            for replica in replicas.values():
                replica.cleanup()
            cluster.delete_namespace(UNSAVED_NAMESPACE)
