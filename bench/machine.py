"""The machine a run measured on: cores, memory, versions, and the load average at the start."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from agentcred.devcluster.binaries import ETCD_VERSION, KUBERNETES_VERSION


def machine() -> dict[str, Any]:
    def version(package: str) -> str:
        try:
            return package_version(package)
        except Exception:  # noqa: BLE001 - a figure's context, never a reason to fail
            return "?"

    go = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip() if shutil.which("go") else "?"
    cpu = "?"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    memory = "?"
    try:
        memory = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kubernetes": KUBERNETES_VERSION,
        "etcd": ETCD_VERSION,
        "go": go,
        "kopf": version("kopf"),
        "aiohttp": version("aiohttp"),
        "agentcred": version("agentcred"),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load_at_start": os.getloadavg(),
    }
