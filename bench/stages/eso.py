"""External Secrets, the peer, on the same control plane and with the same client.

eso-build     find ESO's binary in the cache, or build it (before the control plane starts,
              so a build never skews a figure); quick runs rehearse the build path instead
eso-setup     its CRDs applied, and the cluster's garbage collector following them
eso-V-N       N ExternalSecrets created at once -> Secret written; deleted -> Secret gone
              (timed with the first variant only); ESO's RSS and CPU (V: client limits)
eso-refresh   M ExternalSecrets refreshing every ttl - renewBefore: lateness, RSS, CPU
"""

from __future__ import annotations

from typing import Any

from .. import external_secrets
from ..context import Context, clean, measure_and_clean


def build(ctx: Context) -> dict[str, Any]:
    """The binary, from the cache or built (`--eso build`); `--eso rehearse`: the build path
    exercised on a one-file module, ESO's recipe checked, nothing of ESO built."""
    if ctx.options.eso == "rehearse":
        return external_secrets.rehearse(ctx.workdir / "eso-rehearsal")
    ctx.eso_binary, info = external_secrets.ensure_binary(
        allow_build=ctx.options.eso == "build", log=ctx.out / "eso-build.log"
    )
    return info


def setup(ctx: Context) -> dict[str, Any]:
    assert ctx.eso_binary is not None, "eso-build found the binary"
    lean = ctx.lean
    peer = external_secrets.Eso(
        lean, ctx.eso_binary, ctx.control_plane.kubeconfig, ctx.workdir, source=ctx.options.eso_source
    )
    value = peer.apply_crds()
    lean.call("POST", "/api/v1/namespaces", {"metadata": {"name": "bench-eso-probe"}})
    value["garbage_collector_ready_seconds"] = peer.wait_for_garbage_collector("bench-eso-probe")
    value["cleanup_seconds"] = clean(lean, "bench-eso-probe", 2)
    ctx.eso = peer
    return value


def burst(ctx: Context, variant: str, count: int) -> dict[str, Any]:
    assert ctx.eso is not None, "eso-setup applied the CRDs"
    peer, lean, namespace = ctx.eso, ctx.lean, f"bench-eso-{variant}-{count}"
    lean.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})

    def measure() -> dict[str, Any]:
        startup = peer.start(variant)
        # Deletion is the garbage collector's work, the same for every variant: timed once per
        # size, with the first variant.
        value = peer.burst(namespace, count, measure_delete=variant == ctx.options.eso_variants[0])
        return {**value, "startup_seconds": startup}

    def cleanup() -> float:
        peer.stop()
        return clean(lean, namespace, count * 3)

    return measure_and_clean(measure, cleanup)


def refresh(ctx: Context) -> dict[str, Any]:
    assert ctx.eso is not None, "eso-setup applied the CRDs"
    peer, lean, options, namespace = ctx.eso, ctx.lean, ctx.options, "bench-eso-refresh"
    lean.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})

    def cleanup() -> float:
        peer.stop()
        return clean(lean, namespace, options.eso_refresh * 3)

    return measure_and_clean(
        lambda: peer.refresh(
            namespace,
            options.eso_refresh,
            interval=options.ttl * 2 / 3,
            window=options.window,
            variants=list(options.eso_refresh_variants),
        ),
        cleanup,
    )
