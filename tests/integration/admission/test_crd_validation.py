"""The API server itself refuses invalid AgentCredentials, naming the field."""

import json

import pytest
from kubernetes.client.exceptions import ApiException

from agentcred.api import model
from clusterkit import Cluster
from samples import DROP, EXCEPTION, INVALID, STATIC_SOURCE, credential


def _create(cluster: Cluster, namespace: str, body: dict) -> dict:
    return cluster.custom.create_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, body)


def test_crd_is_installed_and_established(cluster: Cluster) -> None:
    crd = cluster.extensions.read_custom_resource_definition(f"{model.PLURAL}.{model.GROUP}")
    assert {(c.type, c.status) for c in crd.status.conditions} >= {("Established", "True"), ("NamesAccepted", "True")}
    assert crd.spec.names.short_names == ["acred"]


def test_valid_credential_is_accepted_with_defaults(cluster: Cluster, namespace: str) -> None:
    created = _create(cluster, namespace, credential(ttl=DROP, maxLifetime=DROP))
    assert (created["spec"]["ttl"], created["spec"]["maxLifetime"]) == ("15m", "8h")


def test_static_source_with_exception_is_accepted(cluster: Cluster, namespace: str) -> None:
    created = _create(cluster, namespace, credential(source=STATIC_SOURCE, exception=EXCEPTION))
    assert created["spec"]["exception"]["approvedBy"] == "ciso@example.com"


@pytest.mark.parametrize(("case", "overrides", "field", "phrase"), INVALID, ids=[case[0] for case in INVALID])
def test_invalid_credential_is_refused_naming_the_field(
    cluster: Cluster, namespace: str, case: str, overrides: dict, field: str, phrase: str
) -> None:
    with pytest.raises(ApiException) as refused:
        _create(cluster, namespace, credential(**overrides))
    assert refused.value.status == 422, refused.value.body
    message = json.loads(refused.value.body)["message"]
    assert field in message and phrase in message, message
    # No CEL conversion error, no internal path; durations and file modes said in words, not a regex.
    assert "google.protobuf" not in message and "spec.spec" not in message, message
    if field in WORDED_FIELDS:
        assert "should match" not in message, message


WORDED_FIELDS = {
    "spec.ttl",
    "spec.maxLifetime",
    "spec.renewBefore",
    "spec.review.cadence",
    "spec.source.webhook.timeout",
    "spec.projection.fileMode",
}


@pytest.mark.parametrize(
    "overrides",
    [
        {"ttl": "1d", "maxLifetime": "7d", "renewBefore": "6h"},
        {"ttl": "1h30m", "maxLifetime": "2d12h", "review": {"cadence": "90d"}},
        {"source": {"webhook": {"url": "https://minter.internal", "timeout": "30s"}}},
    ],
    ids=["days", "mixed units", "timeout at its limit"],
)
def test_one_duration_grammar_with_days_everywhere(cluster: Cluster, namespace: str, overrides: dict) -> None:
    _create(cluster, namespace, credential(**overrides))


@pytest.mark.parametrize(("mode", "stored"), [("0400", "0400"), (0o440, 0o440), ("444", "444")])
def test_file_mode_as_octal_text_or_number(cluster: Cluster, namespace: str, mode: object, stored: object) -> None:
    projection = {"mountPath": "/var/run/agentcred/x", "fileMode": mode}
    created = _create(cluster, namespace, credential(projection=projection))
    assert created["spec"]["projection"]["fileMode"] == stored
    assert model.parse_spec(created["spec"]).projection.file_mode in (0o400, 0o440, 0o444)


def test_policy_durations_share_the_grammar(cluster: Cluster) -> None:
    body = {
        "apiVersion": model.API_VERSION,
        "kind": model.POLICY_KIND,
        "metadata": {"name": "zero-ttl-policy"},
        "spec": {"namespaceSelector": {}, "sources": ["jwt"], "maxTTL": "0s", "maxLifetime": "2d"},
    }
    with pytest.raises(ApiException) as refused:
        cluster.custom.create_cluster_custom_object(model.GROUP, model.VERSION, model.POLICY_PLURAL, body)
    message = json.loads(refused.value.body)["message"]
    assert "spec.maxTTL" in message and "d (days)" in message and "spec.maxLifetime" not in message, message


def test_name_longer_than_a_label_is_refused(cluster: Cluster, namespace: str) -> None:
    with pytest.raises(ApiException) as refused:
        _create(cluster, namespace, credential(name="x" * 64))
    assert refused.value.status == 422
    assert "at most 63 characters" in json.loads(refused.value.body)["message"]
