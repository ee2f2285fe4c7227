import datetime as dt

from agentcred.api import labels
from agentcred.client.inventory import build_inventory, render_csv, render_json, render_table
from samples import EXCEPTION, STATIC_SOURCE, credential

NOW = dt.datetime(2026, 11, 28, 12, tzinfo=dt.timezone.utc)


def body(name, **overrides):
    item = credential(name=name, namespace="ns", **overrides)
    item["metadata"]["creationTimestamp"] = "2026-11-01T00:00:00Z"
    return item


def secret(binding, pod_uid, *credentials):
    tags = {labels.MANAGED_LABEL: "true", labels.BINDING_LABEL: binding, labels.POD_UID_LABEL: pod_uid}
    tags.update({labels.credential_label(c): "model" for c in credentials})
    return {"metadata": {"name": f"agentcred-{binding}", "namespace": "ns", "labels": tags}}


def test_findings_and_counts() -> None:
    credentials = [
        body("llm"),
        body("old", source=STATIC_SOURCE, exception={**EXCEPTION, "expires": "2026-01-01"}),
        body("soon", source=STATIC_SOURCE, exception={**EXCEPTION, "expires": "2026-12-05"}),
        body("stale", review={"cadence": "30d", "lastReviewed": "2026-01-01"}),
        body("anon", owner="someone"),
    ]
    secrets = [
        secret("0123456789abcdef", "live", "llm"),
        secret("1111111111111111", "live", "llm", "ghost"),
        secret("2222222222222222", "dead", "llm"),
        {"metadata": {"name": "agentcred-signing-keys", "namespace": "ns", "labels": {labels.MANAGED_LABEL: "true"}}},
    ]
    inventory = build_inventory(credentials, secrets, {"live"}, NOW)
    assert {e.name: e.active for e in inventory.credentials}["llm"] == 2
    kinds = [(f.kind, f.name) for f in inventory.findings]
    assert kinds == [
        ("expired-exception", "old"),
        ("exception-expiring", "soon"),
        ("overdue-review", "stale"),
        ("orphan", "agentcred-1111111111111111"),
        ("orphan", "agentcred-2222222222222222"),
        ("no-owner-contact", "anon"),
    ]
    assert [f.kind for f in inventory.needs_action({"orphan"})] == ["orphan", "orphan"]
    for render in (render_table, render_json, render_csv):
        text = render(inventory)
        assert "agentcred-2222222222222222" in text and "ciso@example.com" in text
    # Ready reads the same in the table and in the CSV.
    header, *rows = [
        line.split() for line in render_table(inventory).splitlines() if line.startswith(("NAMESPACE", "ns "))
    ]
    csv_rows = list(__import__("csv").DictReader(render_csv(inventory).splitlines()))
    table_ready = {r[1]: r[header.index("READY")] for r in rows if len(r) == len(header) and r != header}
    csv_ready = {row["name"]: row["ready"] for row in csv_rows if row["record"] == "credential"}
    assert table_ready and all(table_ready[name] == csv_ready[name] for name in table_ready)
    assert set(table_ready.values()) <= {"True", "False"}


def test_a_compromised_static_value_is_a_finding_until_rotated() -> None:
    leaked = body("vendor", source=STATIC_SOURCE, exception=EXCEPTION)
    condition = {
        "type": "Compromised",
        "status": "True",
        "reason": "LeakReported",
        "message": "a value of this credential was reported leaked (fingerprint hmac-sha256:0123456789ab)",
        "lastTransitionTime": "2026-11-28T11:00:00Z",
    }
    leaked["status"] = {"conditions": [condition]}
    rotated = body("rotated", source=STATIC_SOURCE, exception=EXCEPTION)
    rotated["status"] = {"conditions": [{**condition, "status": "False", "reason": "Rotated"}]}
    inventory = build_inventory([leaked, rotated], [], set(), NOW)
    assert [(f.kind, f.name) for f in inventory.needs_action({"compromised"})] == [("compromised", "vendor")]
    assert "hmac-sha256:0123456789ab" in render_table(inventory)


def test_a_gateway_only_credential_says_so() -> None:
    from samples import GATEWAY_ONLY

    inventory = build_inventory([body("llm"), body("upstream", **GATEWAY_ONLY)], [], set(), NOW)
    assert {e.name: e.delivery for e in inventory.credentials} == {"llm": "secret", "upstream": "gateway"}
    table = render_table(inventory)
    assert "DELIVERY" in table and "gateway-only" in table
    assert '"delivery": "gateway"' in render_json(inventory)


def test_a_csi_credentials_live_values_are_counted_from_the_operators_status() -> None:
    """No Secret holds them: the operator's own count says how many pods hold one."""
    csi = body("llm", projection={"mountPath": "/var/run/agentcred/llm", "delivery": "csi"})
    csi["status"] = {"activeProjections": 3}
    inventory = build_inventory([csi], [], set(), NOW)
    (entry,) = inventory.credentials
    assert (entry.delivery, entry.active) == ("csi", 3)
    assert "csi" in render_table(inventory)
