"""examples/mcp as two real pods: the tool server and the agent run as containers of the
example's image (written here by its Dockerfile's recipe). The agent presents the identity
token the kubelet projects and rotates at /var/run/secrets/agentcred, steps up to search_docs
and is refused delete_docs, as the example's README says. The operator runs on the host:
both pods share the host's network (there is no cluster DNS or kube-proxy here) and reach it
on loopback."""

import pytest

from agentcred.devcluster.controlplane import free_port
from agentcred.devcluster.images import mcp_example_image
from agents import audit_lines, create_credential, service_account
from clusterkit import wait_for
from nodekit import opted_in, running

pytestmark = [pytest.mark.cluster, pytest.mark.node]

SCOPE = {"tools": ["search_docs"], "actions": ["call"], "resources": ["docs:*"]}
NONROOT = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532}


def test_the_mcp_example_runs_as_pods_and_the_agent_is_refused_what_it_may_not_do(
    node_cluster, node_operator, node_namespace
) -> None:
    ns = node_namespace
    image = mcp_example_image()
    node_cluster.node.import_image(image.archive)
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    bundle = node_cluster.core.read_namespaced_config_map("agentcred-ca-bundle", node_operator.namespace)
    node_cluster.core.create_namespaced_config_map(ns, {"metadata": {"name": "agentcred-ca"}, "data": bundle.data})
    python = "/opt/agentcred/bin/python"
    server = {
        "metadata": {"name": "docs-mcp", "labels": {"app": "docs-mcp"}},
        "spec": {
            "hostNetwork": True,
            "securityContext": NONROOT,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "server",
                    "image": image.name,
                    "imagePullPolicy": "Never",
                    "command": [python, "/app/server.py"],
                    "args": ["--issuer", node_operator.api_url, "--cafile", "/ca/ca.crt", "--resource", resource]
                    + ["--namespace", ns, "--host", "127.0.0.1", "--port", str(port)],
                    "volumeMounts": [{"name": "ca", "mountPath": "/ca", "readOnly": True}],
                    "readinessProbe": {"tcpSocket": {"host": "127.0.0.1", "port": port}, "periodSeconds": 1},
                }
            ],
            "volumes": [{"name": "ca", "configMap": {"name": "agentcred-ca"}}],
        },
    }
    node_cluster.core.create_namespaced_pod(ns, server)
    service_account(node_cluster, ns)
    create_credential(node_cluster, ns, name="docs-mcp", source={"jwt": {"audiences": [resource]}}, scope=SCOPE)
    wait_for(
        lambda: any(
            c.type == "Ready" and c.status == "True"
            for c in node_cluster.core.read_namespaced_pod("docs-mcp", ns).status.conditions or []
        ),
        timeout=90,
        what="the MCP server's pod ready",
    )
    # The agent: configured only by what the webhook sets (issuer, identity token file, CA)
    # and the server's URL.
    agent = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "agent"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": opted_in("docs-mcp"),
                "spec": {
                    "serviceAccountName": "research-agent",
                    "restartPolicy": "Never",
                    "hostNetwork": True,
                    "securityContext": NONROOT,
                    "containers": [
                        {
                            "name": "agent",
                            "image": image.name,
                            "imagePullPolicy": "Never",
                            "command": [python, "/app/agent.py"],
                            "env": [{"name": "MCP_SERVER_URL", "value": resource}],
                        }
                    ],
                },
            },
        },
    }
    node_cluster.batch.create_namespaced_job(ns, agent)
    pod = wait_for(
        lambda: next(iter(node_cluster.core.list_namespaced_pod(ns, label_selector="job-name=agent").items), None),
        what="the agent's pod",
    )
    wait_for(
        lambda: any(
            c.type in ("Complete", "Failed") and c.status == "True"
            for c in node_cluster.batch.read_namespaced_job("agent", ns).status.conditions or []
        ),
        timeout=180,
        what="the agent's Job to end",
    )
    output = node_cluster.core.read_namespaced_pod_log(pod.metadata.name, ns)
    job = node_cluster.batch.read_namespaced_job("agent", ns)
    assert job.status.succeeded == 1, output[-3000:]
    assert "tools: search_docs, delete_docs" in output
    assert "search_docs: rotation:" in output
    assert "delete_docs refused: Token exchange failed (400)" in output and "invalid_scope" in output
    # The identity it presented was its own pod's, projected by the kubelet: agentcred's audit
    # names that pod for the tokens it issued and the step-up it refused.
    uid = pod.metadata.uid
    issued = audit_lines(node_operator, "exchange", podUID=uid)
    assert [line["grant"] for line in issued] == ["client_credentials", "client_credentials"]
    assert issued[1]["intents"] == [{"tool": "search_docs", "action": "call", "resource": "docs:handbook"}]
    assert [(line["grant"], line["reason"]) for line in audit_lines(node_operator, "deny", podUID=uid)] == [
        ("client_credentials", "invalid_scope")
    ]
    assert running(node_cluster, ns, "docs-mcp")["spec"]["nodeName"] == node_cluster.node_name
