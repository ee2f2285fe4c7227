"""External Secrets Operator, the peer, on the same local control plane.

Built like the control plane: a consumer module requiring ESO at one version (its go.mod's
one `replace` copied in), `go build` of the module's root package, cached under
~/.cache/agentcred/bin/external-secrets-v<version>-<recipe hash>. Only the benchmark builds
it, and only when asked (the full run, or --eso build); never `make test`. `make bench-quick`
rehearses the build path on a one-file module of the same shape (`rehearse`).
Its CRDs come from the module source in the Go module cache and are applied at bench time.

ESO runs out of cluster (kubeconfig, no leader election, only the core controller command:
no webhook, no cert controller). Each ExternalSecret gets a freshly generated value from a
`Password` generator (dataFrom/generatorRef, 680 characters, about the size of agentcred's
JWT), the closest thing ESO has to minting a per-workload value; its target Secret is owned by
it. A `Fake` SecretStore is created in each namespace and must be Ready first (the sign ESO's
controllers run); with `source="store+generator"` each ExternalSecret also reads one key from
it. That is not the default because ESO v0.16.2's Fake provider is not safe with more than one
worker: its NewClient writes a map shared by all reconciles, and with --concurrent 16 ESO dies
with "fatal error: concurrent map read and map write" (pkg/provider/fake/fake.go). Real
providers do not share that map, so the generator alone is the fair common ground.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from agentcred.devcluster import binaries
from agentcred.devcluster.controlplane import PROXY_VARIABLES, free_port

from .harness import Follower, Lean, overruns, summary_ms, wait_count
from .processes import Child, log_tail

ESO_VERSION = "0.16.2"
ESO_MODULE = "github.com/external-secrets/external-secrets"
# ESO's own go.mod carries this one replace; a consumer module must repeat it.
ESO_REPLACE = "github.com/Masterminds/sprig/v3 => github.com/external-secrets/sprig/v3 v3.3.0"

ES_GROUP, ES_VERSION = "external-secrets.io", "v1"
GEN_GROUP, GEN_VERSION = "generators.external-secrets.io", "v1alpha1"
MANAGED_LABEL = "reconcile.external-secrets.io/managed"

# The client limits: ESO's defaults, and raised so the API client is not what bounds it.
VARIANTS: dict[str, list[str]] = {
    "default": [],  # --client-qps 50 --client-burst 100 --concurrent 1
    "raised": ["--client-qps", "1000", "--client-burst", "2000"],
    "tuned": ["--client-qps", "1000", "--client-burst", "2000", "--concurrent", "16"],
}


def component() -> binaries.Component:
    return binaries.Component(
        name="external-secrets",
        version=ESO_VERSION,
        go_mod=(
            "module agentcred.dev/build/external-secrets\n\ngo 1.24.2\n\n"
            f"require {ESO_MODULE} v{ESO_VERSION}\n\nreplace {ESO_REPLACE}\n"
        ),
        packages=((ESO_MODULE, "external-secrets"),),
        ldflags="-s -w",
    )


def ensure_binary(
    recipe: binaries.Component | None = None, *, allow_build: bool = True, log: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """The ESO controller binary (built on first use when `allow_build`), and how it was obtained.

    `recipe` is ESO's (`component()`) unless the build path is being rehearsed on a small one."""
    configured = os.environ.get("AGENTCRED_ESO_BINARY")
    if configured and recipe is None:
        return Path(configured), {"source": "AGENTCRED_ESO_BINARY"}
    recipe = recipe or component()
    binary = recipe.binary(recipe.binaries[0])
    info: dict[str, Any] = {"version": recipe.version, "path": str(binary)}
    if not recipe.is_built():
        if not allow_build:
            raise RuntimeError(f"{recipe.name} v{recipe.version} is not built ({binary}); run with --eso build")
        if shutil.which("go") is None:
            raise RuntimeError(f"the Go toolchain is needed to build {recipe.name}")
        print(f"building {recipe.name} v{recipe.version} from Go modules (ESO: ~6 min on 2 cores) ...", flush=True)
        started = time.monotonic()
        build(recipe, log or Path(tempfile.gettempdir()) / f"{recipe.name}-build.log")
        info["build_seconds"] = round(time.monotonic() - started, 1)
    info["binary_mb"] = round(binary.stat().st_size / 2**20, 1)
    info["source"] = "built" if "build_seconds" in info else "cache"
    return binary, info


def _go_env() -> dict[str, str]:
    return {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod -buildvcs=false", "CGO_ENABLED": "0"}


def build(recipe: binaries.Component, log: Path) -> None:
    """devcluster.binaries' recipe (consumer module, tools.go, tidy, build, atomic rename into
    the cache), with Go's output kept in `log` so a failure says exactly why."""
    log.parent.mkdir(parents=True, exist_ok=True)
    recipe.directory.parent.mkdir(parents=True, exist_ok=True)
    ((package, binary),) = recipe.packages
    with tempfile.TemporaryDirectory(dir=recipe.directory.parent) as scratch, open(log, "w") as output:
        work = Path(scratch)
        (work / "go.mod").write_text(recipe.go_mod)
        (work / "tools.go").write_text(f'//go:build tools\n\npackage tools\n\nimport _ "{package}"\n')
        out = work / "out"
        out.mkdir()
        for argv in (
            ["go", "mod", "tidy"],
            ["go", "build", "-trimpath", "-ldflags", recipe.ldflags, "-o", str(out / binary), package],
        ):
            output.write(f"$ {' '.join(argv)}\n")
            output.flush()
            done = subprocess.run(argv, cwd=work, env=_go_env(), stdout=output, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                output.flush()
                raise RuntimeError(
                    f"building {recipe.name} v{recipe.version}: `{' '.join(argv[:2])}` exited with "
                    f"{done.returncode} (full output in {log}):\n{log_tail(log, 25)}"
                )
        if recipe.directory.exists():
            shutil.rmtree(recipe.directory)
        out.rename(recipe.directory)


# A module of the same shape as ESO's recipe (required at a version, with a `replace`), small
# enough to build in seconds without the network: `rehearse` runs the build path end to end.
REHEARSAL_MODULE = "agentcred.dev/bench/rehearsal"


def rehearse(scratch: Path) -> dict[str, Any]:
    """The build path's logic, exercised without ESO's five-minute build (`make bench-quick`):
    ESO's own recipe checked by `go mod edit`, then `ensure_binary` building a one-file module
    through the same steps (consumer module, replace, tidy, build, rename into a cache),
    found in that cache on a second call, and the binary run."""
    if shutil.which("go") is None:
        raise RuntimeError("the Go toolchain is needed to build External Secrets")
    eso = scratch / "eso-recipe"
    eso.mkdir(parents=True, exist_ok=True)
    (eso / "go.mod").write_text(component().go_mod)
    checked = subprocess.run(["go", "mod", "edit", "-json"], cwd=eso, env=_go_env(), capture_output=True, text=True)
    if checked.returncode != 0:
        raise RuntimeError(f"ESO's consumer go.mod does not parse: {checked.stderr.strip()}")
    module = json.loads(checked.stdout)
    if [r["Path"] for r in module.get("Require") or []] != [ESO_MODULE] or len(module.get("Replace") or []) != 1:
        raise RuntimeError(f"ESO's consumer go.mod is not what the build expects: {checked.stdout}")
    local = scratch / "rehearsal-module"
    (local / "cmd" / "rehearsal").mkdir(parents=True, exist_ok=True)
    (local / "go.mod").write_text(f"module {REHEARSAL_MODULE}\n\ngo 1.24\n")
    (local / "cmd" / "rehearsal" / "main.go").write_text(
        'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("rehearsal") }\n'
    )
    recipe = binaries.Component(
        name="rehearsal",
        version="0.0.0",
        go_mod=(
            "module agentcred.dev/build/rehearsal\n\ngo 1.24\n\n"
            f"require {REHEARSAL_MODULE} v0.0.0\n\nreplace {REHEARSAL_MODULE} => {local}\n"
        ),
        packages=((f"{REHEARSAL_MODULE}/cmd/rehearsal", "rehearsal"),),
        ldflags="-s -w",
    )
    previous = os.environ.get("AGENTCRED_CACHE")
    os.environ["AGENTCRED_CACHE"] = str(scratch / "cache")  # cache_root(): keeps the real cache untouched
    try:
        binary, built = ensure_binary(recipe, log=scratch / "rehearsal-build.log")
        _, again = ensure_binary(recipe, allow_build=False)
    finally:
        if previous is None:
            del os.environ["AGENTCRED_CACHE"]
        else:
            os.environ["AGENTCRED_CACHE"] = previous
    said = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.strip()
    if built["source"] != "built" or again["source"] != "cache" or said != "rehearsal":
        raise RuntimeError(f"the build path misbehaved: first {built}, then {again}, the binary said {said!r}")
    eso_recipe = component()
    return {
        "rehearsal_build_seconds": built["build_seconds"],
        "eso_recipe": {"version": ESO_VERSION, "cached": eso_recipe.is_built(), "path": str(eso_recipe.directory)},
    }


def crd_files() -> list[Path]:
    """ESO's CRDs from its module source (downloading the module if the cache lacks it)."""
    root = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, env=_go_env()
    ).stdout.strip()
    source = Path(root) / f"{ESO_MODULE}@v{ESO_VERSION}"
    if not source.exists():
        with tempfile.TemporaryDirectory() as scratch:
            subprocess.run(
                ["go", "mod", "download", f"{ESO_MODULE}@v{ESO_VERSION}"],
                cwd=scratch,
                env=_go_env(),
                check=True,
                capture_output=True,
            )
    bases = source / "config" / "crds" / "bases"
    files = sorted(p for p in bases.glob("*.yaml") if p.name != "kustomization.yaml")
    if not files:
        raise RuntimeError(f"no CRDs under {bases}")
    return files


class Eso:
    """The ESO controller as a child process, and its measurements."""

    def __init__(self, lean: Lean, binary: Path, kubeconfig: Path, workdir: Path, source: str = "generator") -> None:
        self.lean = lean
        self.source = source
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.child: Child | None = None
        self.variant = ""
        self.metrics_port = 0

    # -- setup ------------------------------------------------------------------------

    def apply_crds(self) -> dict[str, Any]:
        started = time.monotonic()
        names = []
        for path in crd_files():
            for body in yaml.safe_load_all(path.read_text()):
                if not body:
                    continue
                names.append(body["metadata"]["name"])
                path_ = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
                try:
                    self.lean.call("POST", path_, body)
                except Exception as error:
                    if getattr(error, "status", None) != 409:
                        raise
        for name in names:
            wait_count(functools.partial(self._established, name), 1, f"CRD {name} established", stall=60)
        return {"crds": len(names), "seconds": time.monotonic() - started}

    def _established(self, name: str) -> int:
        crd = self.lean.json("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        return int(
            any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (crd.get("status") or {}).get("conditions") or []
            )
        )

    # -- the process ------------------------------------------------------------------

    def start(self, variant: str, expect_live: int = 0) -> float:
        """Start ESO with one variant's flags; seconds until its controllers answer."""
        self.stop()
        self.variant = variant
        self.metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
        env["KUBECONFIG"] = str(self.kubeconfig)
        started = time.monotonic()
        args = [str(self.binary), "--metrics-addr", f"127.0.0.1:{self.metrics_port}", "--enable-leader-election=false"]
        self.child = Child(
            f"ESO ({variant})",
            [*args, "--loglevel", "error", *VARIANTS[variant]],
            self.workdir / f"eso-{variant}.log",
            env,
        )
        deadline = started + 120 + expect_live / 20
        while not self._metrics_up():
            self.child.assert_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("ESO's metrics endpoint never answered")
            time.sleep(0.1)
        return time.monotonic() - started

    def _metrics_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def reconcile_stats(self) -> dict[str, float]:
        """From ESO's /metrics: ExternalSecret reconciles, errors, total seconds spent in them."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return {}
        stats = {"reconciles": 0.0, "reconcile_errors": 0.0, "reconcile_seconds": 0.0}
        names = {
            "controller_runtime_reconcile_total": "reconciles",
            "controller_runtime_reconcile_errors_total": "reconcile_errors",
            "controller_runtime_reconcile_time_seconds_sum": "reconcile_seconds",
        }
        for line in text.splitlines():
            metric, _, value = line.rpartition(" ")
            name = metric.split("{", 1)[0]
            if name in names and 'controller="externalsecret"' in metric:
                stats[names[name]] += float(value)
        return stats

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
        self.child = None

    def usage(self) -> dict[str, float]:
        assert self.child is not None, "ESO is started"
        return self.child.usage()

    # -- objects ----------------------------------------------------------------------

    def prepare(self, namespace: str) -> float:
        """The Fake SecretStore and the Password generator in `namespace`; seconds until the
        store is Ready (which also says ESO's controllers are running)."""
        self.lean.call(
            "POST",
            f"/apis/{ES_GROUP}/{ES_VERSION}/namespaces/{namespace}/secretstores",
            {
                "apiVersion": f"{ES_GROUP}/{ES_VERSION}",
                "kind": "SecretStore",
                "metadata": {"name": "fake"},
                "spec": {"provider": {"fake": {"data": [{"key": "bench-static", "value": "s" * 40}]}}},
            },
        )
        self.lean.call(
            "POST",
            f"/apis/{GEN_GROUP}/{GEN_VERSION}/namespaces/{namespace}/passwords",
            {
                "apiVersion": f"{GEN_GROUP}/{GEN_VERSION}",
                "kind": "Password",
                "metadata": {"name": "token"},
                "spec": {"length": 680, "digits": 100, "symbols": 0, "noUpper": False, "allowRepeat": True},
            },
        )
        started = time.monotonic()
        store = f"/apis/{ES_GROUP}/{ES_VERSION}/namespaces/{namespace}/secretstores/fake"

        def ready() -> int:
            conditions = (self.lean.json("GET", store).get("status") or {}).get("conditions") or []
            return int(any(c["type"] == "Ready" and c["status"] == "True" for c in conditions))

        wait_count(ready, 1, f"{namespace}: SecretStore fake Ready", stall=90)
        return time.monotonic() - started

    def external_secret(self, name: str, refresh: str) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "refreshInterval": refresh,
            "target": {"name": name},
            "dataFrom": [
                {
                    "sourceRef": {
                        "generatorRef": {
                            "apiVersion": f"{GEN_GROUP}/{GEN_VERSION}",
                            "kind": "Password",
                            "name": "token",
                        }
                    }
                }
            ],
        }
        if self.source == "store+generator":
            spec["secretStoreRef"] = {"name": "fake", "kind": "SecretStore"}
            spec["data"] = [{"secretKey": "static", "remoteRef": {"key": "bench-static"}}]
        return {
            "apiVersion": f"{ES_GROUP}/{ES_VERSION}",
            "kind": "ExternalSecret",
            "metadata": {"name": name},
            "spec": spec,
        }

    def wait_for_garbage_collector(self, namespace: str) -> float:
        """Seconds until the cluster's garbage collector follows ExternalSecrets as owners.

        It picks up new resource types on its next discovery sync (every 30 s), and until then
        a deleted ExternalSecret's Secret stays: measuring deletion before that would time the
        sync, not ESO. A probe (with ESO stopped): an ExternalSecret owning a ConfigMap, deleted."""
        started = time.monotonic()
        probe = self.lean.json("POST", self.es_path(namespace), self.external_secret("gc-probe", "1h"))
        self.lean.call(
            "POST",
            f"/api/v1/namespaces/{namespace}/configmaps",
            {
                "metadata": {
                    "name": "gc-probe",
                    "ownerReferences": [
                        {
                            "apiVersion": f"{ES_GROUP}/{ES_VERSION}",
                            "kind": "ExternalSecret",
                            "name": "gc-probe",
                            "uid": probe["metadata"]["uid"],
                        }
                    ],
                }
            },
        )
        self.lean.call("DELETE", self.es_path(namespace, "gc-probe"))
        path = f"/api/v1/namespaces/{namespace}/configmaps/gc-probe"
        wait_count(
            lambda: int(not self.lean.exists(path)),
            1,
            "garbage collector following ExternalSecrets",
            stall=120,
            interval=0.5,
        )
        return time.monotonic() - started

    def es_path(self, namespace: str, name: str = "") -> str:
        return f"/apis/{ES_GROUP}/{ES_VERSION}/namespaces/{namespace}/externalsecrets" + (f"/{name}" if name else "")

    def create_all(self, namespace: str, count: int, refresh: str, created: dict[str, float]) -> float:
        started = time.monotonic()

        def create(i: int) -> None:
            name = f"es-{i}"
            self.lean.call("POST", self.es_path(namespace), self.external_secret(name, refresh))
            created[name] = time.monotonic()

        self.lean.run_all(create, range(count))
        return started

    # -- measurements -----------------------------------------------------------------

    def burst(self, namespace: str, count: int, *, measure_delete: bool, stall: float = 180.0) -> dict[str, Any]:
        """N ExternalSecrets created at once -> each target Secret written; then (optionally)
        all deleted -> each Secret gone (the cluster's garbage collector deletes it: ESO owns
        the Secret through an ownerReference and does not delete it itself)."""
        self.prepare(namespace)
        created: dict[str, float] = {}
        follower = Follower(
            self.lean,
            f"/api/v1/namespaces/{namespace}/secrets",
            lambda s: s["metadata"]["name"],
            selector=f"{MANAGED_LABEL}=true",
        )
        with follower as written:
            time.sleep(0.5)
            before = self.usage()
            started = self.create_all(namespace, count, "1h", created)
            create_done = time.monotonic()
            wait_count(lambda: len(written.seen), count, f"{namespace}: ESO Secrets written", stall=stall)
            finished = max(written.seen.values())
            at_n = self.usage()
            reconciles = self.reconcile_stats()
            result: dict[str, Any] = {
                "objects": count,
                "variant": self.variant,
                "flags": VARIANTS[self.variant],
                "source": self.source,
                "create_seconds": create_done - started,
                "written_ms": summary_ms(written.seen[n] - created[n] for n in created if n in written.seen),
                "written_per_second": count / (finished - started),
                "rss_mb_at_n": at_n["rss_mb"],
                "peak_rss_mb": at_n["peak_rss_mb"],
                "cpu_seconds_issuing": at_n["cpu_seconds"] - before["cpu_seconds"],
                "reconciles": reconciles,
            }
            if measure_delete:
                deleted_at: dict[str, float] = {}
                delete_started = time.monotonic()

                def delete(name: str) -> None:
                    self.lean.call("DELETE", self.es_path(namespace, name), ok=(200, 202, 404))
                    deleted_at[name] = time.monotonic()

                self.lean.run_all(delete, sorted(created))
                wait_count(lambda: len(written.deleted), count, f"{namespace}: ESO Secrets deleted", stall=stall)
                result["deleted_ms"] = summary_ms(
                    written.deleted[n] - deleted_at[n] for n in deleted_at if n in written.deleted
                )
                result["deleted_per_second"] = count / (max(written.deleted.values()) - delete_started)
                after = self.usage()
                result["cpu_seconds"] = after["cpu_seconds"] - before["cpu_seconds"]
                result["peak_rss_mb"] = after["peak_rss_mb"]
            else:
                result["cpu_seconds"] = result["cpu_seconds_issuing"]
            result["cpu_seconds_per_1000"] = result["cpu_seconds"] * 1000 / count
        return result

    def refresh(
        self, namespace: str, count: int, *, interval: float, window: float, variants: list[str], stall: float = 300.0
    ) -> dict[str, Any]:
        """`count` ExternalSecrets on a `interval` refresh: for each variant in turn (ESO
        restarted with its flags over the same live objects), how much later than `interval`
        each target Secret's data changes again (the generator makes a new value each time)."""
        self.start(variants[0])
        self.prepare(namespace)
        created: dict[str, float] = {}
        result: dict[str, Any] = {
            "objects": count,
            "interval_seconds": interval,
            "window_seconds": window,
            "source": self.source,
        }
        follower = Follower(
            self.lean,
            f"/api/v1/namespaces/{namespace}/secrets",
            lambda s: s["metadata"]["name"],
            selector=f"{MANAGED_LABEL}=true",
            writes=True,
        )
        with follower as written:
            time.sleep(0.5)
            started = self.create_all(namespace, count, f"{int(interval)}s", created)
            wait_count(lambda: len(written.seen), count, f"{namespace}: ESO Secrets written", stall=stall)
            result["projection_seconds"] = max(written.seen.values()) - started
            for index, variant in enumerate(variants):
                startup = self.start(variant, expect_live=count) if index else 0.0
                before = self.usage()
                mark = time.monotonic()
                time.sleep(window)
                after = self.usage()
                late, overdue = overruns(written.writes, interval, since=mark, until=time.monotonic())
                result[variant] = {
                    "flags": VARIANTS[variant],
                    "startup_seconds": startup,
                    "overrun_ms": summary_ms(late + overdue),
                    "refreshes": len(late),
                    "overdue_at_end": len(overdue),
                    "rss_mb": after["rss_mb"],
                    "peak_rss_mb": after["peak_rss_mb"],
                    "cpu_seconds": after["cpu_seconds"] - before["cpu_seconds"],
                }
                print(
                    f"  ESO refresh ({variant}): {len(late)} refreshes in {window:.0f} s, overrun "
                    f"p50 {result[variant]['overrun_ms']['p50']:.0f} ms "
                    f"p99 {result[variant]['overrun_ms']['p99']:.0f} ms",
                    flush=True,
                )
        return result
