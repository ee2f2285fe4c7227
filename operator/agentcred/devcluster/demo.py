"""`agentcred demo`: the whole story on a local control plane, in about a minute.

Starts etcd, kube-apiserver and kube-controller-manager on loopback, a real node (kubelet,
kube-scheduler, containerd, runc) and the operator with its admission webhook; applies
examples/quickstart.yaml (a namespace, a ServiceAccount, an AgentCredential and an agent
Job, whose container is swapped for the locally built agent image: no registry is reachable);
the agent's container reads its mounted value and prints its fingerprint (never the value),
the demo shows the token's claims and the agent narrowing it at the token service (OAuth 2.0
JWT bearer) and a refusal; the agent exits 0, the Job completes through the real kubelet and
Job controller, and the value is revoked; then the audit trail. On a host that cannot run a
node (not root, no cgroups...) it says why and uses the scheduler/kubelet stand-in instead.
Everything started is stopped at the end, or with `keep` left running as the local control
plane named "demo" (`agentcred dev down --name demo` stops it). Headings are bold only on a
terminal, and never with NO_COLOR set.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, utils

from ..api import labels
from ..api.model import GROUP, PLURAL, VERSION
from .binaries import CONTAINERD_VERSION, KUBERNETES_VERSION, RUNC_VERSION, cache_root, ensure_binaries
from .commands import DEFAULT_COMPLETE_AFTER, start_kubelet
from .controlplane import ControlPlane, free_port
from .install import install_agentcred
from .kubelet import FakeKubelet
from .local_operator import LocalOperator
from .node import NodeUnavailable, RealNode, host_problems, volume_refresh_delay
from .polling import wait_for

EXAMPLE = "quickstart.yaml"
AGENT_WORK = "10s"  # how long the demo's agent works before it exits 0


DEMO_NAME = "demo"  # the kept demo is the local control plane of this name (`dev ... --name demo`)


def _bold() -> bool:
    """Escape codes only for a person at a terminal (https://no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m" if _bold() else f"\n==> {text}", flush=True)


def _example_path(name: str = EXAMPLE) -> Path:
    candidates = [Path.cwd() / "examples" / name, Path(__file__).resolve().parents[2] / "examples" / name]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"examples/{name} not found; run the demo from the repository root")


def _webhook_listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def run_demo(keep: bool = False, mcp: bool = False, stand_in: bool = False) -> int:
    ensure_binaries()
    if mcp:
        # examples/mcp's server and agent run on this host with an agent pod's identity: no node.
        with tempfile.TemporaryDirectory(prefix="agentcred-demo-") as workdir, ControlPlane() as plane:
            return _run(plane, None, Path(workdir), keep=False, story=_mcp_story).get("exit", 0)
    if not stand_in:
        problems = host_problems()
        if problems:
            print("this host cannot run a real node: " + "; ".join(problems), file=sys.stderr)
            print("the demo uses the scheduler/kubelet stand-in instead (no container runs)", file=sys.stderr)
            stand_in = True
    if not keep:
        with tempfile.TemporaryDirectory(prefix="agentcred-demo-") as workdir:
            try:
                plane, node = _start_cluster(Path(workdir) / "cluster", stand_in, detach=False)
            except NodeUnavailable as error:
                print(f"{error}\nthe demo uses the scheduler/kubelet stand-in instead", file=sys.stderr)
                plane, node = _start_cluster(Path(workdir) / "cluster", True, detach=False)
            try:
                _run(plane, node, Path(workdir), keep=False)
            finally:
                if node is not None:
                    node.stop()
                plane.stop()
            return 0
    folder = cache_root() / "dev" / DEMO_NAME
    if (folder / "state.json").exists():
        print(f"a kept demo is still up: `agentcred dev down --name {DEMO_NAME}` first", file=sys.stderr)
        return 1
    plane, node = _start_cluster(folder / "cluster", stand_in, detach=True)
    assert plane.state is not None
    state = plane.state
    try:
        state.pids.update(_run(plane, node, plane.workdir, keep=True))
    except BaseException:
        if node is not None:
            node.stop()
        plane.stop()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if node is not None and node.state is not None:
        state.node = node.state.to_dict()
    state.save(folder / "state.json")
    kept = "a real node" if node is not None else "the kubelet stand-in"
    _say(f"left running (--keep): the local control plane {DEMO_NAME!r}, the operator and {kept}")
    print(f"  operator log: {plane.workdir / 'operator.log'}, audit log: {plane.workdir / 'audit.log'}")
    print(f"  stop it all:  agentcred dev down --name {DEMO_NAME}")
    print(f"export KUBECONFIG={state.kubeconfig}")
    return 0


def _start_cluster(workdir: Path, stand_in: bool, detach: bool) -> tuple[ControlPlane, RealNode | None]:
    """The control plane, and a real node beside it unless `stand_in`."""
    node = None if stand_in else RealNode(workdir)
    options = node.prepare().plane_options if node is not None else {}
    plane = ControlPlane(workdir=workdir, detach=detach, **options)
    try:
        plane.start()
        if node is not None:
            node.start(plane.server, plane.kubeconfig)
    except BaseException:
        if node is not None:
            node.stop()
        plane.stop()
        raise
    return plane, node


Story = Callable[[client.ApiClient, str, Path], int]


def _run(
    plane: ControlPlane, node: RealNode | None, workdir: Path, keep: bool, story: Story | None = None
) -> dict[str, int]:
    """The story (the quickstart's, unless another is given: its exit code is returned as
    "exit"); with `keep`, the operator (and with no real node, a kubelet stand-in) are left
    running, detached (their pids returned)."""
    _say(f"local control plane up at {plane.server} (kubeconfig {plane.kubeconfig})")
    if node is not None and node.state is not None:
        print(
            f"  a real node {node.state.name!r}: kubelet and kube-scheduler v{KUBERNETES_VERSION}, containerd "
            f"v{CONTAINERD_VERSION}, runc v{RUNC_VERSION}"
        )
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    install_agentcred(api)

    delay = volume_refresh_delay(node.sync_frequency) if node is not None else "0"
    operator = LocalOperator(plane.kubeconfig, workdir, detached=keep, volume_refresh_delay=delay).start(wait=False)
    kubelet = FakeKubelet(api).start() if node is None else None
    kept: dict[str, int] = {}
    try:
        wait_for(timeout=60, what="the operator's webhook", predicate=lambda: _webhook_listening(operator.webhook_port))
        _say(f"operator running (pid {operator.pid()}); its webhook is registered for opted-in pods")
        if story is not None:
            code = story(api, operator.api_url, workdir)
            _say("done: stopping the operator, the kubelet stand-in and the control plane")
            return {"exit": code}

        _say(f"applying examples/{EXAMPLE}: namespace, ServiceAccount, AgentCredential, agent Job")
        custom = client.CustomObjectsApi(api)
        for document in yaml.safe_load_all(_example_path().read_text()):
            name = document["metadata"]["name"]
            if document["kind"] == "AgentCredential":
                namespace = document["metadata"]["namespace"]
                custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)
                # Ready in status means the operator has it in memory for the webhook.
                wait_for(
                    timeout=60,
                    what="the credential to be Ready",
                    predicate=functools.partial(_ready, custom, namespace, name),
                )
            else:
                if document["kind"] == "Job" and node is not None:
                    _local_agent(document, node)
                utils.create_from_dict(api, document)
            print(f"  created {document['kind']} {name}")

        pod = wait_for(
            timeout=60,
            what="the agent's pod to run",
            predicate=lambda: next(
                (
                    p
                    for p in core.list_namespaced_pod("agents", label_selector="job-name=research-task").items
                    if p.status.phase == "Running"
                ),
                None,
            ),
        )
        scheduled = f" on node {pod.spec.node_name}" if node is not None else ""
        binding = pod.metadata.annotations[labels.BINDING_ANNOTATION]
        secret = core.read_namespaced_secret(labels.secret_name(binding), "agents")
        token = base64.b64decode(secret.data[labels.value_key("research-llm")])
        mount = next(m for m in pod.spec.containers[0].volume_mounts if m.name.startswith("agentcred-"))
        _say(f"pod {pod.metadata.name} was held by a scheduling gate until its Secret existed, then ran{scheduled}")
        print(f"  file:        {mount.mount_path}/{labels.VALUE_FILE} (read-only, from Secret {secret.metadata.name})")
        recorded = json.loads(secret.metadata.annotations[labels.STATE_ANNOTATION])["values"]["research-llm"]
        print(f"  fingerprint: {recorded['fingerprint']} (keyed: what audit lines and trace name)")
        payload = token.split(b".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
        print("  claims:")
        for name, value in claims.items():
            print(f"    {name:<10} {json.dumps(value, separators=(', ', ': '))}")

        _narrow(core, pod, operator.api_url, workdir)

        if node is None:
            _say("the agent finishes: its Job completes")
            started = time.monotonic()
            assert kubelet is not None
            kubelet.succeed("agents", pod.metadata.name)
        else:
            _say(f"the agent finishes its work ({AGENT_WORK}) and exits 0: the real Job controller completes its Job")
            wait_for(
                timeout=120,
                what="the agent's container to exit",
                predicate=lambda: (
                    core.read_namespaced_pod(pod.metadata.name, "agents").status.phase in ("Succeeded", "Failed")
                ),
            )
            started = time.monotonic()
        wait_for(
            timeout=60,
            what="the Secret to be revoked",
            predicate=lambda: (
                not core.list_namespaced_secret("agents", field_selector=f"metadata.name={secret.metadata.name}").items
            ),
        )
        revoked_after = time.monotonic() - started
        wait_for(
            timeout=60,
            what="the Job to complete",
            predicate=lambda: any(
                c.type == "Complete" and c.status == "True"
                for c in batch.read_namespaced_job("research-task", "agents").status.conditions or []
            ),
        )
        if node is not None:
            print("  the agent's own output (kubectl logs job/research-task):")
            for line in core.read_namespaced_pod_log(pod.metadata.name, "agents").splitlines():
                print(f"    {line}")
            sha256 = hashlib.sha256(token).hexdigest()[:16]
            print(f"  the Secret's value had sha256 fingerprint {sha256}: the agent read exactly that")
        print(
            f"  Job research-task Complete; Secret {secret.metadata.name} deleted "
            f"{revoked_after * 1000:.0f} ms after the pod succeeded"
        )

        _say("the audit log: one line per issue and revoke, a fingerprint, never the value")
        time.sleep(0.5)
        for line in operator.audit_path.read_text().splitlines():
            print("  " + line)
        if keep:
            kept = {"operator": operator.pid()}
        else:
            stopped = "the kubelet stand-in" if node is None else "the node (every container, mount and cgroup)"
            _say(f"done: stopping the operator, {stopped} and the control plane")
        return kept
    finally:
        if kubelet is not None:
            kubelet.stop()
        if not kept:
            operator.stop(timeout=15)
        elif node is None:
            # The stand-in goes on as its own process, so Jobs applied now run and complete too.
            kept["kubelet"] = start_kubelet(workdir, str(plane.kubeconfig), DEFAULT_COMPLETE_AFTER)


def _local_agent(job: dict[str, Any], node: RealNode) -> None:
    """The example's container, swapped for the locally built agent: it reads its value from
    the file the projection's envVar names, prints its fingerprint, works, exits 0."""
    assert node.state is not None
    container = job["spec"]["template"]["spec"]["containers"][0]
    container.update(
        image=node.state.images["probe"],
        imagePullPolicy="Never",
        command=["/probe"],
        args=["agent", "-work", AGENT_WORK, "$(LLM_TOKEN_FILE)"],
    )
    print(f"  (the Job's container runs {container['image']}, built here: no registry is reachable)")


def _narrow(core: client.CoreV1Api, pod: client.V1Pod, issuer: str, workdir: Path) -> None:
    """What the agent does with the identity the webhook mounted for it: a JWT bearer grant
    for one intent at the token endpoint. The demo makes the call from here, with the same
    pod-bound token the kubelet writes into the pod, asked of the API server (the token
    service listens on this host's loopback, which the pod's network does not reach)."""
    env = {e.name: e.value for e in pod.spec.containers[0].env or []}
    _say(f"the agent asks the token service for one intent ({env['AGENTCRED_TOKEN_ENDPOINT']})")
    print(f"  its identity: {env['AGENTCRED_IDENTITY_TOKEN_FILE']} (audience agentcred), CA {env['AGENTCRED_CA_FILE']}")
    bound = {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid}
    spec = {"audiences": ["agentcred"], "expirationSeconds": 600, "boundObjectRef": bound}
    identity = core.create_namespaced_service_account_token(
        pod.spec.service_account_name, "agents", {"spec": spec}
    ).status.token
    ca = workdir / "ca.crt"
    ca.write_text(core.read_namespaced_config_map("agentcred-ca-bundle", "agentcred").data[labels.CA_KEY])
    context = ssl.create_default_context(cafile=str(ca))
    for resource in ("repo:acme/app", "repo:other/secrets"):
        form = {
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": identity,
            "resource": "https://llm-gateway.agents.svc",
            "scope": f"tool:web-search action:read resource:{resource}",
        }
        request = urllib.request.Request(f"{issuer}/oauth2/token", data=urllib.parse.urlencode(form).encode())
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                granted = json.loads(response.read())
            print(f"  {form['scope']!r}: 200, a token for {granted['expires_in']} s, scope {granted['scope']!r}")
        except urllib.error.HTTPError as error:
            refused = json.loads(error.read())
            print(f"  {form['scope']!r}: {error.code} {refused['error']}: {refused['error_description']}")


def _ready(custom: client.CustomObjectsApi, namespace: str, name: str) -> bool:
    body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _mcp_story(api: client.ApiClient, issuer: str, workdir: Path) -> int:
    """examples/mcp end to end: its server on loopback, its AgentCredential pointed there, an
    agent pod admitted for it, and agent.py run with what the webhook gives that pod (its
    identity token -- asked of the API server as the kubelet would, bound to the pod -- the
    issuer and agentcred's CA). Prints what the agent prints, then the audit lines."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    folder = _example_path("mcp/deploy.yaml").parent
    documents = [d for d in yaml.safe_load_all((folder / "deploy.yaml").read_text()) if d]
    # deploy.yaml also has the same agent with a DPoP-bound credential; the demo runs the first.
    [credential] = [d for d in documents if d["kind"] == "AgentCredential" and d["metadata"]["name"] == "docs-mcp"]
    [job] = [d for d in documents if d["kind"] == "Job" and d["metadata"]["name"] == "docs-agent"]
    namespace = credential["metadata"]["namespace"]

    ca = workdir / "agentcred-ca.crt"
    ca.write_text(
        wait_for(
            timeout=60,
            what="the operator's CA published",
            predicate=lambda: (core.read_namespaced_config_map("agentcred-ca-bundle", "agentcred").data or {}).get(
                labels.CA_KEY
            ),
        )
    )
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    _say(f"examples/mcp: the docs MCP server on {resource} (official mcp SDK; it trusts only agentcred's tokens)")
    server_log = open(workdir / "mcp-server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, str(folder / "server.py"), "--issuer", issuer, "--cafile", str(ca)]
        + ["--resource", resource, "--namespace", namespace, "--host", "127.0.0.1", "--port", str(port)],
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(timeout=60, what="the MCP server", predicate=lambda: _answers(resource, server))
        for document in documents:
            if document["kind"] in ("Namespace", "ServiceAccount"):
                try:
                    utils.create_from_dict(api, document)
                except utils.FailToCreateError:
                    pass  # there already
        credential["spec"]["source"]["jwt"]["audiences"] = [resource]  # the server as it runs here
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, credential)
        name = credential["metadata"]["name"]
        wait_for(timeout=60, what="the credential Ready", predicate=functools.partial(_ready, custom, namespace, name))
        print(f"  AgentCredential {name}: audience {resource}, scope {json.dumps(credential['spec']['scope'])}")

        template = job["spec"]["template"]
        pod = {"metadata": {"name": job["metadata"]["name"], **template["metadata"]}, "spec": template["spec"]}
        core.create_namespaced_pod(namespace, pod)
        running = wait_for(
            timeout=60,
            what="the agent's pod admitted and given its credential",
            predicate=lambda: _running(core, namespace, pod["metadata"]["name"]),
        )
        _say(f"the agent: pod {running.metadata.name}, ServiceAccount {running.spec.service_account_name}")
        bound = {"apiVersion": "v1", "kind": "Pod", "name": running.metadata.name, "uid": running.metadata.uid}
        spec = {"audiences": [labels.SERVICE_ACCOUNT_AUDIENCE], "expirationSeconds": 600, "boundObjectRef": bound}
        identity = core.create_namespaced_service_account_token(
            running.spec.service_account_name, namespace, {"spec": spec}
        ).status.token
        token_file = workdir / "identity-token"
        token_file.write_text(identity)
        token_file.chmod(0o600)
        print("  it holds only its pod's identity (as the kubelet projects it); it runs agent.py:")
        env = {
            **os.environ,
            "MCP_SERVER_URL": resource,
            "AGENTCRED_ISSUER": issuer,
            "AGENTCRED_IDENTITY_TOKEN_FILE": str(token_file),
            "AGENTCRED_CA_FILE": str(ca),
        }
        agent = subprocess.run(
            [sys.executable, str(folder / "agent.py")], env=env, capture_output=True, text=True, timeout=300
        )
        print()
        for line in agent.stdout.splitlines():
            print(line)
        if agent.returncode != 0:
            print(agent.stderr[-3000:], file=sys.stderr)
        _say("the operator's audit log: each token it issued, and the step-up it refused")
        time.sleep(0.5)
        for line in (workdir / "audit.log").read_text().splitlines():
            if json.loads(line).get("action") in ("exchange", "deny"):
                print("  " + line)
        return int(agent.returncode)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()


def _answers(resource: str, server: subprocess.Popen[bytes]) -> bool:
    if server.poll() is not None:
        raise RuntimeError(f"the MCP server exited ({server.returncode})")
    try:
        with urllib.request.urlopen(resource.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"), timeout=5):
            return True
    except OSError:
        return False


def _running(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase == "Running" else None
