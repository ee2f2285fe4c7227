"""Everything the suite's operators said, kept to be searched for secret values at the end.

A session-long watcher records every value written into a managed Secret (the needles),
and every Event and every AgentCredential status (part of the haystack), so the final
leak check also covers objects whose namespaces are long deleted.
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any, Callable

from kubernetes import watch

from agentcred import labels, model
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

    def start(self) -> "Witness":
        core, custom = self.cluster.core, self.cluster.custom
        self._follow(lambda **kw: core.list_secret_for_all_namespaces(
            label_selector=f"{labels.MANAGED_LABEL}=true", **kw), self._secret)
        self._follow(core.list_event_for_all_namespaces, lambda obj: self.events.append(json.dumps(obj)))
        self._follow(lambda **kw: custom.list_cluster_custom_object(model.GROUP, model.VERSION, model.PLURAL, **kw),
                     lambda obj: self.statuses.append(json.dumps(obj.get("status") or {})))
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
        haystacks = {"events": "\n".join(self.events), "statuses": "\n".join(self.statuses),
                     "operator logs": "\n".join(self.logs), **extra_haystacks}
        found = []
        for where, text in haystacks.items():
            for value in self.values:
                parts = value.split(".")
                needles = [value] + ([parts[2]] if len(parts) == 3 and len(parts[2]) > 20 else [])
                if any(needle in text for needle in needles):
                    found.append(where)
                    break
        return found
