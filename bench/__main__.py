"""`python -m bench`: the stage list, and the run that goes through it.

Stages run in the order listed; each one's figures are written to bench/out/results.json as
soon as it finishes (with the load average around it), a failed stage is recorded with its
error and the run goes on. External Secrets is found (or built) before the control plane
starts, so a build never skews a figure; the stages after it share one control plane, except
those that bring up a real node of their own.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from kubernetes import config

from agentcred.devcluster.binaries import ensure_binaries
from agentcred.devcluster.controlplane import ControlPlane
from agentcred.devcluster.install import install_agentcred

from . import __doc__ as overview
from . import report
from .context import BENCH, OUT, Context, Options
from .harness import CLIENT_THREADS, Lean, Results
from .machine import machine
from .processes import background_load
from .stages import attacks, burst, eso, floor, gateway, kubelet_delay, leaks, scale, tokens, trace_index, webhook
from .under_test import UnderTest

Phase = Literal["before", "shared", "own"]  # before the control plane; on it; with a plane of its own


@dataclass(frozen=True)
class Stage:
    name: str  # its key in results.json
    kind: str  # what --only selects
    run: Callable[[Context], dict[str, Any]]
    phase: Phase = "shared"
    needs: str | None = None  # a stage that must have measured first (else this one is left out)


# Hot paths being built on their own branches; each lands as bench/stages/<name>.py with
# `run(ctx) -> {"paths": [...]}` (bench/hot_paths.py) and, if it brings up a real node of its
# own, `PHASE = "own"`. Until its module is here, its stage is not in the list.
PLUGGED = ("dpop", "csi")

EXTRAS = ("kubelet-delay", "attacks")  # run only when --only names them


def stages(options: Options) -> list[Stage]:
    """Every stage of this run, in order."""
    listed: list[Stage] = []
    if options.eso != "skip":
        listed.append(Stage("eso-build", "eso", eso.build, phase="before"))
    listed.append(Stage("webhook", "webhook", webhook.run))
    for n in options.bursts:
        listed.append(Stage(f"floor-{n}", "floor", functools.partial(floor.run, count=n)))
        for version, _ in options.baselines:
            run = functools.partial(burst.run, count=n, baseline=version, label=f"baseline-{version}")
            listed.append(Stage(f"baseline-{version}-{n}", "baseline", run))
        listed.append(Stage(f"agentcred-{n}", "agentcred", functools.partial(burst.run, count=n)))
    if options.background_load:
        for n in options.bursts:
            loaded = functools.partial(under_load, options.background_load)
            listed.append(Stage(f"busy-floor-{n}", "floor", loaded(functools.partial(floor.run, count=n))))
            listed.append(
                Stage(f"busy-agentcred-{n}", "agentcred", loaded(functools.partial(burst.run, count=n, label="busy")))
            )
    listed += [
        Stage("tokens", "tokens", tokens.run),
        Stage("trace-index", "leaks", trace_index.run, phase="before"),
        Stage("leaks", "leaks", leaks.run),
        Stage("gateway", "gateway", gateway.run),
    ]
    for name in PLUGGED:
        if importlib.util.find_spec(f"bench.stages.{name}") is not None:
            module = importlib.import_module(f"bench.stages.{name}")
            listed.append(Stage(name, name, module.run, phase=getattr(module, "PHASE", "shared")))
    if options.eso in ("build", "cached"):
        listed.append(Stage("eso-setup", "eso", eso.setup, needs="eso-build"))
        for variant in options.eso_variants:
            for n in options.eso_sizes:
                run = functools.partial(eso.burst, variant=variant, count=n)
                listed.append(Stage(f"eso-{variant}-{n}", "eso", run, needs="eso-setup"))
        if options.eso_refresh and options.eso_refresh_variants:
            listed.append(Stage("eso-refresh", "eso", eso.refresh, needs="eso-setup"))
    if options.scale:
        listed.append(Stage("scale", "scale", scale.run))  # the last on the shared plane
    listed.append(Stage("kubelet-delay", "kubelet-delay", kubelet_delay.run, phase="own"))
    listed.append(Stage("attacks", "attacks", attacks.run))
    return [s for s in listed if (s.kind in options.only if options.only else s.kind not in EXTRAS)]


def under_load(cores: int, work: Callable[[Context], dict[str, Any]]) -> Callable[[Context], dict[str, Any]]:
    """`work` with `cores` busy loops beside it, the whole stage long."""

    def loaded(ctx: Context) -> dict[str, Any]:
        with background_load(cores, ctx.workdir / "busy.log"):
            value = work(ctx)
        return {**value, "background_load_cores": cores}

    return loaded


def run(options: Options, results_file: Path) -> Results:
    out = results_file.resolve().parent
    listed = stages(options)
    results = Results(
        results_file,
        run={
            "mode": "quick" if options.quick else "full",
            "argv": sys.argv[1:],
            "client_threads": CLIENT_THREADS,
            "machine": machine(),
            "bursts": list(options.bursts),
            "eso_sizes": list(options.eso_sizes) if options.eso in ("build", "cached") else [],
            "eso_variants": list(options.eso_variants),
            "checkpoints": list(options.scale),
            "background_load_cores": options.background_load,
            "baselines": {version: str(tree) for version, tree in options.baselines},
            "stages": [s.name for s in listed],
        },
    )
    with tempfile.TemporaryDirectory(prefix="agentcred-bench-") as scratch:
        ctx = Context(options, results, Path(scratch), out)

        def go(stage: Stage) -> None:
            if stage.needs is not None and (stage.needs not in results.data or stage.needs in results.data["errors"]):
                print(f"  {stage.name}: left out ({stage.needs} did not measure)", flush=True)
                return
            results.stage(stage.name, lambda: stage.run(ctx))

        try:
            for stage in (s for s in listed if s.phase == "before"):
                go(stage)
            shared = [s for s in listed if s.phase == "shared"]
            if shared:
                ensure_binaries()
                with ControlPlane() as plane:
                    ctx.plane = plane
                    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
                    ctx.lean_client = Lean(api.configuration)
                    install_agentcred(api)
                    ctx.under_test = UnderTest(plane.kubeconfig, ctx.lean, Path(scratch), out, profile=options.profile)
                    try:
                        for stage in shared:
                            go(stage)
                    finally:
                        ctx.operator.stop()
                        if ctx.eso is not None:
                            ctx.eso.stop()
                        keep_logs(Path(scratch), plane, out / "logs")
                ctx.plane = ctx.lean_client = ctx.under_test = None
            for stage in (s for s in listed if s.phase == "own"):
                go(stage)
        finally:
            results.data["run"]["seconds"] = round(time.monotonic() - results.started, 1)
            results.write()
    return results


def keep_logs(workdir: Path, plane: ControlPlane, into: Path) -> None:
    """The operator's, ESO's and the control plane's logs, for a look after the run."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True, exist_ok=True)
    for log in [*workdir.glob("**/*.log"), *(plane.workdir / "logs").glob("*.log")]:
        if log.name != "audit.log":
            shutil.copy2(log, into / log.name)


def baseline(text: str) -> tuple[str, Path]:
    version, _, tree = text.partition("=")
    if (
        not tree
        or not (Path(tree) / "operator" / "agentcred").is_dir()
        or not version.replace("_", "").replace("-", "").isalnum()
    ):
        raise SystemExit(f"--baseline {text}: expected VERSION=DIR, DIR a checkout with operator/agentcred")
    return version, Path(tree).resolve()


def sizes(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse(argv: Sequence[str] | None = None) -> tuple[Options, Path]:
    """The options of this run: the full run's defaults, or the quick run's with --quick."""
    full, quick = Options(), QUICK
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=overview, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="bench-quick: every stage kind briefly (~5 min); no ESO build, no scale")
    add("--json", default=str(OUT / "results.json"), help="results file; plots, logs, profiles go to its folder")
    add("--bursts", help="burst sizes (default 100,1000,5000; quick: 200)")
    add("--webhook", type=int, help="AdmissionReviews to time (default 2000; quick: 300)")
    add("--token-requests", type=int, help="token requests per grant at 100 clients (default 3000; quick: 500)")
    add(
        "--eso",
        choices=["build", "cached", "rehearse", "skip"],
        help="External Secrets: build it if missing (full default), use it only if cached, rehearse the "
        "build path on a one-file module (quick default), or skip",
    )
    add("--eso-sizes", help="ExternalSecret burst sizes (default: the burst sizes)")
    add("--eso-variants", help="ESO client settings: default,raised,tuned (see bench/external_secrets.py)")
    add(
        "--eso-source",
        choices=["generator", "store+generator"],
        help="what each ExternalSecret reads (ESO v0.16.2 crashes with the Fake store and more than one worker)",
    )
    add("--eso-refresh", type=int, help="ExternalSecrets refreshing every 80 s beside agentcred's renewal (0: skip)")
    add("--eso-refresh-variants", help="variants watched in turn over the same live objects (default tuned,default)")
    add("--scale", help="live-projection checkpoints (default 1000,2500,5000,10000,15000,20000; empty: skip)")
    add("--skip-scale", action="store_true", help="same as --scale ''")
    add("--credentials", type=int, help="AgentCredentials the scale pods spread over (default 500)")
    add("--renewal-at", type=int, help="checkpoint at which renewal is measured (default 10000)")
    add("--ttl", type=float, help="seconds of ttl for the scale stage's values (renewBefore: a third); default 120")
    add("--startup-at", help="checkpoints at which the operator restarts (default 1000,10000)")
    add("--window", type=float, help="seconds to watch renewals / refreshes (default 200)")
    add(
        "--background-load",
        type=int,
        help="cores kept busy (a spinning process each) beside a second run of every burst, "
        "busy-floor-N and busy-agentcred-N (full default 1; quick: 0)",
    )
    add(
        "--baseline",
        action="append",
        metavar="VERSION=DIR",
        help="another checkout (a git worktree) whose operator bursts as baseline-VERSION-N before ours, "
        "in the same run (repeat it for several versions, oldest first)",
    )
    add("--leaks-live", type=int, help="live projections in the leaks stage (default 1000; quick: 100)")
    add("--leaks-reports", type=int, help="leak reports measured one at a time (default 100; quick: 20)")
    add("--trace-index", type=int, help="live values in the in-process trace index (default 10000; quick: 2000)")
    add("--gateway-seconds", type=float, help="seconds per gateway and dpop point (default 10; quick: 2)")
    add("--kubelet-configs", help="kubelet-delay: dev,defaults (default both)")
    add("--only", default="", help="stage kinds: " + ", ".join(KINDS) + f" (extras, run only when named: {EXTRAS})")
    add("--profile", action="store_true", help="py-spy the operator during bursts, renewal, gateway (bench/out/)")
    add("--publish", action="store_true", help="copy the plots to bench/plots/, rewrite RESULTS.md's generated part")
    args = parser.parse_args(argv)
    base = quick if args.quick else full
    picked: dict[str, Any] = {"quick": args.quick, "profile": args.profile, "publish": args.publish}
    for name, convert in CONVERT.items():
        value = getattr(args, name)
        if value is not None:
            picked["baselines" if name == "baseline" else name] = convert(value)
    if args.bursts is not None and args.eso_sizes is None:
        picked["eso_sizes"] = sizes(args.bursts)
    if args.skip_scale:
        picked["scale"] = ()
    picked["only"] = frozenset(words(args.only))
    unknown = picked["only"] - set(KINDS) - set(EXTRAS)
    if unknown:
        parser.error(f"--only: no stage kind {', '.join(sorted(unknown))} (kinds: {', '.join(KINDS + EXTRAS)})")
    options = replace(base, **picked)
    if options.only and "eso" not in options.only:
        options = replace(options, eso="skip")
    return options, Path(args.json)


KINDS = ("webhook", "floor", "baseline", "agentcred", "tokens", "leaks", "gateway", *PLUGGED, "eso", "scale")
CONVERT: dict[str, Callable[[Any], Any]] = {
    "bursts": sizes,
    "webhook": int,
    "token_requests": int,
    "eso": str,
    "eso_sizes": sizes,
    "eso_variants": words,
    "eso_source": str,
    "eso_refresh": int,
    "eso_refresh_variants": words,
    "scale": sizes,
    "credentials": int,
    "renewal_at": int,
    "ttl": float,
    "startup_at": sizes,
    "window": float,
    "background_load": int,
    "baseline": lambda given: tuple(baseline(text) for text in given),
    "leaks_live": int,
    "leaks_reports": int,
    "trace_index": int,
    "gateway_seconds": float,
    "kubelet_configs": words,
}
QUICK = Options(
    quick=True,
    bursts=(200,),
    webhook=300,
    token_requests=500,
    eso="rehearse",
    eso_sizes=(),
    scale=(),
    background_load=0,
    leaks_live=100,
    leaks_reports=20,
    trace_index=2000,
    gateway_seconds=2.0,
)


def stopped(number: int, frame: object) -> None:
    """SIGTERM (or SIGINT where a shell left it ignored) unwinds like an error: every stage's
    clean-up runs, the operator and the control plane stop, nothing is left running."""
    raise SystemExit(128 + number)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)
    options, results_file = parse(argv)
    results = run(options, results_file)
    out = results_file.resolve().parent
    print()
    print(report.text_table(results.data))
    print(f"\nwritten to {results_file}")
    try:
        for path in report.write_outputs(results.data, out):
            print(f"written {path}")
        if options.publish:
            for path in report.publish(results.data, out, BENCH / "plots", BENCH / "RESULTS.md"):
                print(f"published {path}")
    except Exception as error:  # noqa: BLE001 - the figures are safe in results.json already
        print(f"plots/report not written: {error}", file=sys.stderr)
        results.fail("report", error)
    if results.data["errors"]:
        print("\nstages that failed:", file=sys.stderr)
        for name, said in results.data["errors"].items():
            print(f"  {name}: {said}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
