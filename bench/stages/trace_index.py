"""`trace-index`: one trace lookup against an index of 10,000 live values, in process (by
value, by fingerprint, by short fingerprint, a minted token, an unknown string): the
operator's own tracer without the HTTP around it.

A micro-benchmark of internal code by design, so the one bench module that imports the
runtime: the import contract in pyproject.toml names each module it may use.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from agentcred.api.fingerprints import short
from agentcred.api.projection import IssuedValue, ProjectionState
from agentcred.platform.fingerprints import Fingerprints
from agentcred.platform.keys import KeyRing, encode_jwt
from agentcred.platform.revocations import RevocationList
from agentcred.rules.leaks import Candidate
from agentcred.runtime.leaks.tracer import Tracer
from agentcred.runtime.store import ProjectionStore

from ..context import Context
from ..harness import summary_ms


def run(ctx: Context) -> dict[str, Any]:
    return {"index": ctx.options.trace_index, "lookups": trace_in_process(ctx.options.trace_index)}


class _NothingLive:
    """The cluster as the lookup benchmark sees it: no live pod, no credential to judge."""

    def leading(self) -> bool:
        return True

    def credential(self, namespace: str, name: str) -> None:
        return None

    def credentials(self, namespace: str | None = None) -> list[Any]:
        return []

    def pod(self, key: str) -> None:
        return None

    def pod_by_name(self, namespace: str, name: str) -> None:
        return None

    def live_pods(self, namespace: str) -> list[Any]:
        return []


def trace_in_process(size: int) -> dict[str, Any]:
    ring = KeyRing.generate(dt.datetime.now(dt.timezone.utc))
    fingerprints = Fingerprints(lambda: ring)
    store, now = ProjectionStore(), dt.datetime.now(dt.timezone.utc)
    issuer = "https://agentcred.bench"
    tokens, statics = [], []
    for i in range(size):
        uid, jti = f"uid-{i}", f"jti-{i}"
        if i % 2:
            value = f"sk-static-{i:08d}".encode()
            statics.append(value)
            issued = IssuedValue(
                "vendor",
                "tool",
                now,
                now + dt.timedelta(minutes=15),
                now,
                fingerprints(value),
                None,
                source="secretRef",
            )
            name = "vendor"
        else:
            claims = {"iss": issuer, "iat": int(now.timestamp()), "exp": int(now.timestamp()) + 900, "jti": jti,
                      "agentcred": {"namespace": "ns", "credential": "llm", "pod": f"p{i}", "podUID": uid}}  # fmt: skip
            value = encode_jwt(claims, ring.current("EdDSA")).encode()
            tokens.append(value)
            issued = IssuedValue("llm", "model", now, now + dt.timedelta(minutes=15), now, fingerprints(value), jti)
            name = "llm"
        store.put(ProjectionState("ns", f"{i:016x}", f"p{i}", uid, None, values={name: issued}))
    tracer = Tracer(
        keyring=lambda: ring,
        issuer=issuer,
        fingerprints=fingerprints,
        store=store,
        revocations=RevocationList(),
        view=_NothingLive(),
    )
    samples = 500
    kinds = {
        "static value": [Candidate(token=statics[i * 7 % len(statics)].decode()) for i in range(samples)],
        "minted token": [Candidate(token=tokens[i * 7 % len(tokens)].decode()) for i in range(samples)],
        "fingerprint": [Candidate(fingerprint=fingerprints(statics[i * 3 % len(statics)])) for i in range(samples)],
        "short fingerprint": [
            Candidate(fingerprint=short(fingerprints(statics[i * 3 % len(statics)]))) for i in range(samples // 10)
        ],
        "unknown string": [Candidate(token=f"ghp_unknown{i:030d}") for i in range(samples)],
    }
    figures = {}
    for kind, candidates in kinds.items():
        durations = []
        for candidate in candidates:
            started = time.perf_counter()
            trace = tracer.trace(candidate)
            durations.append(time.perf_counter() - started)
            assert (trace.verdict == "unknown") == (kind == "unknown string"), (kind, trace.verdict)
        figures[kind] = summary_ms(durations)
    return figures
