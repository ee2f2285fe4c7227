"""`agentcred dev ...`: a local control plane for development, from the command line.

Each control plane has a name, and its state and files live under the cache in
`dev/<name>/`: by default the name comes from the checkout `dev up` runs in (so a second
project or clone on the same machine gets its own), or `--name` picks one.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Pods of Jobs succeed this long after they start running, unless told otherwise.
DEFAULT_COMPLETE_AFTER = 10.0


def checkout_root(start: Path) -> Path:
    """The checkout `start` is in (the nearest folder with .git), else `start` itself."""
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return start


def default_name(start: Path | None = None) -> str:
    """A name for this checkout's control plane: its folder's name and a digest of its path."""
    root = checkout_root((start or Path.cwd()).resolve())
    readable = re.sub(r"[^a-z0-9-]+", "-", root.name.lower()).strip("-")[:32] or "dev"
    return f"{readable}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"


def _dev_dir(args: argparse.Namespace) -> Path:
    from .binaries import cache_root

    return cache_root() / "dev" / (args.name or default_name())


def cmd_dev_build(args: argparse.Namespace) -> int:
    from .binaries import ensure_binaries, ensure_node_binaries
    from .images import probe_images
    from .node import host_problems

    built = ensure_binaries()
    problems = host_problems()
    if problems:
        listed = "\n  - ".join(problems)
        print(f"no real node on this host (the stand-in serves instead):\n  - {listed}", file=sys.stderr)
    else:
        built.update(ensure_node_binaries())
        images = probe_images()
        built[images.probe] = images.archive
    for name, path in sorted(built.items()):
        print(f"{name}\t{path}")
    return 0


def cmd_dev_up(args: argparse.Namespace) -> int:
    from .controlplane import ControlPlane, ControlPlaneState, stop_processes
    from .node import (
        DEV_SYNC_FREQUENCY,
        KUBELET_DEFAULT_SYNC_FREQUENCY,
        NodeUnavailable,
        RealNode,
        volume_refresh_delay,
    )

    folder = _dev_dir(args)
    state_path = folder / "state.json"
    if state_path.exists():
        state = ControlPlaneState.load(state_path)
        print(f"local control plane {folder.name} is already up at {state.server}", file=sys.stderr)
        print(f"export KUBECONFIG={state.kubeconfig}")
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    from kubernetes import config

    from .binaries import ensure_binaries
    from .install import install_agentcred

    started = time.monotonic()
    real = not (args.no_kubelet or args.stand_in)
    node = None
    options: dict[str, Any] = {}
    timings: dict[str, float] = {}
    if real:
        sync = KUBELET_DEFAULT_SYNC_FREQUENCY if args.kubelet_defaults else DEV_SYNC_FREQUENCY
        node = RealNode(folder / "cluster", sync_frequency=sync)
        try:
            options = node.prepare().plane_options
            timings.update(node.timings)
        except NodeUnavailable as error:
            node.stop()
            shutil.rmtree(folder, ignore_errors=True)
            print(f"agentcred dev up: {error}", file=sys.stderr)
            return 1
    plane = ControlPlane(workdir=folder / "cluster", detach=True, **options)
    try:
        state = plane.start()
        timings.update(plane.timings)
        step = time.monotonic()
        install_agentcred(config.new_client_from_config(config_file=state.kubeconfig))
        timings["CRDs established, policy and namespace"] = time.monotonic() - step
        if node is not None:
            node_state = node.start(state.server, Path(state.kubeconfig))
            timings.update(node.timings)
            state.node = node_state.to_dict()
        elif args.stand_in:
            step = time.monotonic()
            state.pids["kubelet"] = start_kubelet(Path(state.workdir), state.kubeconfig, args.complete_after)
            timings["scheduler/kubelet stand-in started"] = time.monotonic() - step
    except BaseException as error:
        if node is not None:
            node.stop()
        stop_processes({name: p.pid for name, p in plane.processes.items()})
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(error, NodeUnavailable):
            print(f"agentcred dev up: {error}", file=sys.stderr)
            return 1
        raise
    state.save(state_path)
    total = time.monotonic() - started
    print(f"local control plane {folder.name} up at {state.server} in {total:.1f}s:", file=sys.stderr)
    for what, seconds in timings.items():
        print(f"  {seconds:5.1f}s  {what}", file=sys.stderr)
    if node is not None and node.state is not None:
        print(
            f"a real node {node.state.name!r} runs pods as containers (kubelet syncFrequency "
            f"{node.state.sync_frequency}); its files: {node.folder}",
            file=sys.stderr,
        )
        print(f"  images (imagePullPolicy: Never): {node.state.images['probe']}", file=sys.stderr)
        delay = volume_refresh_delay(node.state.sync_frequency)
        print(f"  an operator for it: agentcred run --volume-refresh-delay {delay} ...", file=sys.stderr)
    elif args.no_kubelet:
        print("no node (--no-kubelet): pods stay Pending", file=sys.stderr)
    else:
        print(
            f"pods are bound to a stand-in node and given phases, no container runs; a Job's pods succeed after "
            f"{args.complete_after:g}s",
            file=sys.stderr,
        )
    print(f"kubectl: {ensure_binaries()['kubectl']}", file=sys.stderr)
    print(NEXT_STEPS.format(kubeconfig=state.kubeconfig), file=sys.stderr)
    print(f"export KUBECONFIG={state.kubeconfig}")
    return 0


# What `dev up` leaves to do: without an operator, an opted-in pod is refused (the opt-in
# check says why) rather than run without its credentials.
NEXT_STEPS = """no operator runs yet: opted-in pods are refused until one does. Next, in another terminal:
  export KUBECONFIG={kubeconfig}
  agentcred run --standalone --namespace agentcred --webhook-url https://127.0.0.1:9443
then: kubectl apply -f examples/quickstart.yaml   (README: Running outside a cluster);
for `delivery: csi`, once it runs: agentcred dev csi-link (the node's CSI plugin finds it)"""


def start_kubelet(workdir: Path, kubeconfig: str, complete_after: float) -> int:
    """The stand-in as its own detached process, logging into the control plane's logs."""
    import os

    # The same agentcred as this process, wherever it was imported from.
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with open(workdir / "logs" / "kubelet.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "agentcred", "dev", "kubelet", "--kubeconfig", kubeconfig]
            + ["--complete-after", str(complete_after)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    return process.pid


def cmd_dev_down(args: argparse.Namespace) -> int:
    from .controlplane import ControlPlaneState, ours, stop_processes
    from .node import NodeState, teardown

    folder = _dev_dir(args)
    state_path = folder / "state.json"
    if not state_path.exists():
        print(f"no local control plane {folder.name} is up", file=sys.stderr)
        return 0
    state = ControlPlaneState.load(state_path)
    left = teardown(NodeState.from_dict(state.node)) if state.node else []
    # Only processes that are still this plane's: a pid may have been reused since.
    left += stop_processes({name: pid for name, pid in state.pids.items() if ours(pid, state.workdir)})
    if left:
        print(f"still running after SIGKILL: {', '.join(left)}; state kept in {folder}", file=sys.stderr)
        return 1
    shutil.rmtree(folder, ignore_errors=True)
    what = "every process exited"
    if state.node:
        what += ", every mount, cgroup and bridge of its node removed"
    print(f"local control plane {folder.name} stopped ({what}) and removed", file=sys.stderr)
    return 0


def cmd_dev_kubeconfig(args: argparse.Namespace) -> int:
    from .controlplane import ControlPlaneState

    folder = _dev_dir(args)
    state_path = folder / "state.json"
    if not state_path.exists():
        others = sorted(path.parent.name for path in folder.parent.glob("*/state.json"))
        where = f"local control plane {folder.name}" + ("" if args.name else " (this checkout's)")
        if others:
            print(f"no {where} is up; up: {', '.join(others)} (pick one with --name)", file=sys.stderr)
        else:
            print("no local control plane is up: run `agentcred dev up`", file=sys.stderr)
        return 1
    print(ControlPlaneState.load(state_path).kubeconfig)
    return 0


def cmd_dev_csi_link(args: argparse.Namespace) -> int:
    """Point the local node's CSI plugin at a running operator (its URL, CA, a Node-bound token)."""
    from kubernetes import config

    from .controlplane import ControlPlaneState
    from .csi_plugin import link_operator
    from .node import NodeState

    state_path = _dev_dir(args) / "state.json"
    if not state_path.exists():
        print("no local control plane is up: run `agentcred dev up`", file=sys.stderr)
        return 1
    state = ControlPlaneState.load(state_path)
    if not state.node:
        print("this local control plane has no real node (and so no CSI plugin)", file=sys.stderr)
        return 1
    node = NodeState.from_dict(state.node)
    folder = Path(node.folder) / "csi-operator"
    link_operator(config.new_client_from_config(config_file=state.kubeconfig), node.name, folder, args.url)
    print(f"the CSI plugin on node {node.name} now asks the operator at {args.url}", file=sys.stderr)
    return 0


def cmd_dev_kubelet(args: argparse.Namespace) -> int:
    from kubernetes import config

    from .kubelet import FakeKubelet

    api_client = config.new_client_from_config(config_file=args.kubeconfig)
    complete_after = args.complete_after if args.complete_after > 0 else None
    FakeKubelet(api_client, complete_after=complete_after).run_forever()
    return 0


def cmd_dev_image(args: argparse.Namespace) -> int:
    from .images import operator_image

    started = time.monotonic()
    try:
        image = operator_image()
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"agentcred dev image: {error}", file=sys.stderr)
        return 1
    print(f"{image.name} ({time.monotonic() - started:.0f}s; cached by content)", file=sys.stderr)
    print(f"image archive\t{image.archive}")
    print(f"SBOM\t{image.sbom}")
    return 0


def cmd_dev_dist(args: argparse.Namespace) -> int:
    """The release artifacts: the chart packaged by helm (its default image tag the one built),
    the image archive and its SBOM."""
    from .binaries import ensure_binaries
    from .images import REPO, operator_image

    try:
        image = operator_image()
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"agentcred dev dist: {error}", file=sys.stderr)
        return 1
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    helm = ensure_binaries()["helm"]
    subprocess.run([str(helm), "package", str(REPO / "charts" / "agentcred"), "-d", str(out)], check=True)
    tag = image.name.rsplit(":", 1)[1]
    shutil.copy(image.archive, out / f"agentcred-operator-{tag}.oci.tar")
    shutil.copy(image.sbom, out / f"agentcred-operator-{tag}.cdx.json")
    for artifact in sorted(out.iterdir()):
        print(f"{artifact}\t{artifact.stat().st_size} bytes")
    return 0


def cmd_dev_relay(args: argparse.Namespace) -> int:
    from .relay import run

    run(args.listen, args.to)
    return 0


def add_dev_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = commands.add_parser("dev", help="a local control plane for development").add_subparsers(
        dest="dev_command", required=True
    )
    build = dev.add_parser("build", help="build (or find in the cache) the control plane binaries")
    build.set_defaults(func=cmd_dev_build)
    named = argparse.ArgumentParser(add_help=False)
    named.add_argument(
        "--name", help="which local control plane (default: one per checkout, named after the folder `dev up` ran in)"
    )
    up = dev.add_parser(
        "up",
        parents=[named],
        help="start etcd, kube-apiserver, kube-controller-manager and a real node (kubelet, kube-scheduler, "
        "containerd, runc)",
    )
    nodes = up.add_mutually_exclusive_group()
    nodes.add_argument(
        "--stand-in",
        action="store_true",
        help="no real node: a stand-in binds pods and gives them phases, and no container runs (for hosts that "
        "cannot run a node, and for thousands of pods)",
    )
    nodes.add_argument("--no-kubelet", action="store_true", help="no node at all (pods stay Pending)")
    nodes.add_argument(
        "--kubelet-defaults",
        action="store_true",
        help="the real node's kubelet with its own default syncFrequency (1m) instead of 10s: Secret changes "
        "then reach containers up to ~90s late",
    )
    up.add_argument(
        "--complete-after",
        type=float,
        default=DEFAULT_COMPLETE_AFTER,
        metavar="SECONDS",
        help=f"with --stand-in: a Job's pod succeeds this long after it starts running (default "
        f"{DEFAULT_COMPLETE_AFTER:g}; 0: never by itself)",
    )
    up.set_defaults(func=cmd_dev_up)
    down = dev.add_parser(
        "down", parents=[named], help="stop the local control plane, wait until its processes exit, remove its files"
    )
    down.set_defaults(func=cmd_dev_down)
    kubeconfig = dev.add_parser("kubeconfig", parents=[named], help="print the admin kubeconfig path")
    kubeconfig.set_defaults(func=cmd_dev_kubeconfig)
    kubelet = dev.add_parser(
        "kubelet", help="run the scheduler/kubelet stand-in in the foreground (`dev up` starts one for you)"
    )
    kubelet.add_argument("--kubeconfig", required=True, help="the control plane's admin kubeconfig")
    kubelet.add_argument(
        "--complete-after",
        type=float,
        default=DEFAULT_COMPLETE_AFTER,
        metavar="SECONDS",
        help=f"a Job's pod succeeds this long after it starts running (default {DEFAULT_COMPLETE_AFTER:g}; "
        "0: never by itself)",
    )
    kubelet.set_defaults(func=cmd_dev_kubelet)
    image = dev.add_parser(
        "image", help="write the operator's image (OCI archive, no Docker; needs root and mmdebstrap) and its SBOM"
    )
    image.set_defaults(func=cmd_dev_image)
    dist = dev.add_parser("dist", help="the release artifacts: helm package of the chart, the image archive, its SBOM")
    dist.add_argument("--out", default="dist", help="where to write them (default dist/)")
    dist.set_defaults(func=cmd_dev_dist)
    link = dev.add_parser(
        "csi-link",
        parents=[named],
        help="point the local node's CSI plugin at a running operator (for delivery: csi; after `agentcred run`)",
    )
    link.add_argument(
        "--url", default="https://127.0.0.1:8443", help="the operator's HTTPS endpoint (default %(default)s)"
    )
    link.set_defaults(func=cmd_dev_csi_link)
    relay = dev.add_parser("relay", help="forward TCP connections (a real node starts one for its pods)")
    relay.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to accept connections")
    relay.add_argument("--to", required=True, metavar="HOST:PORT", help="where to forward each of them")
    relay.add_argument("--folder", help="the node folder this relay belongs to (for `dev down`)")
    relay.set_defaults(func=cmd_dev_relay)
