"""The admission webhook's endpoint (runtime/serving/admission_webhook.py) without a cluster:
an AdmissionReview for an opted-in pod is answered with the JSON patch that gates, seals and
mounts it; a pod the webhook will not admit is refused (403) with a message naming the
credential, the ServiceAccount and the namespace, and a `deny` audit line; a malformed review
gets a clear refusal, never a crash. Wired as build_parts wires it, served on loopback."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import test_utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentcred.api import labels
from agentcred.api.pods import pod_task
from agentcred.api.times import utcnow
from agentcred.api.webhook_configuration import HANDLER_ID
from agentcred.app.config import OperatorConfig
from agentcred.platform.keys import KeyRing
from agentcred.rules import seal
from agentcred.rules.credentials import CredentialRecord, credential_record
from agentcred.rules.verdicts import Verdict
from agentcred.runtime.audit import AuditTrail
from agentcred.runtime.serving.admission_webhook import AdmissionWebhook
from samples import credential
from support.fakes import json_patch
from support.views import FixedView

NS = "agents"
CONFIG = OperatorConfig(namespace="agentcred")
RING = KeyRing.generate(utcnow())  # generated once: an RSA key takes a while


def record(name: str = "research-llm", **spec: Any) -> CredentialRecord:
    spec.setdefault("projection", {"mountPath": f"/var/run/agentcred/{name}"})
    body = credential(name=name, namespace=NS, **spec)
    body["metadata"].update(uid=f"{name}-uid", creationTimestamp="2026-11-01T00:00:00Z", generation=1)
    return credential_record(body)


def pod(credentials: Any = "research-llm", service_account: Any = "research-agent") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "task-",
            "namespace": NS,
            "labels": {labels.INJECT_LABEL: "true", "app": "agent"},
            "annotations": {labels.CREDENTIALS_ANNOTATION: credentials},
        },
        "spec": {
            "serviceAccountName": service_account,
            "containers": [{"name": "agent", "image": "agent:1", "env": [{"name": "MODE", "value": "batch"}]}],
        },
    }


def review(body: dict[str, Any], operation: str = "CREATE", uid: str = "req-1") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NS,
            "operation": operation,
            "object": body,
        },
    }


class Webhook:
    """The webhook as app.operator.build_parts wires it, over a FixedView."""

    def __init__(self, tmp_path: Path, *records: CredentialRecord) -> None:
        self.ring = RING
        self.view = FixedView(records={r.name: r for r in records or (record(),)})
        self.audit_path = tmp_path / "audit.log"
        self.ready = asyncio.Event()
        self.ready.set()  # the indices have listed
        self.webhook = AdmissionWebhook(
            self.view,
            lambda: self.ring,
            AuditTrail(str(self.audit_path)),
            issuer=CONFIG.effective_issuer,
            ready=self.ready,
            unwatched=CONFIG.unwatched,
        )

    def post(self, body: bytes | str) -> tuple[int, str, Any]:
        """POST to the webhook's path on a loopback server: status, reason, the JSON answer (or None)."""

        async def exchange() -> tuple[int, str, Any]:
            async with test_utils.TestClient(test_utils.TestServer(self.webhook.app())) as client:
                answer = await client.post(f"/{HANDLER_ID}", data=body, headers={"Content-Type": "application/json"})
                text = await answer.text()
                is_json = answer.content_type == "application/json"
                return answer.status, str(answer.reason), json.loads(text) if is_json else None

        return asyncio.run(exchange())

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        status, _, answer = self.post(json.dumps(review(body)))
        assert status == 200 and answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
        return answer["response"]

    def audit_lines(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]


def patched(body: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    return json_patch(body, operations)


def test_an_opted_in_pod_is_admitted_gated_sealed_and_mounted(tmp_path: Path) -> None:
    webhook = Webhook(tmp_path)
    body = pod()
    response = webhook.answer(body)
    assert (response["uid"], response["allowed"]) == ("req-1", True)
    admitted = patched(body, response)
    meta, spec = admitted["metadata"], admitted["spec"]
    binding = meta["annotations"][labels.BINDING_ANNOTATION]
    assert labels.is_binding(binding)
    assert spec["schedulingGates"] == [{"name": labels.SCHEDULING_GATE}]
    # The seal holds for exactly what was admitted, under the ring's admission key.
    admitted["metadata"]["creationTimestamp"] = meta["annotations"][labels.ADMITTED_ANNOTATION]
    task = pod_task(admitted)
    assert task is not None and task.gated and task.credentials == ("research-llm",)
    assert (task.binding, task.service_account) == (binding, "research-agent")
    assert seal.admitted(task, webhook.ring.mac_keys("admission"))
    assert not seal.admitted(dataclasses.replace(task, service_account="intruder"), webhook.ring.mac_keys("admission"))
    # One read-only volume for the credential, and the pod's identity for the token service.
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert set(volumes) == {labels.volume_name("research-llm"), labels.IDENTITY_VOLUME}
    (source,) = volumes[labels.volume_name("research-llm")]["projected"]["sources"]
    assert source["secret"]["name"] == labels.secret_name(binding)
    token = volumes[labels.IDENTITY_VOLUME]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == labels.SERVICE_ACCOUNT_AUDIENCE
    (container,) = spec["containers"]
    assert {(m["name"], m["mountPath"], m["readOnly"]) for m in container["volumeMounts"]} == {
        (labels.volume_name("research-llm"), "/var/run/agentcred/research-llm", True),
        (labels.IDENTITY_VOLUME, labels.IDENTITY_MOUNT_PATH, True),
    }
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODE"] == "batch"  # the pod's own, kept
    assert env["AGENTCRED_TOKEN_ENDPOINT"] == f"{CONFIG.effective_issuer}/oauth2/token"
    # Nothing else of the pod changed.
    assert {k: v for k, v in meta.items() if k != "annotations" and k != "creationTimestamp"} == {
        k: v for k, v in body["metadata"].items() if k != "annotations"
    }
    assert webhook.audit_lines() == []  # refusals are audited; admissions are the operator's to record


def test_the_reinvoked_webhook_leaves_its_own_admission_as_it_is(tmp_path: Path) -> None:
    webhook = Webhook(tmp_path)
    admitted = patched(pod(), webhook.answer(pod()))
    again = webhook.answer(admitted)
    assert again["allowed"] is True and "patch" not in again


@pytest.mark.parametrize(
    ("operation", "body"),
    [
        ("UPDATE", pod()),  # only a CREATE is the webhook's to mutate
        ("CREATE", {**pod(), "metadata": {**pod()["metadata"], "labels": {"app": "agent"}}}),  # not opted in
    ],
)
def test_what_the_webhook_is_not_for_is_allowed_unchanged(tmp_path: Path, operation: str, body: dict) -> None:
    webhook = Webhook(tmp_path)
    status, _, answer = webhook.post(json.dumps(review(body, operation)))
    assert status == 200 and answer["response"] == {"uid": "req-1", "allowed": True}


NOT_READY = Verdict(False, "PolicyDenied", "AgentCredentialPolicy strict does not allow category model")


@pytest.mark.parametrize(
    ("credentials", "service_account", "records", "phrases", "category"),
    [
        (
            "research-llm",
            "intruder",
            (record(),),
            ["ServiceAccount intruder in namespace agents is not a subject of AgentCredential research-llm"],
            "model",
        ),
        (
            "missing",
            "research-agent",
            (record(),),
            ["AgentCredential missing does not exist in namespace agents", "ServiceAccount research-agent"],
            None,  # not known of a credential that does not exist
        ),
        (
            "research-llm",
            "research-agent",
            (dataclasses.replace(record(), blocked=NOT_READY),),
            [
                "AgentCredential research-llm in namespace agents is not Ready (PolicyDenied)",
                "ServiceAccount research-agent",
            ],
            "model",
        ),
    ],
    ids=["not a subject", "missing", "not ready"],
)
def test_a_pod_the_webhook_will_not_admit_is_refused_naming_credential_account_and_namespace(
    tmp_path: Path,
    credentials: str,
    service_account: str,
    records: tuple[CredentialRecord, ...],
    phrases: list[str],
    category: str | None,
) -> None:
    webhook = Webhook(tmp_path, *records)
    response = webhook.answer(pod(credentials, service_account))
    assert (response["uid"], response["allowed"], response["status"]["code"]) == ("req-1", False, 403)
    message = response["status"]["message"]
    for phrase in phrases:
        assert phrase in message
    assert "patch" not in response
    (line,) = webhook.audit_lines()
    assert (line["action"], line["reason"], line["namespace"], line["serviceAccount"], line["podName"]) == (
        "deny",
        "AdmissionRefused",
        NS,
        service_account,
        "task-",
    )
    assert line["message"] == message and line.get("category") == category


def test_a_namespace_outside_the_operators_reach_is_refused(tmp_path: Path) -> None:
    webhook = Webhook(tmp_path)
    body = pod()
    body["metadata"]["namespace"] = "agentcred"  # the operator's own namespace
    response = webhook.answer(body)
    assert response["allowed"] is False and response["status"]["code"] == 403
    assert "admits no pods in namespace agentcred" in response["status"]["message"]


# -- malformed reviews ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "not JSON"),
        ("[" * 100_000, "not JSON"),
        ("[]", "not an AdmissionReview with a request"),
        (json.dumps({"request": "pods"}), "not an AdmissionReview with a request"),
        (json.dumps({"request": {"uid": "r"}}), "the AdmissionReview has no object"),
        (json.dumps({"request": {"uid": "r", "object": ["a pod"]}}), "the AdmissionReview has no object"),
    ],
)
def test_a_body_that_is_no_admission_review_is_a_bad_request(tmp_path: Path, body: str, reason: str) -> None:
    status, said, _ = Webhook(tmp_path).post(body)
    assert status == 400 and said.startswith(reason)


def test_until_the_credentials_are_listed_the_webhook_answers_unavailable(tmp_path: Path) -> None:
    webhook = Webhook(tmp_path)
    webhook.ready.clear()
    status, said, _ = webhook.post(json.dumps(review(pod())))
    assert (status, said) == (503, "listing AgentCredentials and policies")


def malformed(change: str) -> dict[str, Any]:
    body = pod()
    if change == "labels":
        body["metadata"]["labels"] = [labels.INJECT_LABEL]
    elif change == "annotation":
        body["metadata"]["annotations"][labels.CREDENTIALS_ANNOTATION] = ["research-llm"]
    elif change == "service account":
        body["spec"]["serviceAccountName"] = {"name": "research-agent"}
    elif change == "containers":
        body["spec"]["containers"] = "agent"
    elif change == "mounts":
        body["spec"]["containers"][0]["volumeMounts"] = [["/data"]]
    elif change == "spec":
        body["spec"] = "a pod"
    elif change == "status":
        # What the seal check reads of a pod looking admitted already: a volume of ours, and
        # its status -- which the API server would send as an object.
        body["spec"]["volumes"] = [
            {
                "name": labels.volume_name("research-llm"),
                "projected": {
                    "sources": [
                        {
                            "secret": {
                                "name": labels.secret_name("0123456789abcdef"),
                                "items": [{"key": labels.value_key("research-llm"), "path": "token"}],
                            }
                        }
                    ]
                },
            }
        ]
        body["status"] = "Pending"
    return body


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ("labels", "malformed pod: metadata.labels is not an object"),
        ("annotation", "malformed pod: annotation agentcred.dev/credentials is not a string"),
        ("service account", "malformed pod: spec.serviceAccountName is not a string"),
        ("containers", "malformed pod: spec.containers is not a list of objects"),
        ("mounts", "malformed pod: spec.containers[].volumeMounts is not a list of objects"),
        ("spec", "malformed pod: spec is not an object"),
        ("status", "malformed pod: status is not an object"),
    ],
)
def test_a_malformed_pod_is_refused_with_what_is_wrong(
    tmp_path: Path, change: str, phrase: str, caplog: pytest.LogCaptureFixture
) -> None:
    webhook = Webhook(tmp_path)
    with caplog.at_level(logging.ERROR):
        response = webhook.answer(malformed(change))
    assert (response["allowed"], response["status"]["code"], response["status"]["message"]) == (False, 403, phrase)
    assert not caplog.records  # refused, not crashed
    (line,) = webhook.audit_lines()
    assert (line["action"], line["reason"], line["message"]) == ("deny", "AdmissionRefused", phrase)


# Any JSON value in any place of an opted-in pod: a refusal or an admission, never a crash.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
PLACES = [
    ("metadata",),
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("metadata", "annotations"),
    ("metadata", "annotations", labels.CREDENTIALS_ANNOTATION),
    ("metadata", "annotations", labels.ADMITTED_ANNOTATION),
    ("metadata", "annotations", labels.SEAL_ANNOTATION),
    ("metadata", "ownerReferences"),
    ("spec",),
    ("spec", "serviceAccountName"),
    ("spec", "containers"),
    ("spec", "initContainers"),
    ("spec", "volumes"),
    ("spec", "schedulingGates"),
    ("status",),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(admitted_first=st.booleans(), changes=st.lists(st.tuples(st.sampled_from(PLACES), JSON), min_size=1, max_size=3))
def test_no_pod_crashes_the_webhook(tmp_path: Path, admitted_first: bool, changes: list[tuple[tuple, Any]]) -> None:
    webhook = Webhook(tmp_path)
    body = pod()
    if admitted_first:  # a pod the webhook admitted a moment ago: the seal check reads it
        body = patched(body, webhook.webhook.review(review(body)["request"]))
    for place, value in changes:
        target = body
        for part in place[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[place[-1]] = copy.deepcopy(value)
    response = webhook.webhook.review(review(body)["request"])
    assert response["uid"] == "req-1" and isinstance(response["allowed"], bool)
    if not response["allowed"]:
        assert response["status"]["code"] == 403, response["status"]
        assert response["status"]["message"]
