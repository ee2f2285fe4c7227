"""Processes beside the benchmark, handled one way: started with their output in a log, read
from /proc (RSS, peak RSS, CPU), stopped (SIGTERM, then SIGKILL), profiled with py-spy, and a
fixed CPU load to run beside a stage (`--background-load`).

The operator itself is launched by `agentcred.devcluster.local_operator.LocalOperator` (see
`bench/under_test.py`); everything else the benchmark runs (External Secrets, Caddy, the
model-API stand-in, the busy loops) is a `Child`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from .profiles import summarize


def usage(pid: int) -> dict[str, float]:
    """RSS, peak RSS (VmHWM) and CPU seconds (user + system) of one process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "peak_rss_mb": int(fields["VmHWM"].split()[0]) / 1024,
        "cpu_seconds": (int(stat[11]) + int(stat[12])) / ticks,
    }


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ChildExited(RuntimeError):
    """A child process ended while the benchmark still needed it (its log's tail in the message)."""


class Child:
    """One child process, its output appended to `log`; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.log = name, log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                list(args), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def assert_alive(self) -> None:
        if not self.alive():
            raise ChildExited(f"{self.name} exited with {self.process.returncode}:\n{log_tail(self.log)}")

    def usage(self) -> dict[str, float]:
        self.assert_alive()
        return usage(self.pid)

    def stop(self, timeout: float = 30.0) -> None:
        if not self.alive():
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def profiled(pid: int | None, raw: Path, *, enabled: bool = True) -> Iterator[None]:
    """py-spy on one process for the duration: collapsed stacks in `raw`, and the hottest
    functions (self and inclusive) beside it in `<raw>-top.txt`. Nothing without py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not enabled or pid is None or not Path(spy).exists():
        yield
        return
    raw.parent.mkdir(parents=True, exist_ok=True)
    args = [spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--output", str(raw)]
    recorder = subprocess.Popen(
        [*args, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait(timeout=10)
        if raw.exists():
            summarize(raw, raw.with_name(raw.stem + "-top.txt"))


BUSY_LOOP = "while True:\n    pass\n"


@contextmanager
def background_load(cores: int, log: Path) -> Iterator[list[int]]:
    """`cores` processes each spinning one core at normal priority for the duration: a steady,
    known load beside a stage (as CI runners and developers' machines often have), so its
    figures can be set beside the same stage's on a quieter machine. Yields their pids."""
    children = [Child(f"busy loop {i}", [sys.executable, "-c", BUSY_LOOP], log) for i in range(cores)]
    try:
        yield [child.pid for child in children]
    finally:
        for child in children:
            child.stop(timeout=5)
