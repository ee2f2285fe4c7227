"""Last: no secret value handled during the whole session appears in any operator log,
audit line, Event, AgentCredential status or metric."""

import pytest

from agents import create_credential, create_job, job_pod, service_account, shared_secret
from clusterkit import Cluster, OperatorProcess, wait_for
from samples import EXCEPTION, STATIC_SOURCE
from witness import Witness

pytestmark = pytest.mark.cluster


def test_no_secret_value_anywhere(
    cluster: Cluster, operator: OperatorProcess, witness: Witness, kubelet, namespace: str
) -> None:
    # Handle at least one minted and one static value even when this file runs alone.
    service_account(cluster, namespace)
    shared_secret(cluster, namespace, "sk-live-witness-0123456789")
    create_credential(cluster, namespace)
    create_credential(cluster, namespace, name="vendor", category="tool", source=STATIC_SOURCE, exception=EXCEPTION)
    create_job(cluster, namespace, "task", "research-llm,vendor")
    pod = job_pod(cluster, namespace, "task")
    kubelet.succeed(namespace, pod["metadata"]["name"])

    wait_for(lambda: len(witness.values) >= 2, what="the witness seeing this test's values")
    leaks = witness.leaks(
        {
            "this session's operator log": operator.logs() + operator.audit_text(),
            "metrics": operator.health("/metrics")[1],
        }
    )
    assert leaks == [], f"secret values found in: {leaks}"
