"""Ready tells the truth about the source before any pod asks: a static credential's upstream
Secret and key, a minting service's health check, followed as they change."""

import json
import time

import pytest
from kubernetes.client.exceptions import ApiException

from agentcred.api import labels
from agents import (
    audit_lines,
    condition,
    create_credential,
    create_pod,
    get_credential,
    read_secret,
    running_pod,
    secret_name_of,
    service_account,
    shared_secret,
    value_of,
)
from clusterkit import Cluster, OperatorProcess, wait_for
from minting_service import MintingService
from samples import EXCEPTION, STATIC_SOURCE, credential


def _ready(cluster: Cluster, namespace: str, name: str) -> dict:
    return condition(get_credential(cluster, namespace, name), "Ready") or {}


def test_a_static_credential_is_not_ready_while_its_upstream_lacks_the_key(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    shared_secret(cluster, namespace, "a-value", key="other-key")
    cluster.custom.create_namespaced_custom_object(
        "agentcred.dev",
        "v1alpha1",
        namespace,
        "agentcredentials",
        credential(name="vendor", source=STATIC_SOURCE, exception=EXCEPTION),
    )
    missing = wait_for(
        lambda: (found := _ready(cluster, namespace, "vendor")).get("status") == "False" and found,
        what="Ready=False with no pod",
    )
    assert missing["reason"] == "UpstreamKeyMissing" and "api-key" in missing["message"], missing
    # The owner adds the key: Ready follows the Secret's change, still without a pod.
    cluster.core.patch_namespaced_secret("upstream-key", namespace, {"stringData": {"api-key": "b-value"}})
    wait_for(lambda: _ready(cluster, namespace, "vendor").get("status") == "True", what="Ready once the key exists")


@pytest.fixture
def minting_service():
    service = MintingService().start()
    yield service
    service.stop()


def test_ready_follows_the_minting_services_health_check(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, minting_service: MintingService
) -> None:
    service_account(cluster, namespace)
    source = {
        "webhook": {
            "url": minting_service.url,
            "caBundle": minting_service.ca_pem,
            "timeout": "2s",
            "healthCheck": True,
        }
    }
    create_credential(cluster, namespace, name="minted", category="tool", source=source)
    create_pod(cluster, namespace, "agent", "minted")
    agent = wait_for(lambda: running_pod(cluster, namespace, name="agent"), what="agent Running")

    minting_service.healthy = False
    unhealthy = wait_for(
        lambda: (found := _ready(cluster, namespace, "minted")).get("status") == "False" and found,
        what="Ready=False once the health check fails",
    )
    assert unhealthy["reason"] == "MintingServiceUnhealthy", unhealthy
    assert "GET https://127.0.0.1" in unhealthy["message"] and "/mint/healthz" in unhealthy["message"]
    assert "HTTP 503" in unhealthy["message"]
    with pytest.raises(ApiException) as refused:
        create_pod(cluster, namespace, "late", "minted")
    assert "MintingServiceUnhealthy" in json.loads(refused.value.body)["message"]
    # What the running agent holds is still good at the service: it stays.
    assert value_of(read_secret(cluster, namespace, secret_name_of(agent)), "minted") is not None
    assert not audit_lines(operator, "revoke", podUID=agent["metadata"]["uid"])

    minting_service.healthy = True
    wait_for(lambda: _ready(cluster, namespace, "minted").get("status") == "True", what="Ready again")
    create_pod(cluster, namespace, "later", "minted")
    wait_for(lambda: running_pod(cluster, namespace, name="later"), what="a new pod admitted and running")
    assert labels.BINDING_ANNOTATION in cluster.core.read_namespaced_pod("later", namespace).metadata.annotations


@pytest.fixture
def hanging_service():
    service = MintingService()
    service.health_hangs = True
    service.start()
    yield service
    service.stop()


def test_one_tenants_hanging_health_check_does_not_hold_back_anothers(
    cluster: Cluster,
    operator: OperatorProcess,
    namespace: str,
    minting_service: MintingService,
    hanging_service: MintingService,
) -> None:
    """Tenant A points a health-checked credential at a service that never answers (its timeout
    30 s, the most a spec may say). Health checks ran in rounds, each round waiting for every
    probe: tenant B's service recovered, but B's credential stayed not Ready -- its pods refused
    -- until A's probe gave up (35 s instead of 4 s). B's recovery is now seen while A's probe
    still hangs."""
    other = cluster.create_namespace("tenant-a")
    try:
        minting_service.healthy = False
        b_source = {"url": minting_service.url, "caBundle": minting_service.ca_pem, "timeout": "2s"}
        create_b = credential(name="b-minted", category="tool", source={"webhook": {**b_source, "healthCheck": True}})
        cluster.custom.create_namespaced_custom_object(
            "agentcred.dev", "v1alpha1", namespace, "agentcredentials", create_b
        )
        wait_for(
            lambda: _ready(cluster, namespace, "b-minted").get("reason") == "MintingServiceUnhealthy",
            what="B not Ready while its service fails",
        )
        a_source = {"url": hanging_service.url, "caBundle": hanging_service.ca_pem, "timeout": "30s"}
        create_a = credential(name="a-minted", category="tool", source={"webhook": {**a_source, "healthCheck": True}})
        cluster.custom.create_namespaced_custom_object("agentcred.dev", "v1alpha1", other, "agentcredentials", create_a)
        wait_for(lambda: hanging_service.health_calls >= 1, what="A's health check hanging")
        minting_service.healthy = True
        wait_for(lambda: _ready(cluster, namespace, "b-minted").get("status") == "True", what="B Ready again")
        recovered = time.monotonic()
        assert not hanging_service.health_dropped or hanging_service.health_dropped[0] > recovered, (
            "B's recovery waited for A's hanging health check to give up"
        )
    finally:
        cluster.delete_namespace(other)
