"""Build etcd, kube-apiserver, kube-controller-manager, kubectl and helm from Go modules.

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
GO_PROXY_MOD = "https://proxy.golang.org/k8s.io/kubernetes/@v/v{version}.mod"

KUBERNETES_BINARIES = ("kube-apiserver", "kube-controller-manager", "kubectl")
ALL_BINARIES = (*KUBERNETES_BINARIES, "etcd", "helm")


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

    @property
    def directory(self) -> Path:
        # Keyed by version and by the build recipe, so a changed recipe never reuses a stale build.
        recipe = hashlib.sha256(f"{self.go_mod}|{self.packages}|{self.ldflags}".encode()).hexdigest()[:8]
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


def _kubernetes_component() -> Component:
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
        name="kubernetes",
        version=v,
        go_mod="",  # filled at build time: the replace lines come from the tag's go.mod
        packages=tuple((f"k8s.io/kubernetes/cmd/{name}", name) for name in KUBERNETES_BINARIES),
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


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod -buildvcs=false")
    return env


def build(component: Component) -> None:
    """Build one component into its cache folder (atomically: a half build is never used)."""
    if shutil.which("go") is None:
        raise RuntimeError("the Go toolchain is needed to build the control plane: install Go")
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
        subprocess.run(["go", "mod", "tidy"], cwd=work, env=_go_env(), check=True)
        subprocess.run(
            ["go", "build", "-trimpath", "-ldflags", component.ldflags, "-o", str(out), *packages],
            cwd=work,
            env=_go_env(),
            check=True,
        )
        for package, binary in component.packages:
            built = out / _go_binary_name(package)
            if built.name != binary:
                built.rename(out / binary)
        if component.directory.exists():
            shutil.rmtree(component.directory)
        out.rename(component.directory)


def ensure_binaries() -> dict[str, Path]:
    """Paths of every binary the control plane needs, building what is missing."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    found: dict[str, Path] = {}
    if assets:
        for name in ALL_BINARIES:
            candidate = Path(assets) / name
            if candidate.exists():
                found[name] = candidate
    for component in components():
        if all(name in found for name in component.binaries):
            continue
        if not component.is_built():
            build(component)
        for name in component.binaries:
            found[name] = component.binary(name)
    return found
