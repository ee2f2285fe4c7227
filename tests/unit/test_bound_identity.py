"""A pod's identity token bound to the pod's own DPoP key, without a cluster: which credentials
bind it (rules.dpop), the key refused or accepted, the key kept in the sealed bookkeeping (and
the replaced value's key while it lives), and a follower that reads it back from the Secret's
metadata and believes no forged seal."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

import pytest

from agentcred.api.model import AgentCredentialSpec
from agentcred.api.pods import PodTask
from agentcred.api.projection import IssuedValue, new_projection, parse_projection, secret_body, with_values
from agentcred.platform.keys import KeyRing
from agentcred.rules.dpop import ProofRefused, binds_identity, check_pod_key, identity_bound_by
from agentcred.rules.seal import Bookkeeping
from agentcred.runtime.store import ProjectionStore
from agentcred.runtime.tokens.pod_keys import PodKeys
from samples import spec

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.timezone.utc)
RING = KeyRing.generate(NOW)
SEAL = Bookkeeping(lambda: RING)
JWT = {"audiences": ["https://llm-gateway.internal"]}
ROUTES = {"routes": [{"name": "docs", "path": "/mcp", "mcp": {"resource": "docs:handbook"}}]}


def made(**overrides: Any) -> AgentCredentialSpec:
    return AgentCredentialSpec.model_validate(spec(**overrides))


BOUND = made(source={"jwt": {**JWT, "dpop": "required"}})
OPTIONAL = made(source={"jwt": {**JWT, "dpop": "optional"}})
PLAIN = made()
GATEWAY_ONLY = made(source={"jwt": {**JWT, "dpop": "required"}}, projection={"delivery": "gateway"}, gateway=ROUTES)


def test_only_a_dpop_bound_value_written_into_the_pod_binds_its_identity() -> None:
    assert binds_identity(BOUND)
    assert not binds_identity(OPTIONAL) and not binds_identity(PLAIN) and not binds_identity(None)
    assert not binds_identity(GATEWAY_ONLY)  # no value, no key enters the pod


def test_csi_delivery_with_dpop_stays_refused() -> None:
    """The pod would hold no key to bind to: the combination is refused where it is declared."""
    with pytest.raises(ValueError, match="csi"):
        made(source={"jwt": {**JWT, "dpop": "required"}}, projection={"delivery": "csi", "mountPath": "/v"})


def test_one_bound_credential_binds_the_pods_identity_whatever_else_it_holds() -> None:
    assert identity_bound_by([("plain", PLAIN), ("bound", BOUND), ("gone", None)]) == ("bound",)
    assert identity_bound_by([("plain", PLAIN), ("optional", OPTIONAL), ("docs", GATEWAY_ONLY)]) == ()


@pytest.mark.parametrize(
    ("proof", "keys", "reason"),
    [
        (None, ("pod-key",), "dpop-missing"),
        ("fresh-key", ("pod-key",), "dpop-not-pod-key"),
        ("pod-key", (), "dpop-no-pod-key"),
    ],
)
def test_the_pods_key_or_a_refusal_naming_why(proof: str | None, keys: tuple[str, ...], reason: str) -> None:
    with pytest.raises(ProofRefused) as refused:
        check_pod_key(proof, keys, ("research-llm",))
    assert refused.value.reason == reason and "research-llm" in refused.value.message
    check_pod_key("pod-key", ("old-key", "pod-key"), ("research-llm",))  # accepted: no exception


def value(jkt: str | None, expires: dt.datetime = NOW + dt.timedelta(minutes=15)) -> IssuedValue:
    return IssuedValue("research-llm", "model", NOW, expires, NOW, "hmac-sha256:f", "t", jkt=jkt)


def task() -> PodTask:
    return PodTask(
        "agents",
        "agent",
        "pod-uid",
        "research-agent",
        "0123456789abcdef",
        ("research-llm",),
        None,
        "Running",
        False,
        False,
    )


def test_a_renewed_value_keeps_the_replaced_key_while_the_replaced_value_lives() -> None:
    """The kubelet may put the new dpop.jwk into the container up to a volume refresh later."""
    old = value("old-key", expires=NOW + dt.timedelta(minutes=2))
    state = with_values(new_projection(task()), {"research-llm": old})
    renewed = with_values(state, {"research-llm": value("new-key")}).values["research-llm"]
    assert renewed.pod_keys(NOW) == ("new-key", "old-key")
    assert renewed.pod_keys(NOW + dt.timedelta(minutes=2)) == ("new-key",)
    assert with_values(new_projection(task()), {"research-llm": value(None)}).values["research-llm"].pod_keys(NOW) == ()


def _secret(state: Any, sign: Any = SEAL.sign) -> dict[str, Any]:
    body = secret_body(state, {"research-llm": b"v"}, "pod-uid", sign)
    return {"metadata": {**body["metadata"], "namespace": "agents", "name": body["metadata"]["name"]}}


def test_the_keys_travel_in_the_sealed_bookkeeping() -> None:
    old = with_values(new_projection(task()), {"research-llm": value("old-key")})
    state = with_values(old, {"research-llm": value("new-key")})
    read = parse_projection(_secret(state), SEAL.verify)
    assert read is not None and read.sealed
    assert read.values["research-llm"] == state.values["research-llm"]


def follower(secret: dict[str, Any] | None, reads: list[str]) -> PodKeys:
    async def read(namespace: str, name: str) -> dict[str, Any] | None:
        reads.append(name)
        return secret

    return PodKeys(ProjectionStore(), read, SEAL.verify, leading=lambda: False, clock=lambda: 0.0)


def test_a_follower_reads_the_keys_from_the_secrets_sealed_metadata() -> None:
    state = with_values(new_projection(task()), {"research-llm": value("pod-key")})
    reads: list[str] = []
    keys = follower(_secret(state), reads)
    assert asyncio.run(keys.of(task(), NOW)) == ("pod-key",)
    assert asyncio.run(keys.of(task(), NOW)) == ("pod-key",) and len(reads) == 1  # kept a moment
    assert asyncio.run(keys.of(task(), NOW, fresh=True)) == ("pod-key",) and len(reads) == 2


def test_a_follower_believes_no_key_a_tenant_wrote_into_the_secret() -> None:
    """Whoever may edit Secrets in the namespace puts their own key on record: the seal fails."""
    forged = with_values(new_projection(task()), {"research-llm": value("attacker-key")})
    other = Bookkeeping(lambda: KeyRing.generate(NOW))
    assert asyncio.run(follower(_secret(forged, other.sign), []).of(task(), NOW)) == ()
    # Another pod's bookkeeping (its UID) is not this pod's either.
    elsewhere = dataclasses.replace(forged, pod_uid="another-uid")
    assert asyncio.run(follower(_secret(elsewhere), []).of(task(), NOW)) == ()
    assert asyncio.run(follower(None, []).of(task(), NOW)) == ()


def test_a_proof_that_vouches_for_an_actor_pod_is_spent_by_it_too() -> None:
    """Found attacking the actor token: the victim pod's own proof, captured from its request,
    was fresh again under another pod's subject (proofs were remembered per subject pod only),
    so it vouched for the copied identity token as actor. The actor pod spends it too."""
    from agentcred.platform.proofs import ProofChecker
    from agentcred.rules.dpop import Covered
    from support.dpop import DPoPKey

    checker = ProofChecker()
    url = "https://agentcred.example/oauth2/token"
    captured = DPoPKey().proof("POST", url)
    checker.check(captured, Covered("POST", url), "victim-uid")  # the victim's own request
    replayed = checker.check(captured, Covered("POST", url), "attacker-uid")  # fresh for another subject
    with pytest.raises(ProofRefused) as refused:
        checker.spend(replayed, "victim-uid")
    assert refused.value.reason == "dpop-replayed"
