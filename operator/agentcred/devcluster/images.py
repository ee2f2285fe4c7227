"""Container images without a registry: OCI image archives written here, imported into the
local node's containerd with `ctr images import`.

An archive is an OCI image layout in a tar (`oci-layout`, `index.json`, `blobs/sha256/...`);
each manifest in its index carries `io.containerd.image.name`, the name the image gets on
import. Layers are written reproducibly (sorted entries, no timestamps, root-owned), so the
same input gives the same digests, and archives are cached under names keyed by their input.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .binaries import cache_root

PROBE_SOURCE = Path(__file__).resolve().parent / "probe"
OCI_LAYOUT = '{"imageLayoutVersion": "1.0.0"}'
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class Image:
    """One image of an archive: its name, the layers (uncompressed tars, base first), and how it runs."""

    name: str
    layers: tuple[Path, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    user: str = ""
    workdir: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def images_dir() -> Path:
    return cache_root() / "images"


def content_key(*parts: bytes | str | Path) -> str:
    """A short digest of everything an image is made from (files by their content)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            digest.update(part.read_bytes())
        else:
            digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_layer(path: Path, files: Iterable[tuple[str, bytes, int]]) -> Path:
    """An uncompressed layer tar of (path in the image, content, mode) entries, with the
    folders they need."""
    entries = sorted(files)
    folders = sorted({str(Path(name).parent) for name, _, _ in entries} - {"."})
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for folder in folders:
            info = _normalise(tarfile.TarInfo(folder))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, content, mode in entries:
            info = _normalise(tarfile.TarInfo(name))
            info.size, info.mode = len(content), mode
            tar.addfile(info, io.BytesIO(content))
    return path


def write_tree_layer(path: Path, root: Path, subtrees: tuple[str, ...] = ("",)) -> Path:
    """An uncompressed layer tar of the files and folders `subtrees` of `root` (everything under
    each, and the folders above it), named relative to `root`: sorted, timestamps cleared."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        written: set[str] = set()

        def add(full: Path) -> None:
            name = str(full.relative_to(root))
            if name in written or name == ".":
                return
            written.add(name)
            info = tar.gettarinfo(str(full), arcname=name)
            info.mtime = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(full, "rb") as content:
                    tar.addfile(info, content)
            else:
                tar.addfile(info)  # folders, symlinks (never followed), hard links

        for subtree in sorted(subtrees):
            top = root / subtree
            for above in reversed(top.relative_to(root).parents):
                add(root / above)
            add(top)
            if top.is_dir() and not top.is_symlink():
                _add_tree(top, add)
    return path


def _add_tree(top: Path, add: Callable[[Path], None]) -> None:
    for folder, subfolders, files in os.walk(top):
        subfolders.sort()
        here = Path(folder)
        for name in sorted(subfolders) + sorted(files):
            add(here / name)


def _blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def _add_layer(blobs: Path, layer: Path, done: dict[Path, tuple[str, str, int]]) -> tuple[str, str, int]:
    """(diff id, digest, size) of a layer, compressed once per archive however often it is used."""
    if layer not in done:
        diff = hashlib.sha256()
        buffer = io.BytesIO()
        with open(layer, "rb") as source, gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=1) as out:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                diff.update(chunk)
                out.write(chunk)
        digest, size = _blob(blobs, buffer.getvalue())
        done[layer] = (f"sha256:{diff.hexdigest()}", digest, size)
    return done[layer]


def write_archive(path: Path, images: Iterable[Image]) -> Path:
    """An OCI image layout, as a tar, holding `images` (atomically: a half-written archive is never used)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as workdir:
        layout = Path(workdir) / "layout"
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        (layout / "oci-layout").write_text(OCI_LAYOUT)
        done: dict[Path, tuple[str, str, int]] = {}
        manifests = []
        for image in images:
            layers = [_add_layer(blobs, layer, done) for layer in image.layers]
            run: dict[str, object] = {"Entrypoint": list(image.entrypoint) or None, "Cmd": list(image.cmd) or None}
            run.update(Env=list(image.env), User=image.user, WorkingDir=image.workdir, Labels=image.labels or None)
            config = {
                "architecture": "amd64",
                "os": "linux",
                "config": {key: value for key, value in run.items() if value},
                "rootfs": {"type": "layers", "diff_ids": [diff for diff, _, _ in layers]},
                "history": [{"created_by": f"agentcred image writer: {image.name}"}],
            }
            config_digest, config_size = _blob(blobs, json.dumps(config, sort_keys=True).encode())
            manifest = {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config_size},
                "layers": [{"mediaType": LAYER_TYPE, "digest": digest, "size": size} for _, digest, size in layers],
            }
            digest, size = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
            manifests.append(
                {
                    "mediaType": MANIFEST_TYPE,
                    "digest": digest,
                    "size": size,
                    "annotations": {
                        "io.containerd.image.name": image.name,
                        "org.opencontainers.image.ref.name": image.name,
                    },
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            )
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
        (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
        partial = Path(workdir) / "archive.tar"
        with tarfile.open(partial, "w") as tar:
            for entry in sorted(layout.rglob("*")):
                tar.add(entry, arcname=str(entry.relative_to(layout)), recursive=False, filter=_normalise)
        partial.rename(path)
    return path


# -- the probe image: one static Go program, the pod sandbox and the test workloads ----------


@dataclass(frozen=True)
class ProbeImages:
    archive: Path
    probe: str  # runs `/probe ...` (see probe/main.go)
    pause: str  # the pod sandbox image


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod -buildvcs=false")
    return env


def probe_images() -> ProbeImages:
    """The probe and pause images, built and archived once per source (cached by content)."""
    sources = sorted(p for p in PROBE_SOURCE.iterdir() if p.suffix in (".go", ".mod"))
    go_version = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, env=_go_env()).stdout
    key = content_key(go_version, *(p.name for p in sources), *sources)
    tag = f"v{key[:12]}"
    found = ProbeImages(
        images_dir() / f"probe-{key}.tar",
        probe=f"localhost/agentcred/probe:{tag}",
        pause=f"localhost/agentcred/pause:{tag}",
    )
    if found.archive.exists():
        return found
    if shutil.which("go") is None:
        raise RuntimeError("the Go toolchain is needed to build the node's probe image: install Go")
    with tempfile.TemporaryDirectory(prefix="agentcred-probe-") as workdir:
        binary = Path(workdir) / "probe"
        subprocess.run(
            ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), "."],
            cwd=PROBE_SOURCE,
            env=_go_env(),
            check=True,
        )
        layer = write_layer(Path(workdir) / "layer.tar", [("probe", binary.read_bytes(), 0o755)])
        write_archive(
            found.archive,
            [
                Image(found.probe, (layer,), entrypoint=("/probe",), cmd=("pause",), user="65532:65532"),
                Image(found.pause, (layer,), entrypoint=("/probe", "pause"), user="65535:65535"),
            ],
        )
    return found


# -- Python images: a Debian root filesystem, and the operator's image on it ---------------

DEBIAN_SUITE = "bookworm"
# libstdc++6: the C++ runtime the wheels of grpcio (Envoy's ext_authz) and of the CEL engine link.
PYTHON_PACKAGES = ("python3", "python3-venv", "ca-certificates", "libstdc++6")
REPO = Path(__file__).resolve().parents[3]
OPERATOR_LABELS = {
    "org.opencontainers.image.title": "agentcred",
    "org.opencontainers.image.description": "Short-lived, task-bound credentials for AI agents on Kubernetes",
    "org.opencontainers.image.source": "https://github.com/agentcred/agentcred",
    "org.opencontainers.image.licenses": "Apache-2.0",
}
VENV = "/opt/agentcred"


def python_base() -> Path:
    """Debian's essential packages and its Python 3.11 as one layer (mmdebstrap, reproducible
    timestamps), cached by the suite and package list: the python:3.11-slim-bookworm the
    Dockerfile starts from cannot be pulled here."""
    key = content_key("mmdebstrap essential", DEBIAN_SUITE, *PYTHON_PACKAGES)
    path = images_dir() / f"debian-{DEBIAN_SUITE}-python-{key}.tar"
    if path.exists():
        return path
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("building a Python image needs mmdebstrap: apt-get install -y mmdebstrap")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.tar")
    subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=essential", f"--include={','.join(PYTHON_PACKAGES)}"]
        + ["--aptopt=Acquire::Retries 3", DEBIAN_SUITE, str(partial)],
        env={**os.environ, "SOURCE_DATE_EPOCH": "0"},
        check=True,
    )
    partial.rename(path)
    return path


@dataclass(frozen=True)
class PythonImage:
    archive: Path
    name: str
    sbom: Path


def _package_sources() -> list[Path]:
    package = REPO / "operator" / "agentcred"
    code = sorted([*package.rglob("*.py"), *package.rglob("*.typed")])
    # The CSI plugin's compiled protobufs (make protos) go into the wheel beside the package.
    code += sorted((REPO / "operator" / "agentcred_protos").glob("*"))
    return [REPO / "pyproject.toml", REPO / "README.md", *code]


def operator_image() -> PythonImage:
    """The operator's image by the Dockerfile's recipe, without Docker: agentcred's dependencies
    exactly as requirements.lock pins them (hashes checked) and agentcred as a wheel, in a venv
    on the Python base, run as the nonroot user 65532 with `agentcred run` as entrypoint."""
    return _python_image(
        "operator",
        REPO / "requirements.lock",
        sources=_package_sources(),
        with_agentcred=True,
        entrypoint=(f"{VENV}/bin/agentcred", "run"),
        labels=OPERATOR_LABELS,
    )


MCP_EXAMPLE_FILES = ("server.py", "agent.py", "dpop_auth.py")  # what its Dockerfile copies to /app


def mcp_example_image() -> PythonImage:
    """examples/mcp's image (its Dockerfile's recipe): the MCP SDK, PyJWT and joserfc as its
    requirements.lock pins them, the server, the agent and its DPoP client in /app."""
    example = REPO / "examples" / "mcp"
    return _python_image(
        "mcp-example",
        example / "requirements.lock",
        sources=[example / name for name in MCP_EXAMPLE_FILES],
        files={f"app/{name}": example / name for name in MCP_EXAMPLE_FILES},
        workdir="/app",
    )


def _python_image(
    role: str,
    lock: Path,
    *,
    sources: list[Path],
    with_agentcred: bool = False,
    files: dict[str, Path] | None = None,
    entrypoint: tuple[str, ...] = (),
    workdir: str = "",
    labels: dict[str, str] | None = None,
) -> PythonImage:
    """An image on the Python base with a venv holding exactly what `lock` pins (hashes
    checked; and agentcred as a wheel), `files` copied in, run as 65532; its CycloneDX SBOM
    beside it. Cached by the digest of everything it is made of."""
    base = python_base()
    key = content_key(base.name, lock, *(str(p.relative_to(REPO)) for p in sources), *sources)
    found = PythonImage(
        archive=images_dir() / f"{role}-{key}.tar",
        name=f"localhost/agentcred/{role}:{key[:12]}",
        sbom=images_dir() / f"{role}-{key}.cdx.json",
    )
    if found.archive.exists() and found.sbom.exists():
        return found
    with tempfile.TemporaryDirectory(prefix="agentcred-image-", dir=images_dir()) as workdir_:
        work = Path(workdir_)
        root, wheels = work / "root", work / "root" / "tmp" / "wheels"
        root.mkdir()
        subprocess.run(["tar", "-xf", str(base), "-C", str(root), "--numeric-owner"], check=True)
        wheels.mkdir(parents=True, exist_ok=True)
        # The build stage: every dependency as the lock file pins it (and agentcred as a wheel).
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
        subprocess.run(
            [*pip, "download", "--require-hashes", "--only-binary=:all:", "-r", str(lock), "-d", str(wheels)],
            check=True,
        )
        if with_agentcred:
            subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(REPO)], check=True)
        shutil.copy(lock, root / "tmp" / "requirements.lock")
        # The runtime stage, inside the image's own root: its Python, its pip, no network, and
        # nothing of this host's pip configuration (PIP_* variables).
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        in_root = ["chroot", str(root)]
        venv_pip = [*in_root, f"{VENV}/bin/pip", "--disable-pip-version-check", "--quiet", "install", "--no-index"]
        subprocess.run([*in_root, "/usr/bin/python3", "-m", "venv", VENV], check=True, env=env)
        subprocess.run(
            [*venv_pip, "--no-cache-dir", "--find-links=/tmp/wheels", "--require-hashes"]
            + ["-r", "/tmp/requirements.lock"],
            check=True,
            env=env,
        )
        if with_agentcred:
            agentcred = next(wheels.glob("agentcred-*.whl")).name
            subprocess.run([*venv_pip, "--no-cache-dir", "--no-deps", f"/tmp/wheels/{agentcred}"], check=True, env=env)
        for target, source in (files or {}).items():
            (root / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / target)
        # The Dockerfile's nonroot user: Kopf asks getpass who it runs as, and a uid without a
        # passwd entry stops the operator at start.
        with open(root / "etc" / "passwd", "a") as passwd:
            passwd.write("nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin\n")
        with open(root / "etc" / "group", "a") as group:
            group.write("nonroot:x:65532:\n")
        _write_sbom(root, found.sbom, REPO / "pyproject.toml" if with_agentcred else None)
        subtrees = (VENV.lstrip("/"), "etc/passwd", "etc/group", *(files or {}))
        app = write_tree_layer(work / "app.tar", root, subtrees=subtrees)
        write_archive(
            found.archive,
            [
                Image(
                    found.name,
                    (base, app),
                    entrypoint=entrypoint,
                    env=(
                        f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "PYTHONDONTWRITEBYTECODE=1",
                        "PYTHONUNBUFFERED=1",
                        "PIP_NO_CACHE_DIR=1",
                    ),
                    user="65532:65532",
                    workdir=workdir,
                    labels=labels or {},
                )
            ],
        )
    return found


def _write_sbom(root: Path, out: Path, pyproject: Path | None) -> None:
    """A CycloneDX SBOM of the image's Python environment, by cyclonedx-py: it asks the image's
    own interpreter for its sys.path (run in the image's root) and reads what is installed there."""
    cyclonedx = Path(sys.executable).with_name("cyclonedx-py")
    if not cyclonedx.exists():
        raise RuntimeError("writing the image's SBOM needs cyclonedx-bom: pip install cyclonedx-bom")
    interpreter = root.parent / "image-python"
    prefixed = f"[{str(root)!r}+p if p.startswith('/') else p for p in json.load(sys.stdin)]"
    translate = f"import json,sys;print(json.dumps({prefixed}))"
    interpreter.write_text(f'#!/bin/sh\nchroot {root} {VENV}/bin/python "$@" | {sys.executable} -c "{translate}"\n')
    interpreter.chmod(0o755)
    partial = root.parent / "sbom.cdx.json"
    described = ["--pyproject", str(pyproject), "--mc-type", "application"] if pyproject else []
    result = subprocess.run(
        [str(cyclonedx), "environment", "--output-format", "JSON", "--output-file", str(partial)]
        + [*described, str(interpreter)],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise RuntimeError(f"cyclonedx-py failed: {result.stderr.strip()[-2000:]}")
    shutil.copy(partial, out)
