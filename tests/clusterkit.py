"""Helpers the tests share: reaching a cluster, running the operator as a real process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agentcred.devcluster import polling
from agentcred.devcluster.install import apply_crd, apply_policy, permissive_policy
from agentcred.devcluster.local_operator import LocalOperator

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "crds" / "agentcredentials.agentcred.dev.yaml"
CRD_FILES = (CRD_FILE, REPO / "crds" / "agentcredentialpolicies.agentcred.dev.yaml")
TEST_LABEL = "agentcred.dev/test"


# Every wait in the suite is a ceiling on a condition: it returns as soon as the condition
# holds, so a generous ceiling costs nothing when things work, and a loaded 2-core machine
# can be several times slower than an idle one. AGENTCRED_TEST_PATIENCE scales them all.
PATIENCE = float(os.environ.get("AGENTCRED_TEST_PATIENCE", "4"))


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1, what: str = "") -> Any:
    """Poll until `predicate` returns something truthy (within `timeout` x PATIENCE seconds)."""
    return polling.wait_for(predicate, timeout=timeout * PATIENCE, interval=interval, what=what)


def ensure_namespace(cluster: Cluster, name: str) -> None:
    """The namespace exists. An API server starved of CPU answers 504 now and then; that is
    the machine, not the test, so it is asked again."""
    for attempt in range(5):
        try:
            cluster.core.create_namespace({"metadata": {"name": name}})
            return
        except ApiException as error:
            if error.status == 409:
                return
            if error.status < 500 or attempt == 4:
                raise
            time.sleep(2)


class Cluster:
    """A reachable cluster: its kubeconfig, a client, and the kubectl/helm binaries if built."""

    def __init__(
        self, kubeconfig: Path, binaries: dict[str, Path] | None = None, local: bool = False, plane: Any = None
    ) -> None:
        self.kubeconfig = kubeconfig
        self.plane = plane  # the local ControlPlane, for fault tests
        self.binaries = binaries or {}
        self.local = local
        self.api_client = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.rbac = client.RbacAuthorizationV1Api(self.api_client)
        self.extensions = client.ApiextensionsV1Api(self.api_client)
        self.auth = client.AuthenticationV1Api(self.api_client)
        self.admission = client.AdmissionregistrationV1Api(self.api_client)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env.update(extra)
        return env

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        kubectl = self.binaries.get("kubectl") or shutil.which("kubectl")
        if kubectl is None:
            raise RuntimeError("kubectl is not available")
        return subprocess.run(
            [str(kubectl), *args], input=input, capture_output=True, text=True, env=self.env(), check=check
        )

    def install_crd(self) -> None:
        """The committed CRDs (the files a user applies), and a policy allowing everything in
        the suite's namespaces (tests of policies make namespaces of their own)."""
        for path in CRD_FILES:
            apply_crd(self.api_client, yaml.safe_load(path.read_text()))
        apply_policy(
            self.api_client,
            permissive_policy(
                "test-namespaces",
                {
                    "matchLabels": {TEST_LABEL: "true"},
                    "matchExpressions": [{"key": "agentcred.dev/tenant", "operator": "DoesNotExist"}],
                },
            ),
        )

    def create_namespace(self, prefix: str = "t", labels: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace({"metadata": {"name": name, "labels": {TEST_LABEL: "true", **(labels or {})}}})
        wait_for(lambda: self._has_default_sa(name), timeout=30, what=f"default ServiceAccount in {name}")
        return name

    def _has_default_sa(self, namespace: str) -> bool:
        try:
            self.core.read_namespaced_service_account("default", namespace)
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            raise

    def delete_namespace(self, name: str) -> None:
        try:
            self.core.delete_namespace(name)
        except ApiException as error:
            if error.status != 404:
                raise


OPERATOR_NAMESPACE = "agentcred"
INTROSPECTOR = ("agentcred-introspection", "gateway")  # allowed to introspect, in the session's operator
# The session operator's leak reporters: a cluster-wide one (acts in every namespace), and a
# tenant's (only in its own namespace).
LEAK_REPORTER = (OPERATOR_NAMESPACE, "leak-reporter")
TENANT_REPORTER = ("leak-tenant", "scanner")
LEAK_REPORTERS = "/".join(TENANT_REPORTER)
CLUSTER_LEAK_REPORTERS = "/".join(LEAK_REPORTER)
REPORTER_ENV = {"AGENTCRED_LEAK_REPORTERS": LEAK_REPORTERS, "AGENTCRED_CLUSTER_LEAK_REPORTERS": CLUSTER_LEAK_REPORTERS}
GATEWAY = ("agentcred-gateways", "gateway")  # the gateway the session's operator answers


class OperatorProcess(LocalOperator):
    """`agentcred run` as a child process (devcluster.LocalOperator) for a test: verbose, quick
    status and health-check intervals, logs in a fresh folder the session's leak witness
    reads at cleanup. `kubeconfig` may be set to act as another identity (the chart's
    ServiceAccount, say) before `start`."""

    def __init__(
        self,
        cluster: Cluster,
        *extra_args: str,
        env: dict[str, str] | None = None,
        namespace: str = OPERATOR_NAMESPACE,
        standalone: bool = True,
        kubeconfig: Path | None = None,
        volume_refresh_delay: str = "0",
    ) -> None:
        super().__init__(
            kubeconfig or cluster.kubeconfig,
            Path(tempfile.mkdtemp(prefix="agentcred-operator-")),
            "--verbose",
            *extra_args,
            namespace=namespace,
            standalone=standalone,
            env={"AGENTCRED_STATUS_INTERVAL": "0.5", "AGENTCRED_HEALTH_CHECK_INTERVAL": "1", **(env or {})},
            volume_refresh_delay=volume_refresh_delay,
        )
        self.cluster = cluster
        self.log_dir = self.workdir
        self.starts = 0

    def start(self, wait: bool = True, timeout: float = 60) -> OperatorProcess:
        ensure_namespace(self.cluster, self.namespace)
        self.starts += 1
        super().start(wait=False)
        if wait:
            self.wait_ready(timeout)
        return self

    def ca_file(self) -> str:
        """The CA of the operator's serving certificate (shared by webhook and endpoints), from
        the ConfigMap the operator publishes it in for verifiers."""
        path = self.log_dir / "ca.crt"
        bundle = self.cluster.core.read_namespaced_config_map("agentcred-ca-bundle", self.namespace)
        path.write_text(bundle.data["ca.crt"])
        return str(path)

    def wait_ready(self, timeout: float = 60) -> float:
        """Ready as the operator itself reports it on /readyz, within the test's patience."""
        started = time.monotonic()

        def ready() -> bool:
            self.assert_alive()
            return self.health("/readyz")[0] == 200

        wait_for(ready, timeout=timeout, interval=0.2, what="the operator's /readyz")
        return time.monotonic() - started

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The /metrics samples as {(name, sorted labels): value}."""
        from prometheus_client.parser import text_string_to_metric_families

        samples = {}
        for family in text_string_to_metric_families(self.health("/metrics")[1]):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line.strip()]

    def pause(self) -> None:
        """SIGSTOP: frozen mid-flight, as a process starved or a VM suspended would be."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def audit_text(self) -> str:
        return self.audit_path.read_text(errors="replace") if self.audit_path.exists() else ""

    # Set by the session's leak witness: it keeps every operator's output (log, audit log, the
    # metrics it served last) for the scan at the session's end.
    on_cleanup: Callable[[str], None] | None = None

    def cleanup(self) -> None:
        metrics = self.health("/metrics")[1] if self.alive() else ""
        self.stop()
        if OperatorProcess.on_cleanup is not None:
            OperatorProcess.on_cleanup(self.logs() + self.audit_text() + metrics)
        shutil.rmtree(self.log_dir, ignore_errors=True)


def token_kubeconfig(cluster: Cluster, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig that acts as a ServiceAccount (a TokenRequest token), nothing more."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    token = cluster.core.create_namespaced_service_account_token(
        service_account, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": service_account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def opt_in_check_refuses(cluster: Cluster, namespace: str = "default") -> bool:
    """Does the opt-in check refuse, right now, a pod naming credentials without the label
    (a server-side dry run)? Admission policies take effect a moment after they change."""
    probe = {
        "metadata": {"name": "opt-in-probe", "annotations": {"agentcred.dev/credentials": "x"}},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }
    try:
        cluster.core.create_namespaced_pod(namespace, probe, dry_run="All")
    except ApiException as error:
        if error.status in (403, 422):
            return True
        raise
    return False


@contextlib.contextmanager
def operator_paused(operator: OperatorProcess) -> Iterator[None]:
    """Stop the session's operator and unregister its webhook and its opt-in check while a test
    runs its own (or none: as before the first install)."""
    operator.stop()
    admission = operator.cluster.admission
    for remove in (
        lambda: admission.delete_mutating_webhook_configuration("agentcred.dev"),
        lambda: admission.delete_validating_admission_policy_binding("agentcred.dev-opt-in"),
        lambda: admission.delete_validating_admission_policy("agentcred.dev-opt-in"),
    ):
        try:
            remove()
        except ApiException as error:
            if error.status != 404:
                raise
    wait_for(lambda: not opt_in_check_refuses(operator.cluster), what="the opt-in check gone")
    try:
        yield
    finally:
        operator.start()
