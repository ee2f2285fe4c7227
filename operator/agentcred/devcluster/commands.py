"""`agentcred dev ...`: a local control plane for development, from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _dev_state_path() -> Path:
    from .binaries import cache_root

    return cache_root() / "dev" / "state.json"


def cmd_dev_build(args: argparse.Namespace) -> int:
    from .binaries import ensure_binaries

    for name, path in sorted(ensure_binaries().items()):
        print(f"{name}\t{path}")
    return 0


def cmd_dev_up(args: argparse.Namespace) -> int:
    from .controlplane import ControlPlane, ControlPlaneState

    state_path = _dev_state_path()
    if state_path.exists():
        state = ControlPlaneState.load(state_path)
        print(f"a local control plane is already up at {state.server}", file=sys.stderr)
        print(f"export KUBECONFIG={state.kubeconfig}")
        return 0
    state_path.parent.mkdir(parents=True, exist_ok=True)
    from kubernetes import config

    from .binaries import ensure_binaries
    from .install import install_agentcred

    plane = ControlPlane(workdir=state_path.parent / "cluster", detach=True)
    state = plane.start()
    state.save(state_path)
    install_agentcred(config.new_client_from_config(config_file=state.kubeconfig))
    print(f"local control plane up at {state.server}, with the AgentCredential CRD", file=sys.stderr)
    print(f"kubectl: {ensure_binaries()['kubectl']}", file=sys.stderr)
    print(f"export KUBECONFIG={state.kubeconfig}")
    return 0


def cmd_dev_down(args: argparse.Namespace) -> int:
    import shutil

    from .controlplane import ControlPlaneState, stop_processes

    state_path = _dev_state_path()
    if not state_path.exists():
        print("no local control plane is up", file=sys.stderr)
        return 0
    state = ControlPlaneState.load(state_path)
    stop_processes(state.pids)
    shutil.rmtree(state.workdir, ignore_errors=True)
    state_path.unlink()
    print("local control plane stopped and removed", file=sys.stderr)
    return 0


def cmd_dev_kubeconfig(args: argparse.Namespace) -> int:
    from .controlplane import ControlPlaneState

    state_path = _dev_state_path()
    if not state_path.exists():
        print("no local control plane is up: run `agentcred dev up`", file=sys.stderr)
        return 1
    print(ControlPlaneState.load(state_path).kubeconfig)
    return 0
