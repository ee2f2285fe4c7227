"""Everything the suite's operators said, kept to be searched for secret values at the end.

A session-long watcher records every value written into a managed Secret (the needles),
and every Event and every AgentCredential status (part of the haystack), so the final
leak check also covers objects whose namespaces are long deleted.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import watch

from agentcred.api import labels, model
from clusterkit import Cluster


class Witness:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.values: set[str] = set()
        self.events: list[str] = []
        self.statuses: list[str] = []
        self.logs: list[str] = []  # operator logs collected as their processes end
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Witness:
        core, custom = self.cluster.core, self.cluster.custom
        self._follow(
            lambda **kw: core.list_secret_for_all_namespaces(label_selector=f"{labels.MANAGED_LABEL}=true", **kw),
            self._secret,
        )
        self._follow(core.list_event_for_all_namespaces, lambda obj: self.events.append(json.dumps(obj)))
        self._follow(
            lambda **kw: custom.list_cluster_custom_object(model.GROUP, model.VERSION, model.PLURAL, **kw),
            lambda obj: self.statuses.append(json.dumps(obj.get("status") or {})),
        )
        return self

    def stop(self) -> None:
        self._stop.set()

    def _secret(self, obj: dict[str, Any]) -> None:
        for encoded in (obj.get("data") or {}).values():
            value = base64.b64decode(encoded).decode("utf-8", errors="replace")
            if len(value) >= 12 and not value.endswith("Z"):  # values, not the expires-at files
                self.values.add(value)

    def _follow(self, lister: Callable[..., Any], record: Callable[[dict[str, Any]], None]) -> None:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    for event in watch.Watch().stream(lister, timeout_seconds=5, _preload_content=False):
                        record(event["raw_object"])
                except Exception:  # the control plane restarts in fault tests; watch again
                    self._stop.wait(0.5)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def leaks(self, extra_haystacks: dict[str, str]) -> list[str]:
        """Where any recorded value appears (by place, never showing the value)."""
        haystacks = {
            "events": "\n".join(self.events),
            "statuses": "\n".join(self.statuses),
            "operator logs": "\n".join(self.logs),
            **extra_haystacks,
        }
        needles = set(self.values)
        for value in self.values:  # a JWT's signature alone is as telling as the whole token
            parts = value.split(".")
            if len(parts) == 3 and len(parts[2]) > 20:
                needles.add(parts[2])
        finder = NeedleFinder(needles)
        return [where for where, text in haystacks.items() if finder.found_in(text)]


class NeedleFinder:
    """Does any of many needles occur in a text? One pass over the text, not one per needle.

    A needle can only occur inside a run of characters that needles are made of, so the
    text is cut into such runs (a regular expression, in C); each distinct run is then
    checked at every offset against the needles' fixed-length prefixes (a dict lookup).
    The cost grows with the text, not with text x needles.
    """

    def __init__(self, needles: set[str]) -> None:
        self.width = min((len(n) for n in needles), default=0)
        self.prefixes: dict[str, list[str]] = {}
        for needle in needles:
            self.prefixes.setdefault(needle[: self.width], []).append(needle)
        alphabet = "".join(sorted({c for needle in needles for c in needle}))
        self.runs = re.compile(f"[{re.escape(alphabet)}]{{{self.width},}}") if needles else None

    def found_in(self, text: str) -> bool:
        if self.runs is None:
            return False
        width = self.width
        for run in set(self.runs.findall(text)):
            for offset in range(len(run) - width + 1):
                for needle in self.prefixes.get(run[offset : offset + width], ()):
                    if run.startswith(needle, offset):
                        return True
        return False
