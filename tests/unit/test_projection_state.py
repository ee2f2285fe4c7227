import base64
import datetime as dt
import json

from agentcred.api import labels
from agentcred.api.pods import pod_task
from agentcred.api.projection import (
    IssuedValue,
    new_projection,
    parse_projection,
    secret_body,
    secret_patch,
    with_values,
    without,
)
from agentcred.platform.keys import KeyRing
from agentcred.rules.seal import Bookkeeping

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
RING = KeyRing.generate(NOW)
SEAL = Bookkeeping(lambda: RING)


def admitted_pod(**meta_extra) -> dict:
    return {
        "metadata": {
            "name": "p",
            "namespace": "agents",
            "uid": "u1",
            "annotations": {labels.CREDENTIALS_ANNOTATION: "a,b,c", labels.BINDING_ANNOTATION: "forged"},
            "ownerReferences": [{"kind": "Job", "name": "task"}],
            **meta_extra,
        },
        "spec": {
            "serviceAccountName": "agent",
            "schedulingGates": [{"name": labels.SCHEDULING_GATE}],
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {
                    "name": labels.volume_name("a"),
                    "projected": {
                        "sources": [
                            {
                                "secret": {
                                    "name": "agentcred-0123456789abcdef",
                                    "items": [
                                        {"key": "a.token", "path": "token"},
                                        {"key": "a.expires-at", "path": "expires-at"},
                                    ],
                                }
                            }
                        ]
                    },
                },
            ],
        },
        "status": {"phase": "Pending"},
    }


def test_task_comes_from_the_immutable_volumes_not_the_annotations() -> None:
    task = pod_task(admitted_pod())
    assert task is not None
    assert (task.binding, task.credentials, task.job, task.service_account) == (
        "0123456789abcdef",
        ("a",),
        "task",
        "agent",
    )
    assert task.gated and task.end_reason is None


def test_end_reasons() -> None:
    pod = admitted_pod()
    pod["status"]["phase"] = "Succeeded"
    assert pod_task(pod).end_reason == "task-succeeded"
    pod["status"]["phase"] = "Failed"
    assert pod_task(pod).end_reason == "task-failed"
    assert pod_task(admitted_pod(deletionTimestamp="2026-11-28T00:00:00Z")).end_reason == "pod-deleted"
    assert pod_task(admitted_pod(), deleted=True).end_reason == "pod-deleted"


def test_pods_the_webhook_did_not_admit_are_not_tasks() -> None:
    assert pod_task({"metadata": {"name": "x"}, "spec": {"volumes": [{"name": "data"}]}}) is None


def test_secret_round_trips_its_bookkeeping_without_values_in_metadata() -> None:
    task = pod_task(admitted_pod())
    issued = IssuedValue("a", "model", NOW, NOW + dt.timedelta(minutes=15), NOW, "sha256:abc", "jti-1")
    state = with_values(new_projection(task), {"a": issued})
    body = secret_body(state, {"a": b"the-value"}, pod_uid="u1", sign=SEAL.sign)
    assert base64.b64decode(body["data"]["a.token"]) == b"the-value"
    assert base64.b64decode(body["data"]["a.expires-at"]) == b"2026-11-28T12:15:00Z"
    assert "the-value" not in json.dumps(body["metadata"])
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert body["metadata"]["labels"][labels.credential_label("a")] == "model"
    parsed = parse_projection(body, SEAL.verify)
    assert parsed.values == {"a": issued} and parsed.pod_name == "p" and parsed.job == "task" and parsed.sealed


def test_patch_removes_revoked_keys_and_labels_and_guards_the_version() -> None:
    task = pod_task(admitted_pod())
    issued = IssuedValue("a", "model", NOW, NOW + dt.timedelta(minutes=15), NOW, "sha256:abc", "jti-1")
    previous = with_values(new_projection(task), {"a": issued})
    previous = parse_projection(
        {
            **secret_body(previous, {"a": b"v"}, "u1", SEAL.sign),
            "metadata": {**secret_body(previous, {"a": b"v"}, "u1", SEAL.sign)["metadata"], "resourceVersion": "42"},
        },
        SEAL.verify,
    )
    revoked = without(previous, {"a": "emergency"})
    patch = secret_patch(revoked, {}, ("a",), previous=previous, sign=SEAL.sign)
    assert patch["data"] == {"a.token": None, "a.expires-at": None, "a.dpop.jwk": None}  # the key, if it had one
    assert patch["metadata"]["labels"][labels.credential_label("a")] is None
    assert patch["metadata"]["resourceVersion"] == "42"
    assert json.loads(patch["metadata"]["annotations"][labels.STATE_ANNOTATION])["revoked"] == {"a": "emergency"}


def test_damaged_bookkeeping_is_treated_as_revoked() -> None:
    body = {
        "metadata": {
            "labels": {labels.MANAGED_LABEL: "true", labels.BINDING_LABEL: "0123456789abcdef"},
            "annotations": {labels.STATE_ANNOTATION: "{not json"},
        }
    }
    assert parse_projection(body).revoked == {"*": "unreadable-state"}
    assert parse_projection({"metadata": {"labels": {}}}) is None
    for odd in ("[]", '{"values": []}', '{"values": {"a": {"issuedAt": 7}}}', '"x"', "null"):
        body["metadata"]["annotations"][labels.STATE_ANNOTATION] = odd
        assert parse_projection(body).revoked == {"*": "unreadable-state"}, odd


def test_bookkeeping_someone_else_wrote_counts_for_nothing() -> None:
    task = pod_task(admitted_pod())
    issued = IssuedValue("a", "model", NOW, NOW + dt.timedelta(minutes=15), NOW, "sha256:abc", "jti-1")
    body = secret_body(with_values(new_projection(task), {"a": issued}), {"a": b"v"}, "u1", SEAL.sign)
    assert parse_projection(body, SEAL.verify).sealed
    for tamper in (
        lambda m: m["labels"].update({labels.POD_UID_LABEL: "victim-uid"}),
        lambda m: m["annotations"].update(
            {
                labels.STATE_ANNOTATION: m["annotations"][labels.STATE_ANNOTATION].replace(
                    "2026-11-28T12:15:00Z", "2099-01-01T00:00:00Z"
                )
            }
        ),
        lambda m: m["annotations"].pop(labels.STATE_SEAL_ANNOTATION),
    ):
        forged = json.loads(json.dumps(body))
        tamper(forged["metadata"])
        parsed = parse_projection(forged, SEAL.verify)
        assert not parsed.sealed and parsed.values == {} and parsed.pod_uid == ""
    other = Bookkeeping(lambda: KeyRing.generate(NOW))  # another installation's key
    assert not parse_projection(body, other.verify).sealed
