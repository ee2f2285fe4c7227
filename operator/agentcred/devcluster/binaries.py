"""Build etcd, kube-apiserver, kube-controller-manager, kubectl and helm from Go modules, and
for a real node kubelet, kube-scheduler, containerd, runc and the CNI plugins.

Binaries are cached outside the repository, keyed by version, so only the first run pays
for the build. A folder named by `KUBEBUILDER_ASSETS` is used first when it holds a binary.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KUBERNETES_VERSION = "1.34.4"
ETCD_VERSION = "3.6.16"
HELM_VERSION = "3.19.5"
# A real gateway for the gateway tests, examples and benchmark (forward_auth in front of tools).
CADDY_VERSION = "2.11.9"
CONTAINERD_VERSION = "2.4.2"
RUNC_VERSION = "1.5.3"
CNI_PLUGINS_VERSION = "1.10.0"
GO_PROXY_MOD = "https://proxy.golang.org/k8s.io/kubernetes/@v/v{version}.mod"

KUBERNETES_BINARIES = ("kube-apiserver", "kube-controller-manager", "kubectl")
ALL_BINARIES = (*KUBERNETES_BINARIES, "etcd", "helm")
# The node's: from the same k8s.io/kubernetes module, in a folder of their own so the control
# plane's cached build stays valid.
KUBERNETES_NODE_BINARIES = ("kubelet", "kube-scheduler")
CNI_PLUGINS = ("bridge", "host-local", "loopback")


def cache_root() -> Path:
    configured = os.environ.get("AGENTCRED_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agentcred"


@dataclass(frozen=True)
class Component:
    """One Go consumer module that builds some binaries at one version."""

    name: str
    version: str
    go_mod: str
    # (Go main package, binary name) pairs.
    packages: tuple[tuple[str, str], ...]
    ldflags: str
    # runc needs cgo (its nsenter is C) and the seccomp tag (the kubelet always asks for a
    # seccomp profile on a pod's sandbox); everything else is static Go.
    cgo: bool = False
    tags: str = ""

    @property
    def directory(self) -> Path:
        # Keyed by version and by the build recipe, so a changed recipe never reuses a stale build.
        extra = f"|cgo={self.cgo}|tags={self.tags}" if self.cgo or self.tags else ""
        recipe = hashlib.sha256(f"{self.go_mod}|{self.packages}|{self.ldflags}{extra}".encode()).hexdigest()[:8]
        return cache_root() / "bin" / f"{self.name}-v{self.version}-{recipe}"

    def binary(self, name: str) -> Path:
        return self.directory / name

    @property
    def binaries(self) -> tuple[str, ...]:
        return tuple(binary for _, binary in self.packages)

    def is_built(self) -> bool:
        return all(self.binary(name).exists() for name in self.binaries)


def _staging_modules(version: str) -> list[str]:
    """Modules k8s.io/kubernetes replaces with ./staging at this tag (they need real versions)."""
    with urllib.request.urlopen(GO_PROXY_MOD.format(version=version), timeout=60) as response:
        text = response.read().decode()
    return sorted(line.split()[0] for line in text.splitlines() if "=> ./staging" in line)


def _kubernetes_component(name: str = "kubernetes", binaries: tuple[str, ...] = KUBERNETES_BINARIES) -> Component:
    v = KUBERNETES_VERSION
    major, minor, _ = v.split(".")
    version_flags = " ".join(
        f"-X {package}.{key}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for key, value in (
            ("gitVersion", f"v{v}"),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
            ("buildDate", "1970-01-01T00:00:00Z"),
        )
    )
    return Component(
        name=name,
        version=v,
        go_mod="",  # filled at build time: the replace lines come from the tag's go.mod
        packages=tuple((f"k8s.io/kubernetes/cmd/{binary}", binary) for binary in binaries),
        ldflags=f"-s -w {version_flags}",
    )


def components() -> list[Component]:
    return [
        _kubernetes_component(),
        Component(
            name="etcd",
            version=ETCD_VERSION,
            # etcd's own go.mod files carry replace lines; a consumer module avoids them.
            go_mod=(
                f"module agentcred.dev/build/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 v{ETCD_VERSION}\n"
            ),
            packages=(("go.etcd.io/etcd/server/v3", "etcd"),),
            ldflags="-s -w",
        ),
        Component(
            name="helm",
            version=HELM_VERSION,
            go_mod=(f"module agentcred.dev/build/helm\n\ngo 1.24.0\n\nrequire helm.sh/helm/v3 v{HELM_VERSION}\n"),
            packages=(("helm.sh/helm/v3/cmd/helm", "helm"),),
            # Helm's default capabilities (what `helm template` assumes) follow its client-go.
            ldflags=(
                f"-s -w -X helm.sh/helm/v3/internal/version.version=v{HELM_VERSION}"
                f" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
                f" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={KUBERNETES_VERSION.split('.')[1]}"
            ),
        ),
    ]


def caddy_component() -> Component:
    """Caddy, built like the control plane: not part of it, built only where a gateway is wanted."""
    return Component(
        name="caddy",
        version=CADDY_VERSION,
        go_mod=(
            "module agentcred.dev/build/caddy\n\ngo 1.26.0\n\n"
            f"require github.com/caddyserver/caddy/v2 v{CADDY_VERSION}\n"
        ),
        packages=(("github.com/caddyserver/caddy/v2/cmd/caddy", "caddy"),),
        ldflags="-s -w",
    )


def ensure_caddy() -> Path:
    """The caddy binary (from KUBEBUILDER_ASSETS-style AGENTCRED_CADDY, else the cache, built once)."""
    configured = os.environ.get("AGENTCRED_CADDY")
    if configured:
        return Path(configured)
    component = caddy_component()
    if not component.is_built():
        build(component)
    return component.binary("caddy")


def _consumer_go_mod(name: str, module: str, version: str) -> str:
    """A module that only requires `module`: its own go.mod's replace lines would stop `go build`."""
    return f"module agentcred.dev/build/{name}\n\ngo 1.24.0\n\nrequire {module} v{version}\n"


def node_components() -> list[Component]:
    """What a real node runs besides the control plane: kubelet and kube-scheduler, containerd
    (with its shim and `ctr`), runc, and the CNI plugins for pod networks."""
    containerd = "github.com/containerd/containerd/v2"
    plugins = "github.com/containernetworking/plugins/plugins"
    cni_paths = {"bridge": "main/bridge", "host-local": "ipam/host-local", "loopback": "main/loopback"}
    return [
        _kubernetes_component("kubernetes-node", KUBERNETES_NODE_BINARIES),
        Component(
            name="containerd",
            version=CONTAINERD_VERSION,
            go_mod=_consumer_go_mod("containerd", containerd, CONTAINERD_VERSION),
            packages=tuple(
                (f"{containerd}/cmd/{binary}", binary) for binary in ("containerd", "containerd-shim-runc-v2", "ctr")
            ),
            ldflags=f"-s -w -X {containerd}/version.Version=v{CONTAINERD_VERSION}",
        ),
        Component(
            name="runc",
            version=RUNC_VERSION,
            go_mod=_consumer_go_mod("runc", "github.com/opencontainers/runc", RUNC_VERSION),
            packages=(("github.com/opencontainers/runc", "runc"),),
            ldflags=f"-s -w -X main.version={RUNC_VERSION}",
            cgo=True,
            tags="seccomp",
        ),
        Component(
            name="cni-plugins",
            version=CNI_PLUGINS_VERSION,
            go_mod=_consumer_go_mod("cni-plugins", "github.com/containernetworking/plugins", CNI_PLUGINS_VERSION),
            packages=tuple((f"{plugins}/{cni_paths[binary]}", binary) for binary in CNI_PLUGINS),
            ldflags="-s -w",
        ),
    ]


def _kubernetes_go_mod() -> str:
    v = KUBERNETES_VERSION
    minor_patch = v.split(".", 1)[1]
    replaces = "\n".join(f"\t{m} => {m} v0.{minor_patch}" for m in _staging_modules(v))
    return (
        "module agentcred.dev/build/kubernetes\n\ngo 1.24.0\n\ngodebug default=go1.24\n\n"
        f"require k8s.io/kubernetes v{v}\n\nreplace (\n{replaces}\n)\n"
    )


def _go_binary_name(package: str) -> str:
    """The file name `go build` gives a main package: its last element, skipping a /vN."""
    parts = package.split("/")
    if len(parts) > 1 and parts[-1][:1] == "v" and parts[-1][1:].isdigit():
        return parts[-2]
    return parts[-1]


def _go_env(cgo: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CGO_ENABLED="1" if cgo else "0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod -buildvcs=false")
    return env


def missing_build_tools(component: Component) -> list[str]:
    """What this host lacks to build `component`, each with how to get it."""
    missing = []
    if shutil.which("go") is None:
        missing.append("the Go toolchain (>= 1.26): install Go")
    if component.cgo:
        if shutil.which("gcc") is None:
            missing.append("a C compiler for runc's cgo: apt-get install -y gcc")
        if shutil.which("pkg-config") is None:
            missing.append("pkg-config, to find libseccomp: apt-get install -y pkg-config")
        elif (
            "seccomp" in component.tags
            and subprocess.run(["pkg-config", "--exists", "libseccomp"], capture_output=True).returncode
        ):
            missing.append("libseccomp's headers, for runc's seccomp support: apt-get install -y libseccomp-dev")
    return missing


def build(component: Component) -> None:
    """Build one component into its cache folder (atomically: a half build is never used)."""
    missing = missing_build_tools(component)
    if missing:
        raise RuntimeError(f"cannot build {component.name} v{component.version}: missing " + "; ".join(missing))
    go_mod = component.go_mod or _kubernetes_go_mod()
    component.directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=component.directory.parent) as workdir:
        work = Path(workdir)
        (work / "go.mod").write_text(go_mod)
        packages = [package for package, _ in component.packages]
        imports = "\n".join(f'\t_ "{package}"' for package in packages)
        (work / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
        out = work / "out"
        out.mkdir()
        log.info("building %s v%s from Go modules (first run only)", component.name, component.version)
        env = _go_env(component.cgo)
        subprocess.run(["go", "mod", "tidy"], cwd=work, env=env, check=True)
        tags = ["-tags", component.tags] if component.tags else []
        subprocess.run(
            ["go", "build", "-trimpath", *tags, "-ldflags", component.ldflags, "-o", str(out), *packages],
            cwd=work,
            env=env,
            check=True,
        )
        for package, binary in component.packages:
            built = out / _go_binary_name(package)
            if built.name != binary:
                built.rename(out / binary)
        if component.directory.exists():
            shutil.rmtree(component.directory)
        out.rename(component.directory)


def _ensure(wanted: list[Component]) -> dict[str, Path]:
    """Paths of the components' binaries: from KUBEBUILDER_ASSETS where found there, else from
    the cache, building what is missing (in order: the kubelet's build reuses the Go build
    cache the control plane's left)."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    found: dict[str, Path] = {}
    if assets:
        for component in wanted:
            for name in component.binaries:
                candidate = Path(assets) / name
                if candidate.exists():
                    found[name] = candidate
    for component in wanted:
        if all(name in found for name in component.binaries):
            continue
        if not component.is_built():
            build(component)
        for name in component.binaries:
            found[name] = component.binary(name)
    return found


def ensure_binaries() -> dict[str, Path]:
    """Paths of every binary the control plane needs, building what is missing."""
    return _ensure(components())


def ensure_node_binaries() -> dict[str, Path]:
    """Paths of every binary a real node needs, building what is missing."""
    return _ensure(node_components())
