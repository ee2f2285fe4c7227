"""DPoP-bound values written into pods: each bound to a key made for that pod and value, the
private key written next to it in the pod's own Secret and mounted beside it. The value is
judged by PyJWT, the key read by PyJWT, the thumbprint computed here (support.dpop)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json

from agentcred.api import labels
from agentcred.api.projection import new_projection, secret_body, secret_patch, with_values
from agentcred.api.times import utcnow
from agentcred.rules.admission import inject
from agentcred.rules.planning import Issue
from agentcred.sources.jwt import JwtSource
from support.dpop import DPoPKey, bound_to
from unit.test_admission import KEYS, NS, lookup_of, pod
from unit.test_admission import record as admission_record
from unit.test_token_service import GATEWAY, ISSUER, RING, record, task

REQUIRED = {"jwt": {"audiences": [GATEWAY], "dpop": "required"}}


def produce(source_spec: dict[str, object]) -> object:
    now = utcnow()
    issue = Issue("research-llm", now + dt.timedelta(minutes=15), now)
    return asyncio.run(JwtSource(lambda: RING, ISSUER).produce(task(), record(source=source_spec), issue, now))


def test_a_value_of_a_credential_requiring_dpop_is_bound_to_its_own_key() -> None:
    produced = produce(REQUIRED)
    assert produced.key is not None  # type: ignore[attr-defined]
    private = json.loads(produced.key)  # type: ignore[attr-defined]
    assert private["kty"] == "EC" and private["crv"] == "P-256" and "d" in private and private["alg"] == "ES256"
    key = DPoPKey.from_private_jwk(private)
    claims = bound_to(produced.value.decode(), key, RING.jwks(), GATEWAY, ISSUER)  # type: ignore[attr-defined]
    assert claims["agentcred"]["podUID"] == "pod-uid"
    # Every value its own key: a renewal rotates the key with the value.
    again = produce(REQUIRED)
    assert json.loads(again.key)["x"] != private["x"]  # type: ignore[attr-defined]


def test_a_value_of_an_optional_credential_is_a_bearer_token_without_a_key() -> None:
    produced = produce({"jwt": {"audiences": [GATEWAY]}})
    assert produced.key is None  # type: ignore[attr-defined]
    assert "cnf" not in json.loads(base64.urlsafe_b64decode(produced.value.split(b".")[1] + b"=="))  # type: ignore[attr-defined]


def test_the_key_is_written_next_to_the_value_and_removed_with_it() -> None:
    produced = produce(REQUIRED)
    state = with_values(new_projection(task()), {"research-llm": produced.issued})  # type: ignore[attr-defined]
    body = secret_body(
        state,
        {"research-llm": produced.value},  # type: ignore[attr-defined]
        "pod-uid",
        lambda message: "seal",
        keys={"research-llm": produced.key},  # type: ignore[attr-defined,dict-item]
    )
    assert base64.b64decode(body["data"]["research-llm.dpop.jwk"]) == produced.key  # type: ignore[attr-defined]
    plain = produce({"jwt": {"audiences": [GATEWAY]}})
    renewed = secret_patch(state, {"research-llm": plain.value}, (), previous=state, sign=lambda m: "s")  # type: ignore[attr-defined]
    assert renewed["data"]["research-llm.dpop.jwk"] is None  # no stale key left beside a bearer value


def test_the_key_is_mounted_beside_the_value_only_for_credentials_requiring_dpop() -> None:
    admitted = inject(pod(), NS, lookup_of(admission_record(source=REQUIRED, projection={"mountPath": "/creds"})), KEYS)
    volume = next(v for v in admitted["spec"]["volumes"] if v["name"] == labels.volume_name("research-llm"))
    items = volume["projected"]["sources"][0]["secret"]["items"]
    assert [i["path"] for i in items] == ["token", "expires-at", "dpop.jwk"]
    assert items[2]["key"] == "research-llm.dpop.jwk"
