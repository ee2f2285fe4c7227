"""The session's witness sees the values it must look for: one minted and one static value are
handled here, so the scan at the end of any session that runs this file has needles; and
nothing handled so far shows anywhere. (The scan of the whole session runs when it ends: the
`witness` fixture in conftest.py fails the session if any value showed in any operator's log,
audit line, metrics, Event or AgentCredential status.)"""

from agents import create_credential, create_job, job_pod, service_account, shared_secret
from clusterkit import Cluster, OperatorProcess, wait_for
from samples import EXCEPTION, STATIC_SOURCE
from witness import Witness


def test_the_witness_sees_minted_and_static_values_and_none_leaked_so_far(
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
