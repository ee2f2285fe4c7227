"""Helpers the tests share: reaching a cluster, running the operator as a real process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agentcred.devcluster import polling
from agentcred.devcluster.install import apply_crd, apply_policy, permissive_policy

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class OperatorProcess:
    """`agentcred run` as a child process, with its log and audit log captured to files.

    The webhook listens on a free loopback port, and the operator registers it with the
    API server at that URL (the local-development mode of `agentcred run`).
    """

    def __init__(
        self,
        cluster: Cluster,
        *extra_args: str,
        env: dict[str, str] | None = None,
        namespace: str = OPERATOR_NAMESPACE,
        standalone: bool = True,
        kubeconfig: Path | None = None,
    ) -> None:
        self.cluster = cluster
        self.extra_args = extra_args
        self.extra_env = env or {}
        self.namespace = namespace
        self.standalone = standalone
        self.kubeconfig = kubeconfig
        self.log_dir = Path(tempfile.mkdtemp(prefix="agentcred-operator-"))
        self.log_path = self.log_dir / "operator.log"
        self.audit_path = self.log_dir / "audit.log"
        self.webhook_port = free_port()
        self.api_port = free_port()
        self.health_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        url = f"https://127.0.0.1:{self.webhook_port}"
        return [
            sys.executable,
            "-m",
            "agentcred",
            "run",
            "--verbose",
            *(["--standalone"] if self.standalone else []),
            "--namespace",
            self.namespace,
            "--webhook-address",
            "127.0.0.1",
            "--webhook-port",
            str(self.webhook_port),
            "--webhook-url",
            url,
            "--api-address",
            "127.0.0.1",
            "--api-port",
            str(self.api_port),
            "--issuer",
            self.api_url,
            "--health-address",
            "127.0.0.1",
            "--health-port",
            str(self.health_port),
            "--audit-log",
            str(self.audit_path),
            *self.extra_args,
        ]

    def start(self, wait: bool = True) -> OperatorProcess:
        ensure_namespace(self.cluster, self.namespace)
        self.starts += 1
        log = open(self.log_path, "ab")
        env = self.cluster.env(AGENTCRED_STATUS_INTERVAL="0.5", AGENTCRED_HEALTH_CHECK_INTERVAL="1", **self.extra_env)
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def ca_file(self) -> str:
        """The CA of the operator's serving certificate (shared by webhook and endpoints), from
        the ConfigMap the operator publishes it in for verifiers."""
        path = self.log_dir / "ca.crt"
        bundle = self.cluster.core.read_namespaced_config_map("agentcred-ca-bundle", self.namespace)
        path.write_text(bundle.data["ca.crt"])
        return str(path)

    def health(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError as error:
            return 0, str(error)

    def wait_ready(self, timeout: float = 60) -> None:
        """Ready as the operator itself reports it on /readyz (indices warm, servers up)."""

        def ready() -> bool:
            self.assert_alive()
            return self.health("/readyz")[0] == 200

        wait_for(ready, timeout=timeout, interval=0.2, what="the operator's /readyz")

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

    def kill(self) -> None:
        """SIGKILL: the operator gets no chance to clean up."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: frozen mid-flight, as a process starved or a VM suspended would be."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def assert_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"the operator exited; its log:\n{self.logs()[-4000:]}")

    def audit_text(self) -> str:
        return self.audit_path.read_text(errors="replace") if self.audit_path.exists() else ""

    # Set by the session's leak witness: it keeps every operator's output for the final scan.
    on_cleanup: Callable[[OperatorProcess], None] | None = None

    def cleanup(self) -> None:
        self.stop()
        if OperatorProcess.on_cleanup is not None:
            OperatorProcess.on_cleanup(self)
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


@contextlib.contextmanager
def operator_paused(operator: OperatorProcess) -> Iterator[None]:
    """Stop the session's operator and unregister its webhook while a test runs its own."""
    operator.stop()
    try:
        operator.cluster.admission.delete_mutating_webhook_configuration("agentcred.dev")
    except ApiException as error:
        if error.status != 404:
            raise
    try:
        yield
    finally:
        operator.start()
