"""`agentcred run` as a child process on loopback: the one way the demo, the tests and the
benchmark launch the operator against a local control plane.

Every port is a free loopback port; the webhook registers itself with the API server at its
loopback URL (the local-development mode of `agentcred run`); the log and the audit log go to
files in `workdir`. Ready means the operator's own `/readyz` answers 200.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .controlplane import free_port


class OperatorExited(RuntimeError):
    """The operator process ended before it was ready (its log's tail in the message)."""


class LocalOperator:
    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        *extra_args: str,
        namespace: str = "agentcred",
        standalone: bool = True,
        env: dict[str, str] | None = None,
        detached: bool = True,
        volume_refresh_delay: str = "0",
    ) -> None:
        self.kubeconfig, self.workdir, self.extra_args = kubeconfig, workdir, extra_args
        self.namespace, self.standalone, self.extra_env = namespace, standalone, dict(env or {})
        self.detached = detached  # its own process group: it can outlive us, and stops as a group
        # How late a kubelet may deliver a renewed value (rules.delivery): 0 on the stand-in,
        # where no kubelet delivers; on a real node, what its configuration allows.
        self.volume_refresh_delay = volume_refresh_delay
        self.log_path, self.audit_path = workdir / "operator.log", workdir / "audit.log"
        self.webhook_port, self.api_port, self.health_port = free_port(), free_port(), free_port()
        self.grpc_port = free_port()  # gateways' Envoy ext_authz calls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "agentcred",
            "run",
            *(["--standalone"] if self.standalone else []),
            "--namespace",
            self.namespace,
            "--webhook-address",
            "127.0.0.1",
            "--webhook-port",
            str(self.webhook_port),
            "--webhook-url",
            self.webhook_url,
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
            "--gateway-grpc-port",
            str(self.grpc_port),
            "--volume-refresh-delay",
            self.volume_refresh_delay,
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        package_root = str(Path(__file__).resolve().parents[2])  # operator/, for a checkout not installed
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        loopback = {"AGENTCRED_GATEWAY_GRPC_ADDRESS": "127.0.0.1"}  # the flags bind the other ports
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONPATH": path, **loopback, **self.extra_env}

    def start(self, wait: bool = True, timeout: float = 120.0) -> LocalOperator:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                start_new_session=self.detached,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def health(self, path: str) -> tuple[int, str]:
        """The status and body of a health endpoint (`/readyz`, `/healthz`, `/metrics`); 0 if
        nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError as error:
            return 0, str(error)

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until /readyz answers 200 (every index listed, endpoints up)."""
        started = time.monotonic()
        while self.health("/readyz")[0] != 200:
            self.assert_alive()
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"the operator was not ready {timeout:.0f} s after start:\n{self.log_tail()}")
            time.sleep(0.1)
        return time.monotonic() - started

    def pid(self) -> int:
        assert self.process is not None, "started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def assert_alive(self) -> None:
        if not self.alive():
            code = self.process.returncode if self.process else None
            raise OperatorExited(f"the operator exited ({code}); its log:\n{self.log_tail()}")

    def signal(self, number: signal.Signals) -> None:
        if self.process is not None and self.alive():
            if self.detached:
                os.killpg(self.process.pid, number)
            else:
                self.process.send_signal(number)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean shutdown: the lease released, status flushed), SIGKILL if it hangs."""
        if not self.alive():
            return
        assert self.process is not None
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the operator gets no chance to clean up."""
        if self.process is not None and self.alive():
            self.signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])
