"""Features an install does not use cost it no memory: gRPC with Envoy's protobufs (13 MB) are
loaded only when a gateway is allowed to ask, the CEL package (12 MB, its command line with
it) only when a condition is compiled."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("cel", "grpc", "envoy")


def modules_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return set(done.stdout.split())


def test_the_operator_starts_without_cel_or_grpc() -> None:
    loaded = modules_after("import agentcred.app.operator, agentcred.app.handlers")
    assert loaded.isdisjoint(HEAVY), f"loaded at start: {sorted(loaded & set(HEAVY))}"


def test_a_condition_loads_cel_when_it_is_compiled() -> None:
    loaded = modules_after(
        "from agentcred.rules.gateway.conditions import compiled\nassert compiled('1 + 1 == 2') is not None"
    )
    assert "cel" in loaded
