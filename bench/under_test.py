"""agentcred, the operator under test: `LocalOperator` (the one way to launch `agentcred run`
locally) started fresh where a stage needs it, its usage read from /proc, py-spy around it
with `--profile`; and the objects every agentcred stage makes (a namespace with a
ServiceAccount and Ready AgentCredentials, an opted-in pod).

`tree` runs another checkout's operator (its `operator/` folder first on PYTHONPATH): the
`--baseline` bursts measure the code before a change in the same run as the code after it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agentcred.api import labels, model
from agentcred.devcluster.local_operator import LocalOperator

from .harness import Lean, wait_count
from .processes import profiled, usage


class UnderTest:
    """One operator process at a time (a stage starts it, and stops it when done)."""

    def __init__(
        self, kubeconfig: Path, lean: Lean, workdir: Path, out: Path, *, profile: bool, tree: Path | None = None
    ) -> None:
        self.kubeconfig, self.lean, self.workdir, self.out = kubeconfig, lean, workdir, out
        self.profile, self.tree = profile, tree
        self.operator: LocalOperator | None = None

    @property
    def running(self) -> LocalOperator:
        assert self.operator is not None, "the operator is started"
        return self.operator

    def start(self, *args: str, expect_live: int = 0, env: dict[str, str] | None = None) -> float:
        """Start the operator; seconds until /readyz (every index listed, endpoints up).

        The ceiling grows with what it must list: a new leader after a failover lists every
        live pod before it is ready, and that time is a figure, not a reason to give up."""
        self.stop()
        environment = dict(env or {})
        if self.tree is not None:
            environment["PYTHONPATH"] = str(self.tree / "operator")
        self.operator = LocalOperator(self.kubeconfig, self.workdir, *args, env=environment, detached=False)
        started = time.monotonic()
        self.operator.start(wait=False)
        # A hang guard only: start-up has measured worse than linear in live pods before.
        ceiling = 300 + expect_live / 10 + expect_live**2 / 200_000
        if expect_live:
            with self.profiled(f"startup-{expect_live}"):
                self.operator.wait_ready(ceiling)
        else:
            self.operator.wait_ready(ceiling)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop(timeout=60)
        self.operator = None

    def usage(self) -> dict[str, float]:
        self.running.assert_alive()
        return usage(self.running.pid())

    @contextmanager
    def profiled(self, name: str) -> Iterator[None]:
        """py-spy on the operator for the duration (with --profile): bench/out/profile-<name>.txt."""
        pid = self.operator.pid() if self.operator is not None and self.operator.alive() else None
        with profiled(pid, self.out / f"profile-{name}.txt", enabled=self.profile):
            yield

    # -- objects ----------------------------------------------------------------------

    def namespace(self, name: str, credentials: int = 1, **spec: Any) -> list[str]:
        """A namespace with ServiceAccount `agent` and `credentials` Ready jwt AgentCredentials."""
        self.lean.call("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        self.lean.call("POST", f"/api/v1/namespaces/{name}/serviceaccounts", {"metadata": {"name": "agent"}})
        names = [f"cred-{i}" for i in range(credentials)]
        collection = f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{name}/{model.PLURAL}"

        def create(cred: str) -> None:
            body = {
                "owner": "bench@example.com",
                "category": "model",
                "subjects": {"serviceAccounts": ["agent"]},
                "source": {"jwt": {"audiences": ["bench"]}},
                "projection": {"mountPath": f"/var/run/agentcred/{cred}"},
                **spec,
            }
            self.lean.call(
                "POST",
                collection,
                {"apiVersion": model.API_VERSION, "kind": model.KIND, "metadata": {"name": cred}, "spec": body},
            )

        self.lean.run_all(create, names)

        def ready() -> int:
            return sum(1 for item in self.lean.json("GET", collection)["items"] if is_ready(item))

        wait_count(ready, credentials, f"{name}: AgentCredentials Ready", stall=120, interval=0.5)
        time.sleep(1)  # and in the webhook's index
        return names


def is_ready(item: dict[str, Any]) -> bool:
    conditions = (item.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def pod_body(name: str, credential: str) -> dict[str, Any]:
    """An agent pod opting in to `credential` (the webhook adds the rest)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {labels.INJECT_LABEL: "true"},
            "annotations": {labels.CREDENTIALS_ANNOTATION: credential},
        },
        "spec": {
            "serviceAccountName": "agent",
            "restartPolicy": "Never",
            "containers": [{"name": "agent", "image": "example.com/agent:1"}],
        },
    }


def secret_pod(secret: dict[str, Any]) -> str | None:
    """The pod a managed Secret serves (its annotation)."""
    annotations: dict[str, str] = secret["metadata"].get("annotations") or {}
    return annotations.get(labels.POD_ANNOTATION)
