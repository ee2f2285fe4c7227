"""A stand-in for the scheduler and kubelet of one fake Node.

There is no kubelet on the local control plane. This helper binds pods to a registered
Node (skipping pods that still carry scheduling gates, as the real scheduler does),
reports them Running, and on request Succeeded or Failed, so the real Job controller
marks Jobs Complete or Failed. Pods being deleted are confirmed gone, as a kubelet would.
With `complete_after`, a pod that would not be restarted (restartPolicy Never or OnFailure:
a Job's) succeeds by itself that many seconds after it started running, as a short task
would (`agentcred dev up`); others run until deleted.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKubelet:
    def __init__(
        self, api_client: client.ApiClient, node_name: str = "agentcred-node-0", complete_after: float | None = None
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.node_name = node_name
        self.complete_after = complete_after
        self._timers: set[threading.Timer] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fake-kubelet")

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> FakeKubelet:
        self.register_node()
        self._thread = threading.Thread(target=self._run, name="fake-kubelet-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for timer in list(self._timers):
            timer.cancel()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._workers.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": {"kubernetes.io/hostname": self.node_name}},
        }
        try:
            self.core.create_node(node)
        except ApiException as error:
            if error.status != 409:
                raise
        status = {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "agentcred fake kubelet",
                        "lastHeartbeatTime": _now(),
                        "lastTransitionTime": _now(),
                    }
                ],
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "20000"},
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "20000"},
            }
        }
        self.core.patch_node_status(self.node_name, status)

    # -- what a test asks of the kubelet ---------------------------------------------

    def succeed(self, namespace: str, name: str) -> None:
        self._terminate(namespace, name, exit_code=0)

    def fail(self, namespace: str, name: str, exit_code: int = 1) -> None:
        self._terminate(namespace, name, exit_code=exit_code)

    # -- the watch loop ----------------------------------------------------------------

    def _run(self) -> None:
        resource_version = ""
        while not self._stop.is_set():
            try:
                if not resource_version:
                    listing = self.core.list_pod_for_all_namespaces()
                    resource_version = listing.metadata.resource_version
                    for pod in listing.items:
                        self._workers.submit(self._handle, self.core.api_client.sanitize_for_serialization(pod))
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=resource_version,
                    timeout_seconds=10,
                    allow_watch_bookmarks=True,
                    _preload_content=False,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    raw = event["raw_object"]
                    resource_version = raw["metadata"].get("resourceVersion", resource_version)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._workers.submit(self._handle, raw)
            except ApiException as error:
                if error.status == 410:
                    resource_version = ""  # expired: list again
                else:
                    log.warning("fake kubelet watch failed: %s", error.reason)
                    time.sleep(0.5)
            except Exception as error:  # the loop must outlive a dropped connection
                if not self._stop.is_set():
                    log.warning("fake kubelet watch interrupted: %s", error)
                    time.sleep(0.5)

    def _handle(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        namespace, name = meta["namespace"], meta["name"]
        phase = pod.get("status", {}).get("phase")
        node = spec.get("nodeName")
        try:
            if meta.get("deletionTimestamp"):
                if node == self.node_name:
                    # A kubelet confirms the containers stopped; we have none to stop. Only this
                    # pod: by name alone, a pod created again under its name would go too.
                    self.core.delete_namespaced_pod(
                        name,
                        namespace,
                        body=client.V1DeleteOptions(
                            grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"])
                        ),
                    )
            elif not node:
                if not spec.get("schedulingGates"):
                    self._bind(namespace, name)
            elif node == self.node_name and phase == "Pending":
                self._set_running(pod)
        except ApiException as error:
            if error.status not in (404, 409, 422):  # 422: the phase test failed, the pod moved on
                log.warning("fake kubelet could not handle %s/%s: %s", namespace, name, error.reason)

    def _bind(self, namespace: str, name: str) -> None:
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        self.core.create_namespaced_pod_binding(name, namespace, binding, _preload_content=False)

    def _set_running(self, pod: dict[str, Any]) -> None:
        containers = pod["spec"]["containers"]
        status = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": _now(),
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()},
                {"type": "Initialized", "status": "True", "lastTransitionTime": _now()},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": _now()},
                {"type": "Ready", "status": "True", "lastTransitionTime": _now()},
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": _now()}},
                }
                for c in containers
            ],
        }
        # Only from Pending, atomically: a pod that ended meanwhile must stay ended, as with
        # a real kubelet (the API server itself would let a status patch revive it).
        patch = [
            {"op": "test", "path": "/status/phase", "value": "Pending"},
            {"op": "replace", "path": "/status", "value": {**pod.get("status", {}), **status}},
        ]
        self.core.patch_namespaced_pod_status(pod["metadata"]["name"], pod["metadata"]["namespace"], patch)
        if self.complete_after is not None and pod["spec"].get("restartPolicy") in ("Never", "OnFailure"):
            meta = pod["metadata"]
            timer = threading.Timer(self.complete_after, self._complete, (meta["namespace"], meta["name"], meta["uid"]))
            timer.daemon = True
            self._timers.add(timer)
            timer.start()

    def _complete(self, namespace: str, name: str, uid: str) -> None:
        """The task ends by itself: the same pod (not a successor of the same name), if still running."""
        self._timers.difference_update({t for t in self._timers if t.finished.is_set()})
        try:
            pod = self.core.read_namespaced_pod(name, namespace)
            if pod.metadata.uid == uid and pod.status.phase == "Running" and not pod.metadata.deletion_timestamp:
                self.succeed(namespace, name)
        except ApiException as error:
            if error.status != 404:
                log.warning("fake kubelet could not complete %s/%s: %s", namespace, name, error.reason)

    def run_forever(self) -> None:
        """In the foreground until SIGTERM or Ctrl-C (`agentcred dev kubelet`)."""
        import signal

        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def _terminate(self, namespace: str, name: str, exit_code: int) -> None:
        pod = self.core.read_namespaced_pod(name, namespace)
        phase = "Succeeded" if exit_code == 0 else "Failed"
        reason = "Completed" if exit_code == 0 else "Error"
        terminated = {"exitCode": exit_code, "reason": reason, "startedAt": _now(), "finishedAt": _now()}
        status = {
            "status": {
                "phase": phase,
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": _now()},
                    {
                        "type": "ContainersReady",
                        "status": "False",
                        "reason": "PodCompleted",
                        "lastTransitionTime": _now(),
                    },
                ],
                "containerStatuses": [
                    {
                        "name": c.name,
                        "image": c.image or "",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "started": False,
                        "state": {"terminated": terminated},
                    }
                    for c in pod.spec.containers
                ],
            }
        }
        self.core.patch_namespaced_pod_status(name, namespace, status)
