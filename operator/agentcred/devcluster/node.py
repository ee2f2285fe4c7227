"""A real node beside the local control plane: containerd, runc, a kubelet and kube-scheduler
(all built from Go modules, see `binaries`), running pods from images written locally.

Everything lives under one folder (`<control plane workdir>/node`): configuration, state,
sockets, logs, pod volumes and container root filesystems. What a node cannot keep there is
named for this node alone, so two checkouts' clusters do not collide: its cgroup subtree
(`/agentcred-<id>`), its bridge (`acbr<id>`) and subnet (a free `10.88.N.0/24`), and a short
path `/run/agentcred/<id>` where its `run` folder is bind-mounted: its sockets and the
kubelet's root are reached there, because a unix socket path must stay under 108 bytes
(containerd's shim sockets are 64 characters long by themselves). A bind mount, not a
symlink: the kubelet finds its root among the mount points by path, and through a symlink it
would mount its root again at every restart, hiding the pods' volumes from itself (renewed
values then never reach running containers). `teardown` stops every process, unmounts
everything, removes the cgroups, the bridge and the mount point, and what the kubelet and CNI
write to fixed paths on this node's behalf.

Pods without `hostNetwork` are attached to the node's bridge. The bridge is no gateway: pods
reach the host and each other, nothing beyond (no forwarding, no masquerading; the host's
`ip_forward` is left as it is). The host's end of the bridge holds the first address of the
cluster's Service range, the `kubernetes` Service's cluster IP, where a small relay forwards
to the API server on loopback; so in-cluster clients work without kube-proxy.

Three things this machine kind needs, each found the hard way (see the project's recipe):
containerd clamps `oom_score_adj` (no CAP_SYS_RESOURCE here); runc is built with seccomp (the
kubelet always asks for RuntimeDefault on the sandbox); the `not-ready` taint the kubelet
registers with is lifted once the node is Ready (no node-lifecycle controller runs).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .binaries import ensure_node_binaries, missing_build_tools, node_components
from .controlplane import NODE_CONTROLLERS, client_kubeconfig, free_port, ours, stop_processes
from .images import ProbeImages, probe_images
from .polling import wait_for

log = logging.getLogger(__name__)

CGROUP_MOUNT = Path("/sys/fs/cgroup")
RUN_LINKS = Path("/run/agentcred")  # short links to each node's socket folder
POD_SUBNETS = ipaddress.ip_network("10.88.0.0/16")  # each node takes a free /24 of it
# Where the kubelet and CNI write on a node's behalf, whatever they are told (constants in
# their code); teardown removes this node's entries and the folders once no node needs them.
KUBELET_FIXED_ROOT = Path("/var/lib/kubelet")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
CNI_CACHE = Path("/var/lib/cni")
# Kubelet settings that bound how late a Secret's change reaches a container: the volume is
# rewritten at the pod's next sync, every syncFrequency plus up to half of it again (jitter).
DEV_SYNC_FREQUENCY = "10s"
KUBELET_DEFAULT_SYNC_FREQUENCY = "1m"


def volume_refresh_delay(sync_frequency: str) -> str:
    """What to tell operators of this node (`agentcred run --volume-refresh-delay`): the
    longest a Secret's change can wait for the pod's next sync (1.5 x syncFrequency), plus 5s."""
    amount, unit = int(sync_frequency[:-1]), sync_frequency[-1]
    return f"{int(amount * {'s': 1, 'm': 60}[unit] * 1.5) + 5}s"


class NodeUnavailable(RuntimeError):
    """This host cannot run a real node; the message says what is missing and what to do."""


def host_problems() -> list[str]:
    """What this host lacks to run a real node (empty when it can), each said plainly."""
    problems = []
    if sys.platform != "linux":
        return [f"a real node needs Linux (this is {sys.platform})"]
    if os.geteuid() != 0:
        problems.append("a real node needs root (containerd and runc mount filesystems and make cgroups)")
    if not _cgroup_hierarchies():
        problems.append(f"no cgroup filesystem is mounted under {CGROUP_MOUNT} (neither cgroup v1 nor v2)")
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" not in filesystems:
        problems.append("the kernel has no overlay filesystem (containerd's snapshotter needs it): modprobe overlay")
    if ctypes.util.find_library("seccomp") is None:
        problems.append("libseccomp is not installed (runc needs it): apt-get install -y libseccomp-dev")
    if shutil.which("ip") is None:
        problems.append("the `ip` command is missing (the pod bridge needs it): apt-get install -y iproute2")
    if shutil.which("mount") is None:
        problems.append("the `mount` command is missing (the kubelet mounts pod volumes with it)")
    for component in node_components():
        if not component.is_built():
            problems += [f"{missing} (to build {component.name})" for missing in missing_build_tools(component)]
    return list(dict.fromkeys(problems))


def _cgroup_hierarchies() -> list[Path]:
    """Every cgroup filesystem mounted under /sys/fs/cgroup (v1 controllers, and cgroup2)."""
    found = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            before, _, after = line.partition(" - ")
            fstype = after.split()[0] if after else ""
            mount_point = Path(_unescape(before.split()[4]))
            if fstype in ("cgroup", "cgroup2") and CGROUP_MOUNT in (mount_point, *mount_point.parents):
                found.append(mount_point)
    except OSError:
        pass
    return found


def _unescape(path: str) -> str:
    """mountinfo writes spaces, tabs, newlines and backslashes as octal escapes."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(escaped, plain)
    return path


def node_name() -> str:
    """The machine's host name when it resolves to loopback (the API server reaches a kubelet
    through the node's Hostname address, for logs and exec), else `localhost`."""
    host = socket.gethostname().lower()
    try:
        if ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
            return host
    except (OSError, ValueError):
        pass
    return "localhost"


@dataclass
class NodeNetwork:
    bridge: str
    subnet: str  # the pods' /24
    gateway: str  # the host's address on the bridge = the `kubernetes` Service's cluster IP

    @property
    def service_cidr(self) -> str:
        """The cluster's Service range: the first quarter of the pod subnet (pods get the rest)."""
        return str(next(ipaddress.ip_network(self.subnet).subnets(new_prefix=26)))

    @property
    def plane_options(self) -> dict[str, Any]:
        """What the control plane beside this node is started with (ControlPlane's keywords)."""
        return {"service_cidr": self.service_cidr, "controllers": NODE_CONTROLLERS}

    @property
    def pod_range(self) -> tuple[str, str]:
        hosts = list(ipaddress.ip_network(self.subnet).hosts())
        return str(hosts[64]), str(hosts[-1])


@dataclass
class NodeState:
    """What a running node is: enough to reach it, and to tear it down from another process."""

    folder: str
    name: str
    node_id: str
    network: NodeNetwork
    cgroup_root: str
    run_link: str
    sync_frequency: str
    pids: dict[str, int] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # role -> image name
    fixed_paths_created: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeState:
        return cls(**{**data, "network": NodeNetwork(**data["network"])})


def _node_id(folder: Path) -> str:
    return hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]


@contextlib.contextmanager
def _host_lock() -> Any:
    """One node at a time picks a subnet and claims its bridge."""
    RUN_LINKS.mkdir(parents=True, exist_ok=True)
    with open(RUN_LINKS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _used_networks() -> list[ipaddress.IPv4Network]:
    used = []
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        destination = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if destination not in ("default", "local", "broadcast", "unreachable"):
                used.append(ipaddress.ip_network(destination, strict=False))
    return [network for network in used if isinstance(network, ipaddress.IPv4Network)]


def claim_network(node_id: str) -> NodeNetwork:
    """A free /24 of 10.88.0.0/16 and this node's bridge on it, holding the gateway address."""
    bridge = f"acbr{node_id}"
    with _host_lock():
        existing = _ip("-4", "-o", "addr", "show", "dev", bridge, check=False)
        if existing.returncode == 0 and "inet " in existing.stdout:
            address = ipaddress.ip_interface(existing.stdout.split("inet ")[1].split()[0])
            return NodeNetwork(bridge, str(address.network), str(address.ip))
        used = _used_networks()
        for subnet in POD_SUBNETS.subnets(new_prefix=24):
            if not any(subnet.overlaps(network) for network in used):
                break
        else:
            raise NodeUnavailable(f"no free /24 left in {POD_SUBNETS} for the pod bridge")
        gateway = next(subnet.hosts())
        _ip("link", "add", "name", bridge, "type", "bridge")
        _ip("addr", "add", f"{gateway}/{subnet.prefixlen}", "dev", bridge)
        _ip("link", "set", bridge, "up")
        return NodeNetwork(bridge, str(subnet), str(gateway))


class RealNode:
    """containerd + runc + kubelet + kube-scheduler for the control plane in `workdir`.

    `prepare()` claims the network (before the control plane starts: its Service range is
    the node's), `start()` starts the node and returns when its Node is Ready, `stop()` (or
    `teardown(state)` from another process) removes every trace of it.
    """

    def __init__(self, workdir: Path, *, sync_frequency: str = DEV_SYNC_FREQUENCY) -> None:
        self.workdir = Path(workdir)
        self.folder = self.workdir / "node"
        self.node_id = _node_id(self.folder)
        self.sync_frequency = sync_frequency
        self.state: NodeState | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._argv: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.timings: dict[str, float] = {}
        self.binaries: dict[str, Path] = {}
        self.images: ProbeImages | None = None

    # -- paths -------------------------------------------------------------------------

    @property
    def run_link(self) -> Path:
        return RUN_LINKS / self.node_id

    @property
    def socket(self) -> Path:
        return self.run_link / "containerd.sock"

    @property
    def cgroup_root(self) -> str:
        return f"agentcred-{self.node_id}"

    @property
    def csi_operator_dir(self) -> Path:
        """What agentcred's CSI node plugin reads to reach the operator (`csi_plugin.link_operator`)."""
        return self.folder / "csi-operator"

    @property
    def kubelet_root(self) -> Path:
        """The kubelet's --root-dir, at the short path: it makes unix sockets in it
        (pod-resources, plugin registration), whose paths must stay under 108 bytes. The
        files are in `<folder>/run/kubelet`."""
        return self.run_link / "kubelet"

    def prepare(self) -> NodeNetwork:
        """Check the host, build what is missing, claim the network. Raises NodeUnavailable
        with what is missing when the host cannot run a node."""
        problems = host_problems()
        if problems:
            raise NodeUnavailable(
                "this host cannot run a real node:\n  - "
                + "\n  - ".join(problems)
                + "\nuse the stand-in instead: `agentcred dev up --stand-in` (pods are bound and given phases, no"
                " container runs)"
            )
        step = time.monotonic()
        try:
            self.binaries = ensure_node_binaries()
        except (RuntimeError, subprocess.CalledProcessError) as error:
            raise NodeUnavailable(f"could not build the node's binaries: {error}") from error
        self.images = probe_images()
        self.timings["node binaries and images (built or found in the cache)"] = time.monotonic() - step
        self.folder.mkdir(parents=True, exist_ok=True)
        network = claim_network(self.node_id)
        self.state = NodeState(
            folder=str(self.folder),
            name=node_name(),
            node_id=self.node_id,
            network=network,
            cgroup_root=self.cgroup_root,
            run_link=str(self.run_link),
            sync_frequency=self.sync_frequency,
            images={"probe": self.images.probe, "pause": self.images.pause},
        )
        return network

    def start(self, server: str, admin_kubeconfig: Path, timeout: float = 120.0) -> NodeState:
        if self.state is None:
            self.prepare()
        assert self.state is not None and self.images is not None
        try:
            self._start(server, admin_kubeconfig, timeout)
        except BaseException:
            self.stop()
            raise
        return self.state

    def _start(self, server: str, admin_kubeconfig: Path, timeout: float) -> None:
        assert self.state is not None and self.images is not None
        step = time.monotonic()

        def took(what: str) -> None:
            nonlocal step
            now = time.monotonic()
            self.timings[what] = now - step
            step = now

        for sub in ("logs", "run/kubelet", "containerd", "cni/conf", "cni/ipam", "pod-logs"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        with _host_lock():
            if self.run_link.is_symlink():
                self.run_link.unlink()
            self.run_link.mkdir(parents=True, exist_ok=True)
            if str(self.run_link) not in _mounts_under(str(self.run_link)):
                subprocess.run(["mount", "--bind", str(self.folder / "run"), str(self.run_link)], check=True)
        self._record_fixed_paths()
        self._prepare_cgroups()
        self._write_cni_config()
        self._write_containerd_config()
        self._spawn("containerd", [str(self.binaries["containerd"]), "--config", str(self.folder / "containerd.toml")])
        wait_for(self.socket.exists, timeout=30, what=f"containerd's socket {self.socket}")
        self._ctr("version")
        took("containerd started")
        self._ctr("images", "import", str(self.images.archive))
        took("images imported")
        cluster = self.workdir
        kubelet_user = f"system:node:{self.state.name}"
        kubelet_kubeconfig = client_kubeconfig(cluster, server, kubelet_user, ("system:nodes",), self.folder)
        scheduler_kubeconfig = client_kubeconfig(cluster, server, "system:kube-scheduler", folder=self.folder)
        self._write_kubelet_config(cluster / "pki" / "ca.crt")
        self._spawn(
            "kubelet",
            [
                str(self.binaries["kubelet"]),
                f"--config={self.folder / 'kubelet.yaml'}",
                f"--kubeconfig={kubelet_kubeconfig}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.kubelet_root / 'pki'}",
                f"--hostname-override={self.state.name}",
                "--v=2",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.binaries["kube-scheduler"]),
                f"--kubeconfig={scheduler_kubeconfig}",
                f"--authentication-kubeconfig={scheduler_kubeconfig}",
                f"--authorization-kubeconfig={scheduler_kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=1",
            ],
        )
        api_port = server.rsplit(":", 1)[1]
        self._spawn(
            "apiserver-relay",
            [
                sys.executable,
                "-m",
                "agentcred",
                "dev",
                "relay",
                "--listen",
                f"{self.state.network.gateway}:443",
                "--to",
                f"127.0.0.1:{api_port}",
                "--folder",
                str(self.folder),
            ],
            python=True,
        )
        self._wait_ready(admin_kubeconfig, timeout)
        took("kubelet registered, Node Ready, scheduler started")
        self._start_csi_plugin(admin_kubeconfig)
        took("agentcred's CSI node plugin started")

    # -- pieces of the start -------------------------------------------------------------

    def _start_csi_plugin(self, admin_kubeconfig: Path) -> None:
        """agentcred's CSI node plugin beside the kubelet (as the chart's DaemonSet would run
        it), and its CSIDriver; it reaches the operator once `csi_plugin.link_operator` has
        written where (the operator runs later)."""
        from kubernetes import config

        from .csi_plugin import install_csi_driver

        assert self.state is not None
        install_csi_driver(config.new_client_from_config(config_file=str(admin_kubeconfig)))
        self.csi_operator_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._spawn(
            "csi-node",
            [
                sys.executable,
                "-m",
                "agentcred",
                "csi-node",
                "--node-name",
                self.state.name,
                "--kubelet-dir",
                str(self.kubelet_root),
                "--operator-dir",
                str(self.csi_operator_dir),
            ],
            python=True,
        )

    def _record_fixed_paths(self) -> None:
        assert self.state is not None
        for path in (KUBELET_FIXED_ROOT, CONTAINER_LOG_LINKS, CNI_CACHE):
            if not path.exists() and str(path) not in self.state.fixed_paths_created:
                self.state.fixed_paths_created.append(str(path))

    def _prepare_cgroups(self) -> None:
        """The kubelet puts pods under `cgroupRoot`, which must exist in every hierarchy; with
        cgroup v1 a new cpuset starts with no CPUs and no memory nodes, so it gets its parent's."""
        for hierarchy in _cgroup_hierarchies():
            folder = hierarchy / self.cgroup_root
            folder.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / name).exists() and not (folder / name).read_text().strip():
                    (folder / name).write_text((hierarchy / name).read_text())
            controllers = hierarchy / "cgroup.controllers"
            if hierarchy == CGROUP_MOUNT and controllers.exists():  # cgroup v2 only
                wanted = " ".join(f"+{c}" for c in controllers.read_text().split())
                with contextlib.suppress(OSError):
                    (folder / "cgroup.subtree_control").write_text(wanted)

    def _write_cni_config(self) -> None:
        assert self.state is not None
        network = self.state.network
        start, end = network.pod_range
        config = {
            "cniVersion": "1.0.0",
            "name": f"agentcred-{self.node_id}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": network.bridge,
                    # No gateway: pods reach the host's bridge address and each other, nothing
                    # else, and the host's forwarding setting is left alone.
                    "isGateway": False,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": network.subnet, "rangeStart": start, "rangeEnd": end}]],
                        "dataDir": str(self.folder / "cni" / "ipam"),
                    },
                },
                {"type": "loopback"},
            ],
        }
        (self.folder / "cni" / "conf" / "10-agentcred.conflist").write_text(json.dumps(config, indent=2))

    def _write_containerd_config(self) -> None:
        assert self.images is not None
        folder, run = self.folder / "containerd", self.run_link
        cni_bin = self.binaries["bridge"].parent
        config = f"""version = 4
root = '{folder / "root"}'
state = '{folder / "state"}'
imports = []
disabled_plugins = [
  'io.containerd.snapshotter.v1.btrfs', 'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper', 'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs', 'io.containerd.differ.v1.erofs',
  'io.containerd.tracing.processor.v1.otlp', 'io.containerd.internal.v1.tracing',
]
[debug]
  level = 'info'
[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = '{run / "containerd.sock"}'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '{run / "containerd.sock.ttrpc"}'
  [plugins.'io.containerd.server.v1.debug']
    address = '{run / "debug.sock"}'
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = '{run / "s"}'
  [plugins.'io.containerd.internal.v1.opt']
    path = '{folder / "opt"}'
  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = '{folder / "verifier"}'
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{self.images.pause}'
  [plugins.'io.containerd.cri.v1.runtime']
    netns_mounts_under_state_dir = true
    restrict_oom_score_adj = true
    cdi_spec_dirs = []
    enable_cdi = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '{self.binaries["runc"]}'
          Root = '{folder / "runc"}'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{cni_bin}']
      conf_dir = '{self.folder / "cni" / "conf"}'
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
"""
        (self.folder / "containerd.toml").write_text(config)

    def _write_kubelet_config(self, ca_file: Path) -> None:
        assert self.state is not None
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            # Only clients with a certificate from the cluster's CA (the API server's
            # kubelet-client one, for logs and exec), never anonymous ones.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(ca_file)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "imageServiceEndpoint": f"unix://{self.socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_root}",
            "failSwapOn": False,
            "failCgroupV1": False,
            "podLogsDir": str(self.folder / "pod-logs"),
            "makeIPTablesUtilChains": False,
            "resolvConf": "/etc/resolv.conf",
            "staticPodPath": "",
            "volumePluginDir": str(self.folder / "volume-plugins"),
            "registerNode": True,
            # The images are imported, never pulled: nothing may collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            # A busy CI disk must not evict the tests' pods.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "kubeAPIQPS": 50,
            "kubeAPIBurst": 100,
        }
        if self.sync_frequency != KUBELET_DEFAULT_SYNC_FREQUENCY:
            config["syncFrequency"] = self.sync_frequency
        (self.folder / "kubelet.yaml").write_text(json.dumps(config, indent=2))

    def _spawn(self, name: str, argv: list[str], python: bool = False) -> None:
        assert self.state is not None
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        paths = [str(self.binaries["containerd-shim-runc-v2"].parent), str(self.binaries["runc"].parent)]
        env["PATH"] = os.pathsep.join([*paths, env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
        if python:  # the same agentcred as this process, wherever it was imported from
            package_root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self._argv[name] = (argv, env)
        with open(self.folder / "logs" / f"{name}.log", "ab") as log_file:
            self.processes[name] = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
                env=env,
                start_new_session=True,
            )
        self.state.pids[name] = self.processes[name].pid

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.binaries["ctr"]), "--address", str(self.socket), "--namespace", "k8s.io", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if check and result.returncode:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
        return result

    def import_image(self, archive: Path) -> None:
        """Make the images of an OCI archive available to pods (`imagePullPolicy: Never`)."""
        self._ctr("images", "import", str(archive))

    def _wait_ready(self, admin_kubeconfig: Path, timeout: float) -> None:
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException

        assert self.state is not None
        core = client.CoreV1Api(config.new_client_from_config(config_file=str(admin_kubeconfig)))
        name = self.state.name

        def ready() -> bool:
            for process_name, process in self.processes.items():
                if process.poll() is not None:
                    log_path = self.folder / "logs" / f"{process_name}.log"
                    tail = log_path.read_text(errors="replace").splitlines()[-15:] if log_path.exists() else []
                    raise NodeUnavailable(
                        f"{process_name} exited with code {process.returncode}; the end of {log_path}:\n"
                        + "\n".join(tail)
                    )
            try:
                node = core.read_node(name)
            except ApiException as error:
                if error.status == 404:
                    return False
                raise
            return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

        wait_for(ready, timeout=timeout, interval=0.2, what=f"Node {name} Ready")
        # The kubelet registers with this taint; a node-lifecycle controller would lift it.
        node = core.read_node(name)
        kept = [t for t in node.spec.taints or [] if t.key != "node.kubernetes.io/not-ready"]
        if len(kept) != len(node.spec.taints or []):
            core.patch_node(name, {"spec": {"taints": [core.api_client.sanitize_for_serialization(t) for t in kept]}})

    # -- faults, for tests ---------------------------------------------------------------

    def restart(self, name: str, down_for: float = 0.0) -> None:
        """Stop one of the node's processes (SIGTERM), wait `down_for` seconds, start it again."""
        argv, env = self._argv[name]
        process = self.processes[name]
        stop_processes({name: process.pid})
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        time.sleep(down_for)
        with open(self.folder / "logs" / f"{name}.log", "ab") as log_file:
            self.processes[name] = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
                env=env,
                start_new_session=True,
            )
        assert self.state is not None
        self.state.pids[name] = self.processes[name].pid
        if name == "kubelet":
            port = json.loads((self.folder / "kubelet.yaml").read_text())["healthzPort"]
            wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=60, what="the kubelet's healthz")

    # -- the end -------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Remove every trace of the node; returns what could not be removed (empty when clean)."""
        if self.state is None:
            return []
        left = teardown(self.state)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1)
        self.processes.clear()
        return left


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _processes_naming(*names: str) -> dict[str, int]:
    """Processes whose command line names the node's folder or socket link (the shims)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError, IndexError):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if any(name in cmdline for name in names):
                    found[f"pid {entry.name} ({cmdline.split()[0].rsplit('/', 1)[-1]})"] = int(entry.name)
    return found


def _kill(pids: dict[str, int]) -> None:
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids.values()):
        for pid in pids.values():  # our own children must be reaped to go
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if all(_exited(pid) for pid in pids.values()):
            return
        time.sleep(0.1)


def _exited(pid: int) -> bool:
    try:
        return "\tZ" in Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1][:4]
    except (OSError, IndexError):
        return True


def _cgroup_folders(cgroup_root: str) -> list[Path]:
    """Every cgroup folder of the node, deepest first."""
    folders: list[Path] = []
    for hierarchy in _cgroup_hierarchies():
        top = hierarchy / cgroup_root
        if top.is_dir():
            folders += [Path(dirpath) for dirpath, _, _ in os.walk(top)]
    return sorted(folders, key=lambda p: len(p.parts), reverse=True)


def _kill_cgroup_members(cgroup_root: str) -> int:
    killed = 0
    for folder in _cgroup_folders(cgroup_root):
        with contextlib.suppress(OSError):
            for pid in (folder / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
                    killed += 1
    return killed


def _mounts_under(folder: str) -> list[str]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = _unescape(line.split()[4])
        if mount_point == folder or mount_point.startswith(folder + "/"):
            mounts.append(mount_point)
    return sorted(set(mounts), key=lambda p: p.count("/"), reverse=True)


def _unmount(path: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    mnt_detach = 2
    if libc.umount2(path.encode(), mnt_detach) != 0:
        error = ctypes.get_errno()
        if error not in (22, 2):  # EINVAL: not (or no longer) a mount point; ENOENT: gone
            raise OSError(error, f"umount {path}: {os.strerror(error)}")


def _other_nodes_up(node_id: str) -> bool:
    if not RUN_LINKS.is_dir():
        return False
    return any(link.name != node_id and os.path.ismount(link) for link in RUN_LINKS.iterdir())


def teardown(state: NodeState) -> list[str]:
    """Stop the node's processes and containers, unmount everything under its folder, remove
    its cgroups, bridge and link. Idempotent; returns what is left (empty when clean)."""
    return [
        *_stop_everything(state),
        *_unmount_everything(state),
        *_remove_cgroups(state),
        *_remove_network_and_link(state),
        *_remove_fixed_path_entries(state),
    ]


def _stop_everything(state: NodeState) -> list[str]:
    folder = state.folder
    # 1. Nothing may start new containers: the scheduler, the kubelet and the relay first.
    stop_processes({n: p for n, p in state.pids.items() if n != "containerd" and ours(p, folder)})
    # 2. The containers: every process in the node's cgroups (the shims see their tasks end).
    _kill_cgroup_members(state.cgroup_root)
    # 3. containerd, then whatever else still names the folder or the link (the shims, which
    # outlive containerd by design), then the cgroups again.
    stop_processes({n: p for n, p in state.pids.items() if n == "containerd" and ours(p, folder)})
    for _ in range(3):
        _kill(_processes_naming(folder, state.run_link))
        if not _kill_cgroup_members(state.cgroup_root):
            break
        time.sleep(0.5)
    return list(_processes_naming(folder, state.run_link))


def _unmount_everything(state: NodeState) -> list[str]:
    """Pod volumes (tmpfs), container root filesystems (overlay), shm, network namespaces,
    the kubelet's bind mount of its own root."""
    for _ in range(10):  # mounts may be stacked on one another
        mounts = _mounts_under(state.run_link) + _mounts_under(state.folder)
        if not mounts:
            break
        for mount_point in mounts:
            try:
                _unmount(mount_point)
            except OSError as error:
                log.warning("%s", error)
    return [f"mount {m}" for m in _mounts_under(state.run_link) + _mounts_under(state.folder)]


def _remove_cgroups(state: NodeState) -> list[str]:
    """Deepest first (a cgroup with no processes can be removed)."""
    left = []
    for cgroup in _cgroup_folders(state.cgroup_root):
        try:
            cgroup.rmdir()
        except OSError:
            time.sleep(0.2)
            try:
                cgroup.rmdir()
            except OSError as error:
                left.append(f"cgroup {cgroup}: {error.strerror}")
    return left


def _remove_network_and_link(state: NodeState) -> list[str]:
    """The bridge (veths went with their network namespaces) and the socket link."""
    left = []
    if _ip("link", "show", state.network.bridge, check=False).returncode == 0:
        result = _ip("link", "del", state.network.bridge, check=False)
        if result.returncode:
            left.append(f"bridge {state.network.bridge}: {result.stderr.strip()}")
    link = Path(state.run_link)
    if link.is_symlink():
        link.unlink()
    elif link.is_dir() and not os.path.ismount(link):
        with contextlib.suppress(OSError):
            link.rmdir()
    return left


def _remove_fixed_path_entries(state: NodeState) -> list[str]:
    """What the kubelet and CNI wrote to fixed paths for this node."""
    pod_logs = str(Path(state.folder) / "pod-logs")
    if CONTAINER_LOG_LINKS.is_dir():
        for entry in CONTAINER_LOG_LINKS.iterdir():
            with contextlib.suppress(OSError):
                if entry.is_symlink() and os.readlink(entry).startswith(pod_logs):
                    entry.unlink()
    results = CNI_CACHE / "results"
    if results.is_dir():
        for entry in results.glob(f"agentcred-{state.node_id}-*"):
            entry.unlink(missing_ok=True)
    if not _other_nodes_up(state.node_id):
        for created in state.fixed_paths_created:
            shutil.rmtree(created, ignore_errors=True)
        with contextlib.suppress(OSError):
            RUN_LINKS.joinpath(".lock").unlink(missing_ok=True)
            RUN_LINKS.rmdir()
    return []
