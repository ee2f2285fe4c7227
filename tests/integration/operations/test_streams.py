"""`agentcred run` by default: the audit trail alone on stdout, one JSON object a line; the
operator's own logs on stderr."""

import json
import subprocess
import sys

from kubernetes.client.exceptions import ApiException

from agentcred.devcluster.controlplane import free_port
from agents import create_credential, create_pod, service_account
from clusterkit import OPERATOR_NAMESPACE, Cluster, OperatorProcess, operator_paused, wait_for


def test_audit_on_stdout_logs_on_stderr(cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    port = free_port()
    with operator_paused(operator), open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "agentcred", "run", "--standalone", "--namespace", OPERATOR_NAMESPACE]
            + ["--webhook-address", "127.0.0.1", "--webhook-port", str(port)]
            + ["--webhook-url", f"https://127.0.0.1:{port}", "--api-address", "127.0.0.1"]
            + ["--api-port", str(free_port()), "--health-address", "127.0.0.1", "--health-port", str(free_port())],
            stdout=stdout,
            stderr=stderr,
            env=cluster.env(),
        )
        try:

            def refused() -> bool:
                try:
                    create_pod(cluster, namespace, "refused", "research-llm", sa="default")
                except ApiException as error:
                    return error.status == 403  # the webhook answered: a deny line is written
                cluster.core.delete_namespaced_pod("refused", namespace)  # admitted before the webhook was up
                return False

            wait_for(refused, what="a refusal by this operator's webhook")
            wait_for(lambda: b'"action": "deny"' in out.read_bytes(), what="the deny line on stdout")
        finally:
            process.terminate()
            process.wait(timeout=30)
    lines = out.read_text().splitlines()
    assert lines and all(json.loads(line)["audit"] == "agentcred" for line in lines), lines[:5]
    logs = err.read_text()
    assert "agentcred ready" in logs and '"audit": "agentcred"' not in logs
