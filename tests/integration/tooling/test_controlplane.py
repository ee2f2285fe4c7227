"""The local control plane is a real one: tokens, the Job controller, garbage collection."""

from kubernetes.client.exceptions import ApiException

from clusterkit import Cluster, wait_for


def _job(name: str) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]}},
        },
    }


def _job_condition(cluster: Cluster, namespace: str, name: str, wanted: str) -> bool:
    job = cluster.batch.read_namespaced_job(name, namespace)
    return any(c.type == wanted and c.status == "True" for c in job.status.conditions or [])


def _job_pod(cluster: Cluster, namespace: str, job: str):
    pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return pods[0] if pods and pods[0].status.phase == "Running" else None


def test_token_request_and_token_review_work(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "agent"}})
    token = cluster.core.create_namespaced_service_account_token(
        "agent", namespace, {"spec": {"audiences": ["agentcred"], "expirationSeconds": 600}}
    ).status.token
    review = cluster.auth.create_token_review({"spec": {"token": token, "audiences": ["agentcred"]}})
    assert review.status.authenticated is True
    assert review.status.user.username == f"system:serviceaccount:{namespace}:agent"
    wrong = cluster.auth.create_token_review({"spec": {"token": token, "audiences": ["someone-else"]}})
    assert wrong.status.authenticated is not True


def test_job_controller_marks_jobs_complete_and_failed(cluster: Cluster, kubelet, namespace: str) -> None:
    cluster.batch.create_namespaced_job(namespace, _job("ok"))
    cluster.batch.create_namespaced_job(namespace, _job("broken"))
    ok_pod = wait_for(lambda: _job_pod(cluster, namespace, "ok"), what="Job pod Running")
    broken_pod = wait_for(lambda: _job_pod(cluster, namespace, "broken"), what="Job pod Running")
    assert ok_pod.spec.node_name == kubelet.node_name
    kubelet.succeed(namespace, ok_pod.metadata.name)
    kubelet.fail(namespace, broken_pod.metadata.name)
    wait_for(lambda: _job_condition(cluster, namespace, "ok", "Complete"), what="Job Complete")
    wait_for(lambda: _job_condition(cluster, namespace, "broken", "Failed"), what="Job Failed")


def test_garbage_collector_removes_dependents(cluster: Cluster, namespace: str) -> None:
    owner = cluster.core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    cluster.core.create_namespaced_secret(
        namespace,
        {
            "metadata": {
                "name": "dependent",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
                ],
            },
            "stringData": {"k": "v"},
        },
    )
    cluster.core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        try:
            cluster.core.read_namespaced_secret("dependent", namespace)
            return False
        except ApiException as error:
            return error.status == 404

    wait_for(gone, timeout=30, what="dependent Secret garbage-collected")


def test_scheduling_gates_hold_pods_until_removed(cluster: Cluster, kubelet, namespace: str) -> None:
    pod = {
        "metadata": {"name": "gated"},
        "spec": {"schedulingGates": [{"name": "example.com/wait"}], "containers": [{"name": "c", "image": "busybox"}]},
    }
    cluster.core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: cluster.core.read_namespaced_pod("gated", namespace).status.phase == "Pending", what="Pending")
    assert cluster.core.read_namespaced_pod("gated", namespace).spec.node_name is None
    cluster.core.patch_namespaced_pod("gated", namespace, {"spec": {"schedulingGates": None}})
    wait_for(lambda: cluster.core.read_namespaced_pod("gated", namespace).status.phase == "Running", what="Running")
