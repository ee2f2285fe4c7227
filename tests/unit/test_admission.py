import copy
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcred.api import labels
from agentcred.api.pods import pod_task
from agentcred.platform.keys import KeyRing
from agentcred.rules import seal
from agentcred.rules.admission import Refusal, inject, parse_credentials_annotation
from agentcred.rules.credentials import credential_record
from samples import EXCEPTION, credential

NS = "agents"
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
KEYS = KeyRing.generate(NOW)


def record(name: str = "research-llm", **overrides):
    overrides.setdefault("projection", {"mountPath": f"/var/run/agentcred/{name}"})
    body = credential(name=name, namespace=NS, **overrides)
    body["metadata"]["creationTimestamp"] = "2026-11-01T00:00:00Z"
    return credential_record(body)


def lookup_of(*records):
    table = {r.name: r for r in records}
    return table.get


def pod(credentials: str = "research-llm", sa: str = "research-agent", **spec_extra) -> dict:
    return {
        "metadata": {
            "generateName": "task-",
            "namespace": NS,
            "labels": {labels.INJECT_LABEL: "true"},
            "annotations": {labels.CREDENTIALS_ANNOTATION: credentials},
        },
        "spec": {
            "serviceAccountName": sa,
            "containers": [{"name": "agent", "image": "a"}, {"name": "b", "image": "b"}],
            **spec_extra,
        },
    }


def test_admitted_pod_gets_volume_mounts_gate_and_binding() -> None:
    admitted = inject(
        pod(initContainers=[{"name": "init", "image": "i"}]),
        NS,
        lookup_of(record(projection={"mountPath": "/creds", "envVar": "TOKEN_FILE"})),
        KEYS,
        NOW,
    )
    binding = admitted["metadata"]["annotations"][labels.BINDING_ANNOTATION]
    assert labels.is_binding(binding)
    (volume,) = admitted["spec"]["volumes"]
    secret = volume["projected"]["sources"][0]["secret"]
    assert secret["name"] == f"agentcred-{binding}" and secret["optional"] is True
    assert [i["path"] for i in secret["items"]] == ["token", "expires-at"]
    assert volume["projected"]["defaultMode"] == 0o444
    for container in admitted["spec"]["containers"] + admitted["spec"]["initContainers"]:
        assert container["volumeMounts"] == [{"name": volume["name"], "mountPath": "/creds", "readOnly": True}]
        assert container["env"] == [{"name": "TOKEN_FILE", "value": "/creds/token"}]
    assert admitted["spec"]["schedulingGates"] == [{"name": labels.SCHEDULING_GATE}]


def test_the_admitted_pod_carries_a_seal_over_what_it_was_admitted_for() -> None:
    admitted = inject(pod("research-llm,search"), NS, lookup_of(record(), record("search", category="tool")), KEYS, NOW)
    admitted["metadata"]["creationTimestamp"] = "2026-11-28T12:00:00Z"
    task = pod_task(admitted)
    assert task is not None and seal.admitted(task, KEYS.mac_keys("admission"))
    # Another ring (another cluster's operator), or any change to what was sealed, breaks it.
    assert not seal.admitted(task, KeyRing.generate(NOW).mac_keys("admission"))
    other_sa = copy.deepcopy(admitted)
    other_sa["spec"]["serviceAccountName"] = "someone-else"
    assert not seal.admitted(pod_task(other_sa), KEYS.mac_keys("admission"))
    elsewhere = copy.deepcopy(admitted)
    elsewhere["metadata"]["namespace"] = "other-team"
    assert not seal.admitted(pod_task(elsewhere), KEYS.mac_keys("admission"))
    # A copy of the seal on a pod created later is not the pod that was admitted.
    later = copy.deepcopy(admitted)
    later["metadata"]["creationTimestamp"] = "2026-11-28T12:05:00Z"
    assert not seal.admitted(pod_task(later), KEYS.mac_keys("admission"))


def test_reinvocation_changes_nothing_more() -> None:
    lookup = lookup_of(record(), record("search", category="tool"))
    once = inject(pod("research-llm,search"), NS, lookup, KEYS, NOW)
    twice = inject(once, NS, lookup, KEYS, NOW + dt.timedelta(seconds=1))
    assert twice == once


@pytest.mark.parametrize("brought", ["binding", "volume", "gate", "stale copy"])
def test_a_pod_cannot_bring_its_own_binding_volume_or_gate(brought: str) -> None:
    lookup = lookup_of(record())
    victim = inject(pod(), NS, lookup, KEYS, NOW)
    body = pod()
    if brought == "binding":
        body["metadata"]["annotations"][labels.BINDING_ANNOTATION] = victim["metadata"]["annotations"][
            labels.BINDING_ANNOTATION
        ]
    elif brought == "volume":
        body["spec"]["volumes"] = victim["spec"]["volumes"]
    elif brought == "gate":
        body["spec"]["schedulingGates"] = [{"name": labels.SCHEDULING_GATE}]
    else:  # the victim's whole admitted pod, sent again a minute later
        body = victim
    with pytest.raises(Refusal, match="only the agentcred admission webhook sets these"):
        inject(body, NS, lookup, KEYS, NOW + dt.timedelta(minutes=1))


def test_input_pod_is_not_mutated() -> None:
    original = pod()
    snapshot = copy.deepcopy(original)
    inject(original, NS, lookup_of(record()), KEYS)
    assert original == snapshot


def test_default_service_account_is_checked() -> None:
    with pytest.raises(Refusal, match="ServiceAccount default in namespace agents is not a subject"):
        inject(pod(sa=""), NS, lookup_of(record()), KEYS)


@pytest.mark.parametrize(
    ("annotation", "lookup", "message"),
    [
        (None, lookup_of(), "no agentcred.dev/credentials annotation"),
        ("  ", lookup_of(), "no agentcred.dev/credentials annotation"),
        ("research-llm,UPPER", lookup_of(record()), "invalid credential name 'UPPER'"),
        ("a" * 3000, lookup_of(), "longer than 2048"),
        (",".join(f"c{i}" for i in range(17)), lookup_of(), "at most 16 credentials"),
        ("missing", lookup_of(record()), "AgentCredential missing does not exist in namespace agents"),
    ],
)
def test_refusals_say_why(annotation, lookup, message) -> None:
    body = pod()
    if annotation is None:
        del body["metadata"]["annotations"][labels.CREDENTIALS_ANNOTATION]
    else:
        body["metadata"]["annotations"][labels.CREDENTIALS_ANNOTATION] = annotation
    with pytest.raises(Refusal, match=message):
        inject(body, NS, lookup, KEYS)


def test_not_a_subject_names_credential_account_namespace_and_subjects() -> None:
    with pytest.raises(Refusal) as refused:
        inject(pod(sa="intruder"), NS, lookup_of(record()), KEYS)
    assert str(refused.value) == (
        "ServiceAccount intruder in namespace agents is not a subject of AgentCredential research-llm "
        "(its subjects: research-agent)"
    )


def test_a_refusal_carries_the_category_when_every_credential_refused_shares_one() -> None:
    tool = record("github", category="tool")
    with pytest.raises(Refusal) as refused:
        inject(pod(sa="intruder"), NS, lookup_of(record()), KEYS)
    assert refused.value.category == "model"
    with pytest.raises(Refusal) as refused:  # two categories refused: no single one to count under
        inject(pod("research-llm,github", sa="intruder"), NS, lookup_of(record(), tool), KEYS)
    assert refused.value.category is None
    with pytest.raises(Refusal) as refused:  # one does not exist: its category is not known
        inject(pod("research-llm,missing", sa="intruder"), NS, lookup_of(record()), KEYS)
    assert refused.value.category is None


def test_not_ready_credential_is_refused() -> None:
    expired = record(
        "legacy", source={"secretRef": {"name": "k", "key": "v"}}, exception={**EXCEPTION, "expires": "2020-01-01"}
    )
    with pytest.raises(Refusal, match=r"legacy in namespace agents is not Ready \(ExceptionExpired\)"):
        inject(pod("legacy"), NS, lookup_of(expired), KEYS)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(Refusal) as refused:
        inject(pod("missing,research-llm", sa="intruder"), NS, lookup_of(record()), KEYS)
    assert "missing does not exist" in str(refused.value) and "intruder" in str(refused.value)


def test_mount_path_clashes_are_refused() -> None:
    same = record("other", projection={"mountPath": "/var/run/agentcred/research-llm"})
    with pytest.raises(Refusal, match="both mount at /var/run/agentcred/research-llm"):
        inject(pod("research-llm,other"), NS, lookup_of(record(), same), KEYS)
    body = pod()
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/var/run/agentcred/research-llm"}]
    with pytest.raises(Refusal, match="container agent already mounts volume data"):
        inject(body, NS, lookup_of(record()), KEYS)


@given(st.text(max_size=300))
def test_annotation_parser_never_crashes(text: str) -> None:
    try:
        names = parse_credentials_annotation(text)
    except Refusal as refusal:
        assert labels.CREDENTIALS_ANNOTATION in str(refusal) or "at most" in str(refusal)
    else:
        assert names and all(0 < len(name) <= 63 for name in names)


ISSUER = "https://agentcred.agentcred.svc:8443"


def test_a_pod_with_a_minted_credential_gets_its_identity_for_the_token_service() -> None:
    admitted = inject(pod(), NS, lookup_of(record()), KEYS, NOW, issuer=ISSUER)
    binding = admitted["metadata"]["annotations"][labels.BINDING_ANNOTATION]
    identity = next(v for v in admitted["spec"]["volumes"] if v["name"] == labels.IDENTITY_VOLUME)
    token, assertion, ca = identity["projected"]["sources"]
    assert token == {"serviceAccountToken": {"audience": "agentcred", "expirationSeconds": 600, "path": "token"}}
    # Workload identity federation: the same identity addressed to the token endpoint itself.
    assert assertion == {
        "serviceAccountToken": {"audience": f"{ISSUER}/oauth2/token", "expirationSeconds": 600, "path": "assertion"}
    }
    assert ca["secret"] == {
        "name": f"agentcred-{binding}",
        "optional": True,
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    for container in admitted["spec"]["containers"]:
        assert {"name": labels.IDENTITY_VOLUME, "mountPath": "/var/run/secrets/agentcred", "readOnly": True} in (
            container["volumeMounts"]
        )
        assert {e["name"]: e["value"] for e in container["env"]} == {
            "AGENTCRED_ISSUER": ISSUER,
            "AGENTCRED_TOKEN_ENDPOINT": f"{ISSUER}/oauth2/token",
            "AGENTCRED_IDENTITY_TOKEN_FILE": "/var/run/secrets/agentcred/token",
            "AGENTCRED_CA_FILE": "/var/run/secrets/agentcred/ca.crt",
            "AGENTCRED_ASSERTION_FILE": "/var/run/secrets/agentcred/assertion",
        }
    # The identity volume is not a credential: the operator still reads the task right.
    task = pod_task({**admitted, "metadata": {**admitted["metadata"], "name": "p", "uid": "u"}})
    assert task is not None and task.credentials == ("research-llm",) and task.binding == binding


def test_a_pod_without_a_minted_credential_gets_no_identity_volume() -> None:
    static = record(source={"secretRef": {"name": "upstream", "key": "token"}}, exception=EXCEPTION)
    admitted = inject(pod(), NS, lookup_of(static), KEYS, NOW, issuer=ISSUER)
    assert [v["name"] for v in admitted["spec"]["volumes"]] == [labels.volume_name("research-llm")]
    assert all("env" not in c for c in admitted["spec"]["containers"])


def test_the_identity_path_cannot_be_taken() -> None:
    taken = pod()
    taken["spec"]["containers"][0]["volumeMounts"] = [{"name": "mine", "mountPath": "/var/run/secrets/agentcred"}]
    taken["spec"]["volumes"] = [{"name": "mine", "emptyDir": {}}]
    with pytest.raises(Refusal, match="already mounts volume mine at /var/run/secrets/agentcred, where the pod's"):
        inject(taken, NS, lookup_of(record()), KEYS, NOW, issuer=ISSUER)
    there = record(projection={"mountPath": "/var/run/secrets/agentcred"})
    with pytest.raises(Refusal, match="AgentCredential research-llm mounts at /var/run/secrets/agentcred"):
        inject(pod(), NS, lookup_of(there), KEYS, NOW, issuer=ISSUER)


@pytest.mark.parametrize(
    "case",
    [
        pod(),
        pod(initContainers=[{"name": "init", "image": "i", "env": [{"name": "A", "value": "1"}]}]),
        pod(
            volumes=[{"name": "data", "emptyDir": {}}],
            schedulingGates=[{"name": "other.example/gate"}],
            containers=[{"name": "c", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        ),
        {**pod(), "spec": {"serviceAccountName": "research-agent"}},  # no containers (the API server refuses it later)
    ],
)
@pytest.mark.parametrize("minted", [True, False])
def test_the_webhooks_patch_makes_the_admitted_pod_and_leaves_the_request_alone(
    case: dict, minted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jsonpatch

    from agentcred.rules import admission

    monkeypatch.setattr(admission, "new_binding_id", lambda: "0123456789abcdef")
    found = admission.admit(case, NS, lookup_of(record()), KEYS, NOW)
    assert found is not None
    if not minted:
        found = [record(source={"secretRef": {"name": "upstream", "key": "token"}}, exception=EXCEPTION)]
    sent = copy.deepcopy(case)
    patch = admission.admission_patch(case, NS, found, KEYS, NOW, issuer=ISSUER)
    assert case == sent  # the request's pod is not touched
    expected = copy.deepcopy(case)
    admission.apply(expected, NS, found, KEYS, NOW, issuer=ISSUER)
    assert jsonpatch.apply_patch(sent, patch) == expected


def test_a_gateway_only_credential_is_recorded_in_the_identity_volume_and_never_mounted() -> None:
    from samples import GATEWAY_ONLY

    gateway_only = record("upstream", **GATEWAY_ONLY)
    admitted = inject(
        pod("research-llm,upstream"), NS, lookup_of(record(), gateway_only), KEYS, NOW, issuer="https://a"
    )
    volumes = {v["name"]: v for v in admitted["spec"]["volumes"]}
    assert set(volumes) == {labels.volume_name("research-llm"), labels.IDENTITY_VOLUME}
    items = volumes[labels.IDENTITY_VOLUME]["projected"]["sources"][-1]["secret"]["items"]
    assert {"key": labels.gateway_key("upstream"), "path": f"{labels.GATEWAY_DIRECTORY}/upstream"} in items
    for container in admitted["spec"]["containers"]:
        assert [m["mountPath"] for m in container["volumeMounts"]] == [
            "/var/run/agentcred/research-llm",
            labels.IDENTITY_MOUNT_PATH,
        ]
    task = pod_task({**admitted, "metadata": {**admitted["metadata"], "namespace": NS}})
    assert task is not None and task.credentials == ("research-llm", "upstream") and task.gateway == ("upstream",)
    assert seal.holds(
        KEYS.mac_keys("admission"),
        task.seal,
        NS,
        task.binding,
        task.service_account,
        task.credentials,
        task.admitted_text,
    )


def test_a_pod_with_only_a_gateway_only_credential_gets_its_identity() -> None:
    from samples import GATEWAY_ONLY

    admitted = inject(pod("upstream"), NS, lookup_of(record("upstream", **GATEWAY_ONLY)), KEYS, NOW, issuer="https://a")
    assert [v["name"] for v in admitted["spec"]["volumes"]] == [labels.IDENTITY_VOLUME]
    task = pod_task({**admitted, "metadata": {**admitted["metadata"], "namespace": NS}})
    assert task is not None and task.gateway == ("upstream",)
