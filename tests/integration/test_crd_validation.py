"""The API server itself refuses invalid AgentCredentials, naming the field."""

import json

import pytest
from kubernetes.client.exceptions import ApiException

from agentcred.api import model
from clusterkit import Cluster
from samples import DROP, EXCEPTION, INVALID, STATIC_SOURCE, credential

pytestmark = pytest.mark.cluster


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


@pytest.mark.parametrize("case, overrides, field, phrase", INVALID, ids=[case[0] for case in INVALID])
def test_invalid_credential_is_refused_naming_the_field(
    cluster: Cluster, namespace: str, case: str, overrides: dict, field: str, phrase: str
) -> None:
    with pytest.raises(ApiException) as refused:
        _create(cluster, namespace, credential(**overrides))
    assert refused.value.status == 422, refused.value.body
    message = json.loads(refused.value.body)["message"]
    assert field in message and phrase in message, message


def test_name_longer_than_a_label_is_refused(cluster: Cluster, namespace: str) -> None:
    with pytest.raises(ApiException) as refused:
        _create(cluster, namespace, credential(name="x" * 64))
    assert refused.value.status == 422
    assert "at most 63 characters" in json.loads(refused.value.body)["message"]
