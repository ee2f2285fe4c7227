"""Start etcd, kube-apiserver and kube-controller-manager on free loopback ports.

The same shape as controller-runtime's envtest, plus the controller manager so the Job
controller, the garbage collector and the ServiceAccount controllers really run.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..platform import pki
from .binaries import ensure_binaries

log = logging.getLogger(__name__)

SERVICE_CIDR = "10.0.0.0/24"
CONTROLLERS = (
    "job-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "ttl-after-finished-controller",
    "clusterrole-aggregation-controller",
    "validatingadmissionpolicy-status-controller",  # type-checks the policies' CEL
)
# With a real node, workloads run as users deploy them (Deployments, their ReplicaSets, the
# disruption budgets' status), and Services get EndpointSlices: the API server calls a webhook
# behind a Service at its endpoints (--enable-aggregator-routing; there is no kube-proxy).
NODE_CONTROLLERS = (
    *CONTROLLERS,
    "deployment-controller",
    "replicaset-controller",
    "disruption-controller",
    "endpointslice-controller",
)
# Proxies would route loopback traffic away from the servers we start.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kubeconfig_yaml(server: str, ca_pem: bytes, client: pki.KeyPair, user: str) -> str:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "agentcred-dev", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}
            ],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate-data": b64(client.cert_pem), "client-key-data": b64(client.key_pem)},
                }
            ],
            "contexts": [{"name": "agentcred-dev", "context": {"cluster": "agentcred-dev", "user": user}}],
            "current-context": "agentcred-dev",
        },
        indent=2,
    )


@dataclass
class ControlPlaneState:
    """What a running control plane is: enough to reach it and to stop it later."""

    workdir: str
    server: str
    kubeconfig: str
    pids: dict[str, int] = field(default_factory=dict)
    owns_workdir: bool = True
    node: dict[str, Any] = field(default_factory=dict)  # a real node's NodeState, if one runs

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> ControlPlaneState:
        return cls(**json.loads(path.read_text()))


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager as child processes.

    Use as a context manager, or `start()` and `stop()`. `detach=True` starts the processes
    in their own session so they outlive this Python process (`agentcred dev up`).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        detach: bool = False,
        service_cidr: str = SERVICE_CIDR,
        controllers: tuple[str, ...] = CONTROLLERS,
    ) -> None:
        self._owns_workdir = workdir is None
        self.controllers = controllers
        # A real node's pods reach the API server at the `kubernetes` Service's address, the
        # first of this range: the node puts it on its own bridge (see node.py).
        self.service_cidr = service_cidr
        self.etcd_url = ""  # once started: its client URL on loopback
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="agentcred-cp-"))
        self.detach = detach
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._argv: dict[str, list[str]] = {}
        self.apiserver_port = 0
        self.state: ControlPlaneState | None = None
        self.timings: dict[str, float] = {}  # seconds each step of `start` took, in order

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def service_ip(self) -> str:
        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> ControlPlaneState:
        step = time.monotonic()

        def took(what: str) -> None:
            nonlocal step
            now = time.monotonic()
            self.timings[what] = now - step
            step = now

        binaries = ensure_binaries()
        took("finding the binaries")
        try:
            self._write_pki()
            took("certificates and keys")
            etcd_url = self.etcd_url = self._start_etcd(binaries["etcd"])
            self._start_apiserver(binaries["kube-apiserver"], etcd_url)
            self._wait_ready(timeout)
            took("etcd and kube-apiserver until ready")
            self._start_controller_manager(binaries["kube-controller-manager"])
            took("kube-controller-manager started")
        except BaseException:
            self.stop()
            raise
        self.state = ControlPlaneState(
            workdir=str(self.workdir),
            server=self.server,
            kubeconfig=str(self.kubeconfig),
            pids={name: process.pid for name, process in self.processes.items()},
            owns_workdir=self._owns_workdir,
        )
        return self.state

    def stop(self) -> None:
        stop_processes({name: p.pid for name, p in self.processes.items()})
        for process in self.processes.values():
            try:
                process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self.processes.clear()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- faults, for tests -------------------------------------------------------------

    def restart(self, name: str, down_for: float = 0.0, timeout: float = 60.0) -> None:
        """Stop one component (SIGTERM), wait `down_for` seconds, start it again the same way."""
        process = self.processes[name]
        stop_processes({name: process.pid})
        process.wait(timeout=15)
        time.sleep(down_for)
        self._spawn(name, self._argv[name])
        if name == "kube-apiserver":
            self._wait_ready(timeout)

    def freeze(self, name: str, seconds: float) -> None:
        """Make a component unresponsive (SIGSTOP) for a while, as a stalled disk or a GC pause would."""
        pid = self.processes[name].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    # -- internals ---------------------------------------------------------------------

    def _write_pki(self) -> None:
        pki_dir = self.workdir / "pki"
        pki_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.apiserver_port = free_port()
        ca = pki.new_ca("agentcred-dev-ca")
        ca.write(pki_dir / "ca.crt", pki_dir / "ca.key")
        serving = pki.issue(
            ca,
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ip_addresses=("127.0.0.1", self.service_ip),
            server=True,
        )
        serving.write(pki_dir / "apiserver.crt", pki_dir / "apiserver.key")
        admin = pki.issue(ca, "agentcred-admin", organizations=("system:masters",), client=True)
        controller_manager = pki.issue(ca, "system:kube-controller-manager", client=True)
        # How the API server proves itself to a kubelet (logs, exec): a kubelet accepts only
        # clients with certificates from this CA, never anonymous ones.
        kubelet_client = pki.issue(ca, "kube-apiserver-kubelet-client", organizations=("system:masters",), client=True)
        kubelet_client.write(pki_dir / "kubelet-client.crt", pki_dir / "kubelet-client.key")
        # ServiceAccount tokens are signed with RSA, the key type every verifier accepts.
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pki.write_private(pki_dir / "sa.key", pki.private_key_pem(sa_key))
        (pki_dir / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.kubeconfig.write_text(kubeconfig_yaml(self.server, ca.cert_pem, admin, "agentcred-admin"))
        self.kubeconfig.chmod(0o600)
        (self.workdir / "controller-manager.kubeconfig").write_text(
            kubeconfig_yaml(self.server, ca.cert_pem, controller_manager, "system:kube-controller-manager")
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        self._argv[name] = argv
        env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
        log_file = open(self.workdir / "logs" / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )
        log_file.close()

    def _start_etcd(self, etcd: Path) -> str:
        client_port, peer_port = free_port(), free_port()
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                str(etcd),
                "--name=agentcred-dev",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=agentcred-dev={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        return client_url

    def _start_apiserver(self, apiserver: Path, etcd_url: str) -> None:
        p = self.workdir / "pki"
        self._spawn(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={p}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--service-account-issuer={self.server}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-cluster-ip-range={self.service_cidr}",
                f"--kubelet-client-certificate={p / 'kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'kubelet-client.key'}",
                # Webhooks and aggregated APIs behind a Service are called at its endpoints:
                # there is no kube-proxy to route a Service's cluster IP.
                "--enable-aggregator-routing=true",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_controller_manager(self, controller_manager: Path) -> None:
        p = self.workdir / "pki"
        kubeconfig = self.workdir / "controller-manager.kubeconfig"
        self._spawn(
            "kube-controller-manager",
            [
                str(controller_manager),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--controllers={','.join(self.controllers)}",
                "--v=1",
            ],
        )

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with code {process.returncode}; see {self.workdir}/logs/{name}.log"
                    )
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", context=context, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as error:
                last_error = str(error)
            time.sleep(0.25)
        raise TimeoutError(f"kube-apiserver not ready after {timeout:.0f}s: {last_error}")


def client_kubeconfig(
    workdir: Path, server: str, user: str, groups: tuple[str, ...] = (), folder: Path | None = None
) -> Path:
    """A kubeconfig for `user` (in `groups`) with a client certificate from the control
    plane's CA in `workdir`: how the node's kubelet and scheduler authenticate, each as
    itself, so the API server's Node authorizer and RBAC bound them as in a real cluster."""
    pki_dir = workdir / "pki"
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unexpected CA key type in {pki_dir / 'ca.key'}")
    ca = pki.KeyPair(x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes()), ca_key)
    pair = pki.issue(ca, user, organizations=groups, client=True)
    path = (folder or workdir) / f"{user.replace(':', '-')}.kubeconfig"
    path.write_text(kubeconfig_yaml(server, ca.cert_pem, pair, user))
    path.chmod(0o600)
    return path


def stop_processes(pids: dict[str, int], grace: float = 10.0) -> list[str]:
    """SIGTERM each process group, SIGKILL whatever is still alive after `grace`, and wait
    until they have gone; returns the names of any still alive after that."""
    for pid in pids.values():
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
        time.sleep(0.1)
    for pid in pids.values():
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace  # SIGKILL cannot be refused; exiting can still take a moment
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
        time.sleep(0.1)
    return [name for name, pid in pids.items() if _alive(pid)]


def ours(pid: int, workdir: str) -> bool:
    """Is `pid` still one of this control plane's processes? Each has its working directory
    on its command line; a pid reused by someone else's process does not (where /proc tells)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc/self/cmdline").exists():
        return _alive(pid)  # no /proc here: the pid is all there is to go by
    try:
        return workdir in cmdline.read_bytes().decode(errors="replace")
    except OSError:
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child (a detached plane stopped by `dev down`): probe it instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited; only its parent has yet to reap it
        return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1][:4]
    except (OSError, IndexError):
        return True
