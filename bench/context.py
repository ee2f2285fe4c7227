"""What every stage is given: the run's options, the local control plane and a lean client for
it, the operator under test, a scratch folder and the output folder; and the two habits every
stage shares (measure, then clean up whatever happened; delete a namespace and wait for it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentcred.api import model
from agentcred.devcluster.controlplane import ControlPlane

from .external_secrets import Eso
from .harness import Lean, PartialResult, Results, wait_gone
from .under_test import UnderTest

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out"


@dataclass(frozen=True)
class Options:
    """The run's options, read once from the command line (see `python -m bench --help`)."""

    quick: bool = False
    bursts: tuple[int, ...] = (100, 1000, 5000)
    webhook: int = 2000
    token_requests: int = 3000
    eso: str = "build"  # build, cached, skip
    eso_sizes: tuple[int, ...] = (100, 1000, 5000)
    eso_variants: tuple[str, ...] = ("default", "raised", "tuned")
    eso_source: str = "generator"
    eso_refresh: int = 10000
    eso_refresh_variants: tuple[str, ...] = ("tuned", "default")
    scale: tuple[int, ...] = (1000, 2500, 5000, 10000, 15000, 20000)
    credentials: int = 500
    renewal_at: int = 10000
    ttl: float = 120.0
    startup_at: tuple[int, ...] = (1000, 10000)
    window: float = 200.0
    background_load: int = 1  # cores kept busy beside the `busy-` bursts (0: none)
    baselines: tuple[tuple[str, Path], ...] = ()  # (version, checkout): operators burst before this one's
    leaks_live: int = 1000
    leaks_reports: int = 100
    trace_index: int = 10_000
    gateway_seconds: float = 10.0
    kubelet_configs: tuple[str, ...] = ("dev", "defaults")
    kubelet_pods: int = 25
    kubelet_rounds: int = 2
    profile: bool = False
    publish: bool = False
    only: frozenset[str] = frozenset()


@dataclass
class Context:
    """One run's shared state. `plane` and `lean` exist for stages that use the shared control
    plane (every stage but those that bring up a real node of their own)."""

    options: Options
    results: Results
    workdir: Path
    out: Path
    plane: ControlPlane | None = None
    lean_client: Lean | None = None
    under_test: UnderTest | None = None
    eso_binary: Path | None = None  # found (or built) by the eso-build stage
    eso: Eso | None = None  # the peer, once its CRDs are in (eso-setup)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def lean(self) -> Lean:
        assert self.lean_client is not None, "the stage runs on the shared control plane"
        return self.lean_client

    @property
    def control_plane(self) -> ControlPlane:
        assert self.plane is not None, "the stage runs on the shared control plane"
        return self.plane

    @property
    def operator(self) -> UnderTest:
        assert self.under_test is not None, "the stage runs on the shared control plane"
        return self.under_test

    def baseline(self, version: str) -> UnderTest:
        """A `--baseline` checkout's operator, on the same control plane."""
        tree = dict(self.options.baselines)[version]
        return UnderTest(
            self.control_plane.kubeconfig,
            self.lean,
            self.workdir / f"baseline-{version}",
            self.out,
            profile=self.options.profile,
            tree=tree,
        )


def clean(lean: Lean, namespace: str, objects: int) -> float:
    """Delete a namespace and wait until it is gone, so the next stage starts clean.

    AgentCredentials carry the operator's finalizer: with the operator running it revokes and
    lets go; if one is still held after a while (no operator), the benchmark lets go itself."""
    path = f"/api/v1/namespaces/{namespace}"
    started = time.monotonic()
    lean.call("DELETE", path, ok=(200, 202, 404))
    try:
        wait_gone(lean, path, f"namespace {namespace}", ceiling=60 + objects / 50)
    except TimeoutError:
        credentials = f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{namespace}/{model.PLURAL}"
        held = [
            item["metadata"]["name"]
            for item in lean.json("GET", credentials).get("items") or []
            if item["metadata"].get("finalizers")
        ]
        if held:
            print(f"  {namespace}: releasing the finalizers of {len(held)} AgentCredentials", flush=True)
        for name in held:
            lean.call(
                "PATCH",
                f"{credentials}/{name}",
                {"metadata": {"finalizers": None}},
                content_type="application/merge-patch+json",
                ok=(200, 404),
            )
        wait_gone(lean, path, f"namespace {namespace}", ceiling=180 + objects / 20)
    return time.monotonic() - started


def measure_and_clean(measure: Callable[[], dict[str, Any]], cleanup: Callable[[], float]) -> dict[str, Any]:
    """Measure, then clean up whatever happened; a failed clean-up keeps the figures."""
    try:
        value = measure()
    except BaseException:
        try:
            cleanup()
        except Exception as error:  # noqa: BLE001 - the measurement's own error is the one to report
            print(f"  clean-up failed too: {error}", flush=True)
        raise
    try:
        value["cleanup_seconds"] = round(cleanup(), 1)
    except Exception as error:  # noqa: BLE001
        raise PartialResult(value, error) from error
    return value
