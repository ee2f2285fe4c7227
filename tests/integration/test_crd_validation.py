"""The API server itself refuses invalid AgentCredentials, naming the field."""

import json

import pytest
from kubernetes.client.exceptions import ApiException

from agentcred import model
from clusterkit import Cluster
from samples import DROP, EXCEPTION, STATIC_SOURCE, credential

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


INVALID = [
    ("missing owner", {"owner": DROP}, "spec.owner", "Required value"),
    ("unknown category", {"category": "database"}, "spec.category", "Unsupported value"),
    ("two sources", {"source": {"jwt": {"audiences": ["a"]}, **STATIC_SOURCE}, "exception": EXCEPTION},
     "spec.source", "exactly one of jwt, secretRef, webhook"),
    ("no source", {"source": {}}, "spec.source", "exactly one of jwt, secretRef, webhook"),
    ("secretRef without exception", {"source": STATIC_SOURCE}, "spec.exception", "exception is required"),
    ("exception on a minted source", {"exception": EXCEPTION}, "spec.exception", "only to static"),
    ("malformed ttl", {"ttl": "15 minutes"}, "spec.ttl", "should match"),
    ("ttl over maxLifetime", {"ttl": "9h"}, "spec.ttl", "ttl must not exceed maxLifetime"),
    ("renewBefore not under ttl", {"renewBefore": "15m"}, "spec.renewBefore", "shorter than ttl"),
    ("empty subjects", {"subjects": {"serviceAccounts": []}}, "spec.subjects.serviceAccounts", "at least 1"),
    ("bad ServiceAccount name", {"subjects": {"serviceAccounts": ["Bad_Name"]}},
     "spec.subjects.serviceAccounts[0]", "should match"),
    ("relative mountPath", {"projection": {"mountPath": "var/run/x"}}, "spec.projection.mountPath", "should match"),
    ("dot-dot mountPath", {"projection": {"mountPath": "/var/../etc"}}, "spec.projection.mountPath", "should match"),
    ("missing projection", {"projection": DROP}, "spec.projection", "Required value"),
    ("exception without expiry", {"source": STATIC_SOURCE, "exception": {"reason": "r", "approvedBy": "a"}},
     "spec.exception.expires", "Required value"),
    ("plain-http webhook", {"source": {"webhook": {"url": "http://minter.internal"}}},
     "spec.source.webhook.url", "should match"),
    ("jwt without audiences", {"source": {"jwt": {"audiences": []}}}, "spec.source.jwt.audiences", "at least 1"),
    ("unknown jwt algorithm", {"source": {"jwt": {"audiences": ["a"], "algorithm": "HS256"}}},
     "spec.source.jwt.algorithm", "Unsupported value"),
    ("malformed review cadence", {"review": {"cadence": "quarterly"}}, "spec.review.cadence", "should match"),
]


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
