"""Leak response (runtime/leaks/response.py) without a cluster: a reported value is revoked in
the pod that holds it, then reissued or the pod quarantined as `spec.onLeak` says; a static
value is taken from every pod holding it and marked compromised until it is rotated upstream;
a token whose pod ended goes on the revocation list; a string that is not ours changes nothing.
The responder and tracer are wired as build_parts wires them, over support.runtime's parts."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import jwt

from agentcred.api import labels
from agentcred.api.pods import PodTask
from agentcred.api.times import utcnow
from agentcred.platform.keys import KeyRing, encode_jwt
from agentcred.rules.credentials import CredentialRecord, credential_record
from agentcred.rules.leaks import Candidate
from agentcred.runtime.leaks.response import LeakResponder, Reporter
from agentcred.runtime.leaks.tracer import Tracer
from samples import EXCEPTION, STATIC_SOURCE, credential
from support.runtime import ISSUER, Runtime
from support.views import FixedView

NS = "agents"
OPERATOR_NAMESPACE = "agentcred-system"
SCANNER = Reporter(OPERATOR_NAMESPACE, "secret-scanner", everywhere=True)  # listed cluster-wide
FOUND_AT = {"type": "agentcred_token", "url": "https://git.example/acme/app/blob/main/notes.md", "source": "scan"}
UPSTREAM_VALUE = b"sk-vendor-0123456789"


def record(name: str = "research-llm", **spec: Any) -> CredentialRecord:
    spec.setdefault("projection", {"mountPath": f"/var/run/agentcred/{name}"})
    body = credential(name=name, namespace=NS, **spec)
    body["metadata"].update(uid=f"{name}-uid", creationTimestamp="2026-11-01T00:00:00Z", generation=1)
    return credential_record(body)


def static_record() -> CredentialRecord:
    return record("vendor-key", category="tool", source=STATIC_SOURCE, exception=EXCEPTION)


def task(name: str, binding: str, credentials: tuple[str, ...] = ("research-llm",)) -> PodTask:
    return PodTask(
        NS,
        name,
        f"{name}-uid",
        "research-agent",
        binding,
        credentials,
        "job-1",
        "Running",
        deleted=False,
        gated=False,
        admitted_at=utcnow() - dt.timedelta(seconds=5),
        created_at=utcnow() - dt.timedelta(seconds=5),
    )


AGENT = task("agent", "0123456789abcdef")
HELPER = task("helper", "1111111111111111")


class Responding(Runtime):
    """The runtime with the tracer and the leak responder, each pod issued its values."""

    def __init__(
        self,
        tmp_path: Path,
        records: tuple[CredentialRecord, ...],
        *pods: PodTask,
        upstream: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(tmp_path, FixedView(records={r.name: r for r in records}))
        if upstream is not None:  # the Secret a static credential copies from
            self.api.put_secret(NS, upstream)
        self.tracer = Tracer(
            keyring=lambda: self.ring,
            issuer=ISSUER,
            fingerprints=self.fingerprints,
            store=self.store,
            revocations=self.revocations,
            view=self.view,
        )
        self.responder = LeakResponder(
            self.tracer, self.reconciler, self.api, view=self.view, book=self.book, audit=self.audit, events=self.events
        )
        for pod in pods:
            self.admit(dataclasses.replace(pod, gated=True))
            asyncio.run(self.reconciler.reconcile(pod.key))
            self.view.pods[pod.key] = pod
        assert [line["action"] for line in self.audit_lines()] == ["issue"] * len(pods)

    def value(self, pod: PodTask, name: str = "research-llm") -> str | None:
        encoded = self.secret_data(pod).get(labels.value_key(name))
        return base64.b64decode(encoded).decode() if encoded else None

    def report(self, candidate: Candidate, reporter: Reporter = SCANNER) -> dict[str, Any]:
        return asyncio.run(self.responder.report(candidate, reporter))

    def claims(self, token: str) -> dict[str, Any]:
        header = jwt.get_unverified_header(token)
        (key,) = [k for k in self.ring.jwks()["keys"] if k["kid"] == header["kid"]]
        return jwt.decode(token, jwt.PyJWK(key), algorithms=[key["alg"]], audience="https://llm-gateway.internal")

    def lines(self, action: str) -> list[dict[str, Any]]:
        return [line for line in self.audit_lines() if line["action"] == action]


def test_a_leaked_token_is_revoked_and_a_fresh_one_replaces_it_in_the_running_pod(tmp_path: Path) -> None:
    runtime = Responding(tmp_path, (record(),), AGENT)
    leaked = runtime.value(AGENT)
    assert leaked is not None
    old = runtime.claims(leaked)
    answer = runtime.report(Candidate(token=leaked, **FOUND_AT))
    assert (answer["verdict"], answer["outcome"], answer["revoked"], answer["next"]) == (
        "ours",
        "revoked",
        1,
        ["reissued"],
    )
    assert answer["label"] == "true_positive" and answer["holders"][0]["podUID"] == AGENT.uid
    # Every token of the pod for the credential issued until now is revoked ...
    issued_at = dt.datetime.fromtimestamp(old["iat"], dt.timezone.utc)
    assert runtime.revocations.covers(AGENT.uid, "research-llm", issued_at, (old["jti"],))
    # ... and the pod holds a fresh value, issued after the cut-off, which the list does not cover.
    fresh = runtime.value(AGENT)
    assert fresh is not None and fresh != leaked
    new = runtime.claims(fresh)
    assert new["jti"] != old["jti"] and new["agentcred"]["podUID"] == AGENT.uid
    assert not runtime.revocations.covers(
        AGENT.uid, "research-llm", dt.datetime.fromtimestamp(new["iat"], dt.timezone.utc), (new["jti"],)
    )
    assert not runtime.revocations.bars(AGENT.uid, "research-llm", utcnow())
    (revoke,) = runtime.lines("revoke")
    assert (revoke["reason"], revoke["tokenId"], revoke["podUID"]) == ("leaked", old["jti"], AGENT.uid)
    (renew,) = runtime.lines("renew")
    assert renew["tokenId"] == new["jti"]
    (leak,) = runtime.lines("leak")
    assert (leak["outcome"], leak["credential"], leak["reporter"]) == (
        "revoked",
        "research-llm",
        "system:serviceaccount:agentcred-system:secret-scanner",
    )
    assert leak["fingerprint"].startswith("hmac-sha256:") and leak["reportedFrom"]["url"] == FOUND_AT["url"]
    assert leak["next"] == {f"{NS}/research-llm": "reissued"}
    assert leaked not in runtime.audit_path.read_text() and fresh not in runtime.audit_path.read_text()
    events = asyncio.run(runtime.events_posted())
    told = {(e["involvedObject"]["kind"], e["reason"]) for e in events}
    assert {("AgentCredential", "LeakReported"), ("Pod", "CredentialLeaked")} <= told
    assert all(leaked not in e["message"] for e in events)


def test_with_on_leak_quarantine_the_value_goes_and_the_pod_is_barred_and_labelled(tmp_path: Path) -> None:
    runtime = Responding(tmp_path, (record(onLeak="quarantine"),), AGENT)
    leaked = runtime.value(AGENT)
    assert leaked is not None
    answer = runtime.report(Candidate(token=leaked))
    assert (answer["outcome"], answer["revoked"], answer["next"]) == ("revoked", 1, ["quarantined"])
    assert runtime.value(AGENT) is None  # gone from the pod's Secret
    assert runtime.revocations.bars(AGENT.uid, "research-llm", utcnow())
    assert (NS, "agent", {"metadata": {"labels": {labels.QUARANTINED_LABEL: "true"}}}) in runtime.api.pod_patches
    (revoke,) = runtime.lines("revoke")
    assert revoke["reason"] == "leaked-quarantine"
    events = asyncio.run(runtime.events_posted())
    (quarantined,) = [e for e in events if e["reason"] == "Quarantined"]
    assert quarantined["involvedObject"]["name"] == "agent"
    # Planned again, the pod gets nothing: it is barred from the credential.
    asyncio.run(runtime.reconciler.reconcile(AGENT.key))
    assert runtime.value(AGENT) is None and runtime.lines("renew") == [] and len(runtime.lines("issue")) == 1


def test_a_leaked_static_value_leaves_every_pod_and_returns_only_once_rotated(tmp_path: Path) -> None:
    vendor = static_record()
    upstream = {
        "metadata": {
            "name": "upstream-key",
            "labels": {labels.SHARED_LABEL: "true"},
            "annotations": {labels.SHARED_WITH_ANNOTATION: "vendor-key/api-key"},
        },
        "data": {"api-key": base64.b64encode(UPSTREAM_VALUE).decode()},
    }
    pods = (
        dataclasses.replace(AGENT, credentials=("vendor-key",)),
        dataclasses.replace(HELPER, credentials=("vendor-key",)),
    )
    runtime = Responding(tmp_path, (vendor,), *pods, upstream=upstream)
    assert all(runtime.value(pod, "vendor-key") == UPSTREAM_VALUE.decode() for pod in pods)

    answer = runtime.report(Candidate(token=UPSTREAM_VALUE.decode()))
    assert (answer["outcome"], answer["revoked"], answer["next"]) == ("revoked", 2, ["compromised"])
    assert all(runtime.value(pod, "vendor-key") is None for pod in pods)
    assert sorted(line["podName"] for line in runtime.lines("revoke")) == ["agent", "helper"]
    (mark,) = runtime.book.marks(vendor)
    (leak,) = runtime.lines("leak")
    assert mark.fingerprint == leak["fingerprint"] == runtime.fingerprints(UPSTREAM_VALUE)
    asyncio.run(runtime.status.flush())
    status = runtime.api.statuses[(NS, "vendor-key")]
    compromised = next(c for c in status["conditions"] if c["type"] == "Compromised")
    assert (compromised["status"], compromised["reason"]) == ("True", "LeakReported")
    assert [m["fingerprint"] for m in status["compromised"]] == [mark.fingerprint]
    # Each pod is due to be planned again at once; while the upstream value is the leaked
    # one, planning gives it nothing, and says why.
    asyncio.run(runtime.run_scheduler_until(lambda: len(runtime.lines("deny")) == 2))
    assert sorted((line["reason"], line["podName"]) for line in runtime.lines("deny")) == [
        ("Compromised", "agent"),
        ("Compromised", "helper"),
    ]
    assert all(runtime.value(pod, "vendor-key") is None for pod in pods)
    assert UPSTREAM_VALUE.decode() not in runtime.audit_path.read_text()
    # Rotated upstream: the pod gets the new value, and the mark is lifted.
    upstream["data"]["api-key"] = base64.b64encode(b"sk-vendor-rotated-9876").decode()
    runtime.api.put_secret(NS, upstream)
    asyncio.run(runtime.reconciler.reconcile(pods[0].key))
    assert runtime.value(pods[0], "vendor-key") == "sk-vendor-rotated-9876"
    assert runtime.book.marks(vendor) == []


def test_a_leaked_token_of_an_ended_pod_goes_on_the_revocation_list(tmp_path: Path) -> None:
    """The pod ended before the operator revoked (or anyone noticed): its token would verify."""
    runtime = Responding(tmp_path, (record(),), AGENT)
    leaked = runtime.value(AGENT)
    assert leaked is not None
    claims = runtime.claims(leaked)
    runtime.view.pods[AGENT.key] = dataclasses.replace(AGENT, phase="Succeeded")
    answer = runtime.report(Candidate(token=leaked))
    assert (answer["outcome"], answer["revoked"], answer["next"]) == ("revoked", 1, ["none"])
    issued_at = dt.datetime.fromtimestamp(claims["iat"], dt.timezone.utc)
    assert runtime.revocations.covers(AGENT.uid, "research-llm", issued_at, (claims["jti"],))
    (revoke,) = runtime.lines("revoke")
    assert (revoke["reason"], revoke["podUID"]) == ("leaked", AGENT.uid)
    assert runtime.lines("renew") == []  # nobody to give a fresh value to


def test_strings_that_are_not_ours_change_nothing(tmp_path: Path) -> None:
    runtime = Responding(tmp_path, (record(),), AGENT)
    held = runtime.value(AGENT)
    # A token that names our issuer, signed by a key that is not ours.
    forged = encode_jwt(
        {"iss": ISSUER, "sub": "system:serviceaccount:agents:research-agent", "agentcred": {"podUID": AGENT.uid}},
        KeyRing.generate(utcnow()).current("EdDSA"),
    )
    for text, verdict in ((forged, "not-ours"), ("ghp_0123456789abcdefghijklmnopqrstuvwx", "unknown")):
        answer = runtime.report(Candidate(token=text))
        assert (answer["verdict"], answer["outcome"], answer["revoked"]) == (verdict, verdict, 0)
        assert answer["label"] == "false_positive"
        assert text not in runtime.audit_path.read_text()
    assert [line["verdict"] for line in runtime.lines("leak")] == ["not-ours", "unknown"]
    assert len(runtime.revocations) == 0 and runtime.value(AGENT) == held and runtime.lines("revoke") == []


def test_a_report_by_fingerprint_acts_only_in_the_reporters_namespace_or_from_a_cluster_reporter(
    tmp_path: Path,
) -> None:
    runtime = Responding(tmp_path, (record(),), AGENT)
    leaked = runtime.value(AGENT)
    assert leaked is not None
    fingerprint = runtime.fingerprints(leaked.encode())
    elsewhere = runtime.report(Candidate(fingerprint=fingerprint), Reporter("other-team", "scanner"))
    assert (elsewhere["verdict"], elsewhere["revoked"], elsewhere["holders"]) == ("unknown", 0, [])
    assert runtime.value(AGENT) == leaked and len(runtime.revocations) == 0
    answer = runtime.report(Candidate(fingerprint=fingerprint), SCANNER)
    assert (answer["outcome"], answer["revoked"], answer["next"]) == ("revoked", 1, ["reissued"])
    assert runtime.value(AGENT) not in (None, leaked)
