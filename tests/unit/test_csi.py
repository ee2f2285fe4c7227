"""CSI delivery's pure parts: admission (an inline volume, no gate, no Secret), the pod's task
read from its volumes, what a publish may receive (every refusal), the plugin's wire format
against hostile input, the sealed record a node keeps, planning that waits for the plugin's
ask, renewal with no kubelet delay, and the operator's memory of what each volume should hold."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json

import pytest

from agentcred.api import labels
from agentcred.api.pods import pod_task
from agentcred.api.projection import IssuedValue, ProjectionState, csi_record, parse_csi_record
from agentcred.platform.keys import KeyRing
from agentcred.rules import csi, delivery, seal
from agentcred.rules.admission import Refusal, inject
from agentcred.rules.planning import plan
from agentcred.runtime.projection.csi_volumes import CsiVolumes

from .test_admission import KEYS, NOW, NS, lookup_of, pod, record

CSI = {"mountPath": "/var/run/agentcred/research-llm", "delivery": "csi"}


def admitted(credentials: str = "research-llm", *records) -> dict:
    body = inject(
        pod(credentials), NS, lookup_of(*(records or (record(projection=CSI),))), KEYS, NOW, issuer="https://i"
    )
    body["metadata"].update(name="task-x", uid="uid-1", creationTimestamp="2026-11-28T12:00:00Z")
    body["spec"]["nodeName"] = "vm"
    return body


def test_a_csi_credential_is_an_inline_volume_with_no_gate_and_no_secret() -> None:
    body = admitted()
    binding = body["metadata"]["annotations"][labels.BINDING_ANNOTATION]
    volume = next(v for v in body["spec"]["volumes"] if "csi" in v)
    assert volume["csi"] == {
        "driver": labels.CSI_DRIVER,
        "readOnly": True,
        "volumeAttributes": {labels.CSI_BINDING_ATTRIBUTE: binding, labels.CSI_CREDENTIAL_ATTRIBUTE: "research-llm"},
    }
    assert not body["spec"].get("schedulingGates")
    # Its identity volume names no Secret: the CA comes with the values.
    identity = next(v for v in body["spec"]["volumes"] if v["name"] == labels.IDENTITY_VOLUME)
    assert all("secret" not in source for source in identity["projected"]["sources"])
    env = {e["name"]: e["value"] for e in body["spec"]["containers"][0]["env"]}
    assert env["AGENTCRED_CA_FILE"] == f"{CSI['mountPath']}/{labels.CA_KEY}"
    task = pod_task(body)
    assert task is not None and task.csi == ("research-llm",) and task.by_csi and task.node == "vm"
    assert seal.admitted(task, KEYS.mac_keys("admission"))


def test_secret_and_csi_credentials_in_one_pod_are_refused() -> None:
    with pytest.raises(Refusal, match="delivered in different ways.*search \\(csi\\)"):
        inject(
            pod("research-llm,search"),
            NS,
            lookup_of(record(), record("search", projection={**CSI, "mountPath": "/s"})),
            KEYS,
            NOW,
        )


def test_a_pod_bringing_a_volume_of_the_driver_is_refused_whatever_its_name() -> None:
    stolen = {"name": "mine", "csi": {"driver": labels.CSI_DRIVER, "volumeAttributes": {"binding": "0" * 16}}}
    with pytest.raises(Refusal, match="volume mine"):
        inject(pod(volumes=[stolen]), NS, lookup_of(record(projection=CSI)), KEYS, NOW)


def test_the_webhook_reinvoked_on_its_own_csi_pod_changes_nothing() -> None:
    body = admitted()
    again = inject(body, NS, lookup_of(record(projection=CSI)), KEYS, NOW + dt.timedelta(seconds=1))
    assert again["spec"]["volumes"] == body["spec"]["volumes"]


def test_a_volume_of_another_driver_or_without_a_binding_is_not_ours() -> None:
    body = admitted()
    for broken in ({"driver": "other.example"}, {"volumeAttributes": {"credential": "x"}}):
        copy = json.loads(json.dumps(body))
        volume = next(v for v in copy["spec"]["volumes"] if "csi" in v)
        volume["csi"].update(broken)
        if "volumeAttributes" in broken:
            volume["csi"]["volumeAttributes"] = broken["volumeAttributes"]
        assert pod_task(copy) is None


# -- what the kubelet passes, and what a publish may receive -------------------------------


def context(**changes: str | None) -> dict[str, str]:
    found = {
        csi.EPHEMERAL_KEY: "true",
        csi.POD_NAMESPACE_KEY: NS,
        csi.POD_NAME_KEY: "task-x",
        csi.POD_UID_KEY: "uid-1",
        csi.SERVICE_ACCOUNT_KEY: "research-agent",
        csi.TOKENS_KEY: json.dumps({"agentcred": {"token": "t0k3n", "expirationTimestamp": "x"}}),
    }
    found.update({k: v for k, v in changes.items() if v is not None})
    return {k: v for k, v in found.items() if changes.get(k, "") is not None}


def test_the_kubelets_volume_context_must_name_the_pod_and_carry_its_token() -> None:
    assert csi.kubelet_pod(context()) == csi.KubeletPod(NS, "task-x", "uid-1", "research-agent", "t0k3n")
    with pytest.raises(csi.BadRequest, match="inline"):
        csi.kubelet_pod(context(**{csi.EPHEMERAL_KEY: "false"}))
    with pytest.raises(csi.BadRequest, match="podInfoOnMount"):
        csi.kubelet_pod({k: v for k, v in context().items() if k != csi.POD_UID_KEY})
    with pytest.raises(csi.BadRequest, match="tokenRequests"):
        csi.kubelet_pod(context(**{csi.TOKENS_KEY: json.dumps({"other": {"token": "t"}})}))
    with pytest.raises(csi.BadRequest, match="tokenRequests"):
        csi.kubelet_pod(context(**{csi.TOKENS_KEY: "not json"}))


ADMITTED = admitted()


def publish_request(**changes) -> csi.PublishRequest:
    body = ADMITTED
    binding = body["metadata"]["annotations"][labels.BINDING_ANNOTATION]
    request = csi.PublishRequest("csi-1", "research-llm", binding, csi.kubelet_pod(context()))
    return dataclasses.replace(request, **changes)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unbound", "token-unbound"),
        ("other-uid", "token-mismatch"),
        ("not-admitted", "not-admitted"),
        ("copy", "binding-taken"),
        ("other-binding", "not-requested"),
        ("other-credential", "not-requested"),
        ("other-node", "wrong-node"),
        ("ended", "ended"),
        ("no-subject", "not-a-subject"),
        ("deleted-credential", "credential-missing"),
    ],
)
def test_every_publish_that_is_not_the_admitted_pods_own_is_refused(case: str, reason: str) -> None:
    request = publish_request()
    task = pod_task(ADMITTED)
    assert task is not None
    credential = record(projection=CSI)
    args = {"reviewed_uid": "uid-1", "task": task, "owns_binding": True, "record": credential, "node": "vm"}
    if case == "unbound":
        args["reviewed_uid"] = None
    elif case == "other-uid":
        args["reviewed_uid"] = "uid-2"
    elif case == "not-admitted":
        args["task"] = None
    elif case == "copy":
        args["owns_binding"] = False
    elif case == "other-binding":
        request = dataclasses.replace(request, binding="f" * 16)
    elif case == "other-credential":
        request = dataclasses.replace(request, credential="search")
    elif case == "other-node":
        args["node"] = "elsewhere"
    elif case == "ended":
        args["task"] = dataclasses.replace(task, phase="Succeeded")
    elif case == "no-subject":
        args["record"] = record(projection=CSI, subjects={"serviceAccounts": ["someone-else"]})
    elif case == "deleted-credential":
        args["record"] = None
    with pytest.raises(csi.Refused) as refused:
        csi.judge_publish(
            request, args["node"], args["reviewed_uid"], args["task"], args["owns_binding"], args["record"]
        )
    assert refused.value.reason == reason


def test_the_admitted_pods_own_publish_passes() -> None:
    task = pod_task(ADMITTED)
    csi.judge_publish(publish_request(), "vm", "uid-1", task, True, record(projection=CSI))


def test_a_credential_admitted_by_secret_is_not_published() -> None:
    task = pod_task(ADMITTED)
    assert task is not None
    with pytest.raises(csi.Refused, match="another delivery"):
        csi.judge_publish(publish_request(), "vm", "uid-1", dataclasses.replace(task, csi=()), True, record())


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"{" * 100_000,
        b'{"pod": "x"}',
        json.dumps({"pod": {}, "credential": "x", "binding": "0" * 16}).encode(),
        json.dumps(
            {
                "pod": {"namespace": "n", "name": "p", "uid": "u", "serviceAccount": "s"},
                "credential": "Not A Name",
                "binding": "0" * 16,
                "volumeId": "v",
                "podToken": "t",
            }
        ).encode(),  # fmt: skip
        json.dumps(
            {
                "pod": {"namespace": "n", "name": "p", "uid": "u", "serviceAccount": "s"},
                "credential": "c",
                "binding": "../etc",
                "volumeId": "v",
                "podToken": "t",
            }
        ).encode(),  # fmt: skip
        b" " * (csi.MAX_BODY + 1),
    ],
)
def test_hostile_publish_bodies_are_refused_with_a_reason(body: bytes) -> None:
    with pytest.raises(csi.BadRequest) as bad:
        csi.parse_publish(body)
    assert str(bad.value)


def test_a_publish_request_survives_its_own_wire_format() -> None:
    request = publish_request()
    assert csi.parse_publish(json.dumps(request.to_json()).encode()) == request


@pytest.mark.parametrize(
    "body",
    [
        {"wait": -1},
        {"wait": 31},
        {"wait": True},
        {"volumes": "x"},
        {"volumes": [{"volumeId": "v"}]},
        {"volumes": [{"volumeId": "v", "record": "r", "fingerprint": 3}]},
        {"volumes": [{"volumeId": "v", "record": "r"}] * (csi.MAX_VOLUMES + 1)},
    ],
)
def test_hostile_sync_bodies_are_refused(body: dict) -> None:
    with pytest.raises(csi.BadRequest):
        csi.parse_sync(json.dumps(body).encode())


def test_answers_survive_their_wire_format() -> None:
    published = csi.Published(b"v\x00lue", "2026-11-28T12:15:00Z", "fp", 0o440, "PEM", "rec")
    assert csi.Published.from_json(json.loads(json.dumps(published.to_json()))) == published
    for update in (
        csi.Update("v", b"new", "2026-11-28T12:30:00Z", "fp2", "rec2"),
        csi.Update("v", revoked="emergency"),
    ):
        assert csi.Update.from_json(json.loads(json.dumps(update.to_json()))) == update
    with pytest.raises(csi.BadRequest, match="base64"):
        csi.Update.from_json({"volumeId": "v", "value": "***", "expiresAt": "x", "fingerprint": "f", "record": "r"})


def test_a_volume_holds_the_value_its_expiry_and_the_ca() -> None:
    files = csi.volume_files(b"v", "2026-11-28T12:15:00Z", 0o400, "PEM")
    assert files == [("token", b"v", 0o400), ("expires-at", b"2026-11-28T12:15:00Z", 0o400), ("ca.crt", b"PEM", 0o444)]
    assert set(csi.REVOKED_FILES) == {"token", "expires-at"}


# -- the record a node keeps, and planning ---------------------------------------------------


def issued(expires: dt.datetime, renewals: int = 0) -> IssuedValue:
    return IssuedValue("research-llm", "model", NOW, expires, NOW, "hmac-sha256:k1:abc", "jti-1", renewals)


def test_a_nodes_record_is_believed_only_with_our_seal() -> None:
    bookkeeping = seal.Bookkeeping(lambda: KEYS)
    state = ProjectionState(NS, "0" * 16, "task-x", "uid-1", None, {"research-llm": issued(NOW)}, csi=True)
    text = csi_record(state, "research-llm", bookkeeping.sign)
    assert "value" not in json.loads(json.loads(text)["record"])["value"]  # bookkeeping, never the value
    back = parse_csi_record(text, bookkeeping.verify)
    assert back is not None and back.values == state.values and back.pod_uid == "uid-1" and back.csi
    forged = json.loads(text)
    forged["record"] = forged["record"].replace("uid-1", "uid-2")
    assert parse_csi_record(json.dumps(forged), bookkeeping.verify) is None
    other = seal.Bookkeeping(lambda: KeyRing.generate(NOW))
    assert parse_csi_record(text, other.verify) is None
    assert parse_csi_record("garbage", bookkeeping.verify) is None


def test_a_first_csi_value_waits_for_the_plugin_to_ask() -> None:
    task = pod_task(admitted())
    assert task is not None
    records = {"research-llm": record(projection=CSI)}
    waiting = plan(task, None, records, NOW, awaiting_publish=frozenset({"research-llm"}))
    assert waiting.idle and not waiting.problems
    asked = plan(task, None, records, NOW)
    assert [i.credential for i in asked.issue] == ["research-llm"] and not asked.ungate


def test_csi_renewal_owes_nothing_to_a_kubelet_period() -> None:
    spec = record(projection=CSI, ttl="30s", renewBefore="10s").spec
    assert spec is not None
    delay = dt.timedelta(seconds=95)
    assert delivery.renew_before(spec, delay) == dt.timedelta(seconds=10)
    assert delivery.ttl_problem(spec, delay) is None
    secret = record(ttl="30s", renewBefore="10s").spec
    assert secret is not None and delivery.ttl_problem(secret, delay) is not None


# -- the operator's memory of what each volume should hold ---------------------------------


def test_a_value_is_kept_only_until_the_plugin_holds_it_and_revocations_reach_the_node() -> None:
    async def scenario() -> None:
        volumes = CsiVolumes()
        from agentcred.runtime.projection.csi_volumes import Volume

        volumes.register(Volume("csi-1", "vm", f"{NS}/b", "research-llm", "uid-1"))
        waiting = asyncio.create_task(volumes.first_value(f"{NS}/b", "research-llm", 5))
        await asyncio.sleep(0)
        volumes.put(f"{NS}/b", "research-llm", b"v1", "fp1", "e1", "r1")
        first = await waiting
        assert not isinstance(first, str) and first is not None and first.value == b"v1"
        held = csi.HeldVolume("csi-1", "r1", "")
        updates, lost = volumes.updates([(held, (f"{NS}/b", "research-llm"))])
        assert [u.value for u in updates] == [b"v1"] and not lost
        updates, _ = volumes.updates([(dataclasses.replace(held, fingerprint="fp1"), (f"{NS}/b", "research-llm"))])
        assert not updates
        desired = volumes.desired(f"{NS}/b", "research-llm")
        assert desired is not None and desired.value is None, "the value stayed in memory once the plugin had it"
        volumes.arm("vm")
        volumes.revoke(f"{NS}/b", "research-llm", "emergency")
        await asyncio.wait_for(volumes.changed("vm", 5), 1)  # woken at once
        updates, _ = volumes.updates([(dataclasses.replace(held, fingerprint="fp1"), (f"{NS}/b", "research-llm"))])
        assert [u.revoked for u in updates] == ["emergency"]
        volumes.updates([(held, (f"{NS}/b", "research-llm"))])  # the plugin reports the file gone
        assert volumes.desired(f"{NS}/b", "research-llm") is None
        volumes.problem(f"{NS}/b", "other", "MintingServiceError: down")
        assert await volumes.first_value(f"{NS}/b", "other", 1) == "MintingServiceError: down"
        assert await volumes.first_value(f"{NS}/b", "nothing", 0.05) is None

    asyncio.run(scenario())


def test_the_charts_csi_driver_is_the_one_the_local_node_installs() -> None:
    import yaml

    from agentcred.devcluster.csi_plugin import csi_driver_object
    from clusterkit import REPO

    text = (REPO / "charts" / "agentcred" / "templates" / "csi-node.yaml").read_text()
    driver = text.split("---")[0].split("\n", 1)[1]
    spec = yaml.safe_load("\n".join(line for line in driver.splitlines() if "{{" not in line and "}}" not in line))
    assert spec["metadata"]["name"] == labels.CSI_DRIVER
    assert spec["spec"] == csi_driver_object()["spec"]
