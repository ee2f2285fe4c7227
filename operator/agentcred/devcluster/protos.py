"""The CSI node plugin's protocols, compiled here from their published .proto files.

The CSI spec (`csi.proto`, module `github.com/container-storage-interface/spec`) and the
kubelet's plugin registration API (`pkg/apis/pluginregistration/v1/api.proto`, module
`k8s.io/kubelet`) are fetched as the Go modules that publish them, from the Go module proxy,
checked against the module hash every `go.sum` records for them (`h1:`, Go's dirhash of the
module's zip), cached by version beside the binaries, and compiled with grpcio-tools into the
package `agentcred_protos` next to `agentcred` (generated, never committed: `make protos`, run
by `make setup`, and by the image's build before its wheel is made). No PyPI package ships
these compiled.

The versions are the ones the kubelet agentcred's real node runs (Kubernetes 1.34.4) is built
against, so the plugin speaks exactly what that kubelet speaks.

    python -m agentcred.devcluster.protos [--out DIR]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

GO_PROXY = os.environ.get("AGENTCRED_GO_PROXY", "https://proxy.golang.org")
PACKAGE = "agentcred_protos"
REPO = Path(__file__).resolve().parents[3]
DEFAULT_OUT = REPO / "operator"


@dataclass(frozen=True)
class ProtoModule:
    """One Go module that publishes a .proto file, at one version, with its go.sum hash."""

    path: str
    version: str
    h1: str  # the module zip's hash as go.sum and the checksum database record it
    proto: str  # inside the module
    name: str  # the compiled module's base name: <name>_pb2, <name>_pb2_grpc

    @property
    def url(self) -> str:
        escaped = "".join(f"!{c.lower()}" if c.isupper() else c for c in self.path)
        return f"{GO_PROXY}/{escaped}/@v/{self.version}.zip"

    @property
    def member(self) -> str:
        return f"{self.path}@{self.version}/{self.proto}"


MODULES = (
    ProtoModule(
        "github.com/container-storage-interface/spec",
        "v1.9.0",  # what k8s.io/kubernetes v1.34.4 requires
        "h1:zKtX4STsq31Knz3gciCYCi1SXtO2HJDecIjDVboYavY=",
        "csi.proto",
        "csi",
    ),
    ProtoModule(
        "k8s.io/kubelet",
        "v0.34.4",  # the kubelet's own staging module at Kubernetes 1.34.4
        "h1:+8aLwtoZSUnE7HLxjrAYNtlJFzlwxQ4UBleyaW4JzA8=",
        "pkg/apis/pluginregistration/v1/api.proto",
        "pluginregistration",
    ),
)


def cache_folder() -> Path:
    from .binaries import cache_root

    return cache_root() / "protos"


def dirhash_h1(archive: bytes) -> str:
    """Go's `dirhash.Hash1` over a module zip: SHA-256 of the sorted lines
    "<sha256 of file>  <name>", base64, prefixed `h1:`."""
    with zipfile.ZipFile(io.BytesIO(archive)) as module:
        names = sorted(info.filename for info in module.infolist() if not info.is_dir())
        summary = "".join(f"{hashlib.sha256(module.read(name)).hexdigest()}  {name}\n" for name in names)
    return "h1:" + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()


def fetch(module: ProtoModule) -> bytes:
    """The .proto file, from the cached module zip or the proxy; refused unless its hash is the pinned one."""
    cached = cache_folder() / f"{module.path.replace('/', '_')}@{module.version}.zip"
    if cached.exists():
        archive = cached.read_bytes()
    else:
        with urllib.request.urlopen(module.url, timeout=120) as answer:  # noqa: S310 (a fixed https URL)
            archive = answer.read()
    found = dirhash_h1(archive)
    if found != module.h1:
        raise RuntimeError(f"{module.path}@{module.version} from {module.url} has hash {found}, not {module.h1}")
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".part")
        partial.write_bytes(archive)
        partial.replace(cached)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        return opened.read(module.member)


def stamp() -> str:
    """What the compiled package was made from: the modules and the compiler's version."""
    from importlib.metadata import version

    from grpc_tools import protoc  # noqa: F401 (present: its version below)

    lines = [f"{m.path}@{m.version} {m.h1} {m.proto}" for m in MODULES]
    return "\n".join([*lines, f"grpcio-tools {version('grpcio-tools')}"]) + "\n"


def compile_protos(out: Path = DEFAULT_OUT) -> Path:
    """Compile the modules' .proto files into `out/agentcred_protos`, unless already done from the same inputs."""
    from grpc_tools import protoc

    target = out / PACKAGE
    wanted = stamp()
    if (target / "SOURCES").exists() and (target / "SOURCES").read_text() == wanted:
        return target
    with tempfile.TemporaryDirectory(prefix="agentcred-protos-") as work:
        staging, built = Path(work) / "in", Path(work) / "out"
        (staging / PACKAGE).mkdir(parents=True)
        built.mkdir()
        for module in MODULES:
            (staging / PACKAGE / f"{module.name}.proto").write_bytes(fetch(module))
        includes = str(resources.files("grpc_tools") / "_proto")
        argv = [
            "grpc_tools.protoc",
            f"-I{staging}",
            f"-I{includes}",
            f"--python_out={built}",
            f"--grpc_python_out={built}",
            *(f"{PACKAGE}/{module.name}.proto" for module in MODULES),
        ]
        if protoc.main(argv) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(m.member for m in MODULES)}")
        generated = built / PACKAGE
        (generated / "__init__.py").write_text(
            '"""Generated by agentcred.devcluster.protos from the CSI spec and the kubelet\'s plugin registration\n'
            'API (see SOURCES); not committed, not to be edited."""\n'
        )
        (generated / "SOURCES").write_text(wanted)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(generated, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compile the CSI plugin's protobufs into agentcred_protos")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the folder the package is written into")
    args = parser.parse_args(argv)
    try:
        target = compile_protos(args.out)
    except (OSError, RuntimeError, KeyError) as error:
        print(f"agentcred: could not compile the CSI protobufs: {error}", file=sys.stderr)
        return 1
    print(f"compiled {', '.join(m.member for m in MODULES)} into {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
