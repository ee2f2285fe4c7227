"""A labelled pod created before the webhook existed ran without any credential: the operator's
start-up sweep says so (a NotAdmitted Warning Event on the pod, an audit line and the
agentcred_denied_total{reason="not-admitted"} metric)."""

from agents import audit_lines, pod_events, service_account
from clusterkit import Cluster, OperatorProcess, operator_paused, wait_for


def test_labelled_pods_from_before_the_webhook_are_flagged_at_start_up(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    service_account(cluster, namespace)
    with operator_paused(operator):  # no operator, no webhook configuration: as before the first install
        body = {
            "metadata": {
                "name": "early",
                "labels": {"agentcred.dev/inject": "true"},
                "annotations": {"agentcred.dev/credentials": "research-llm"},
            },
            "spec": {
                "serviceAccountName": "research-agent",
                "containers": [{"name": "agent", "image": "example.com/agent:1"}],
            },
        }
        created = cluster.core.create_namespaced_pod(namespace, body)
        assert not created.spec.scheduling_gates  # nothing held it: it would run with no credential
    events = wait_for(
        lambda: [e for e in pod_events(cluster, namespace, "early") if e.reason == "NotAdmitted"],
        what="a NotAdmitted Event from the start-up sweep",
    )
    assert events[0].type == "Warning" and "not admitted by the agentcred webhook" in events[0].message
    assert audit_lines(operator, "deny", podUID=created.metadata.uid, reason="not-admitted")
    samples = operator.metrics()
    assert samples[("agentcred_denied_total", (("category", "unknown"), ("reason", "not-admitted")))] >= 1
