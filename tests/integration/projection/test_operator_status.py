"""With the operator running, AgentCredentials get a Ready condition, observedGeneration and Events."""

from agentcred.api import model
from agents import create_credential, service_account, start_agent
from clusterkit import Cluster, OperatorProcess, wait_for
from samples import EXCEPTION, STATIC_SOURCE, credential


def _get(cluster: Cluster, namespace: str, name: str) -> dict:
    return cluster.custom.get_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, name)


def _ready(cluster: Cluster, namespace: str, name: str, generation: int) -> dict | None:
    status = _get(cluster, namespace, name).get("status") or {}
    if status.get("observedGeneration") != generation:
        return None
    return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)


def _events(cluster: Cluster, namespace: str, name: str) -> list:
    return cluster.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items


def test_valid_credential_becomes_ready(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.custom.create_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, credential())
    ready = wait_for(lambda: _ready(cluster, namespace, "research-llm", 1), what="Ready condition")
    assert (ready["status"], ready["reason"]) == ("True", "Valid")
    status = _get(cluster, namespace, "research-llm")["status"]
    assert status["sourceKind"] == "jwt" and status["reviewDue"] == "2027-01-30"
    events = wait_for(lambda: _events(cluster, namespace, "research-llm"), what="an Event")
    assert events[0].reason == "Valid" and events[0].type == "Normal"
    operator.assert_alive()


def test_update_is_reflected_with_new_generation(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.custom.create_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, credential())
    wait_for(lambda: _ready(cluster, namespace, "research-llm", 1), what="first Ready")
    cluster.custom.patch_namespaced_custom_object(
        model.GROUP,
        model.VERSION,
        namespace,
        model.PLURAL,
        "research-llm",
        {"spec": {"ttl": "10m", "subjects": {"serviceAccounts": ["research-agent", "helper"]}}},
    )
    ready = wait_for(lambda: _ready(cluster, namespace, "research-llm", 2), what="Ready at generation 2")
    assert ready["observedGeneration"] == 2 and "ttl 10m" in ready["message"] and "helper" in ready["message"]


def test_expired_exception_is_not_ready(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    body = credential(name="legacy-key", source=STATIC_SOURCE, exception={**EXCEPTION, "expires": "2020-01-01"})
    cluster.custom.create_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, body)
    ready = wait_for(lambda: _ready(cluster, namespace, "legacy-key", 1), what="Ready condition")
    assert (ready["status"], ready["reason"]) == ("False", "ExceptionExpired")
    assert _get(cluster, namespace, "legacy-key")["status"]["exceptionExpired"] is True
    events = wait_for(lambda: _events(cluster, namespace, "legacy-key"), what="a Warning Event")
    assert events[0].type == "Warning" and events[0].reason == "ExceptionExpired"


def table_cells(header: str, row: str) -> dict[str, str]:
    """kubectl's table by column position: an empty cell is blank, not a missing word."""
    starts = [header.index(name) for name in header.split()]
    ends = starts[1:] + [None]
    return {name: row[start:end].strip() for name, start, end in zip(header.split(), starts, ends, strict=True)}


def test_printer_columns_answer_at_a_glance(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.custom.create_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, credential())
    wait_for(lambda: _ready(cluster, namespace, "research-llm", 1), what="Ready")
    table = cluster.kubectl("get", "acred", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "CATEGORY", "OWNER", "SOURCE", "TTL", "ACTIVE", "READY", "PROBLEM", "AGE"]
    assert row.split()[:5] == ["research-llm", "model", "team-research@example.com", "jwt", "15m"]
    cells = table_cells(header, row)
    assert (cells["READY"], cells["PROBLEM"]) == ("True", "")  # nothing wrong


def test_wide_output_shows_the_next_expiry_as_a_time(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    start_agent(cluster, namespace)
    expiry = wait_for(
        lambda: (_get(cluster, namespace, "research-llm").get("status") or {}).get("nextExpiry"),
        what="status.nextExpiry",
    )
    table = cluster.kubectl("get", "acred", "research-llm", "-n", namespace, "-o", "wide").stdout
    header, row = table.splitlines()[:2]
    columns = table_cells(header, row)
    # A future time in a `date` column renders as `<invalid>`; as a string it reads as it is.
    assert columns["NEXT-EXPIRY"] == expiry and columns["READY"] == "True" and columns["REASON"] == "Valid"
