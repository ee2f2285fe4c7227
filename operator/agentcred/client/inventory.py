"""`agentcred inventory`: the security team's view, per category.

Every credential with its owner, source, TTL, live projections and last issue; static
exceptions with approver and expiry; and the findings that need someone to act: expired
exceptions, static values reported leaked and not yet rotated upstream (`compromised`),
overdue reviews, orphaned Secrets, owners without a contact, credentials that
are not Ready. Reads are paginated and metadata-only: no Secret value is ever fetched.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml
from kubernetes import client
from pydantic.alias_generators import to_camel

from ..api import labels, model
from ..rules.credentials import credential_record
from ..rules.verdicts import review_due

FINDING_KINDS = (
    "compromised",
    "expired-exception",
    "exception-expiring",
    "overdue-review",
    "orphan",
    "no-owner-contact",
    "not-ready",
)
EXPIRING_WITHIN = dt.timedelta(days=14)
PAGE = 500
CONTACT = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+|https?://\S+")
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"


@dataclass
class CredentialEntry:
    category: str
    namespace: str
    name: str
    owner: str
    source: str
    ttl: str
    active: int
    last_issued: str | None
    ready: bool
    exception_approved_by: str | None = None
    exception_expires: str | None = None
    review_due: str | None = None
    # secret: written into each pod as a Secret; csi: by agentcred's CSI node plugin (no Secret);
    # gateway: gateway-only, never in any pod (attached by gateways).
    delivery: str = "secret"


@dataclass
class Finding:
    kind: str
    namespace: str
    name: str
    detail: str


@dataclass
class Inventory:
    generated_at: str
    credentials: list[CredentialEntry] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def by_category(self) -> dict[str, list[CredentialEntry]]:
        return {c: [e for e in self.credentials if e.category == c] for c in model.CATEGORIES}

    def needs_action(self, kinds: set[str]) -> list[Finding]:
        return [f for f in self.findings if f.kind in kinds]


def build_inventory(
    credentials: list[dict[str, Any]], secrets: list[dict[str, Any]], live_pod_uids: set[str], now: dt.datetime
) -> Inventory:
    """Pure: objects in, report out. `secrets` are metadata of managed Secrets."""
    today = now.date()
    inventory = Inventory(generated_at=now.isoformat(timespec="seconds"))
    known = {(c["metadata"]["namespace"], c["metadata"]["name"]) for c in credentials}
    active: dict[tuple[str, str], int] = {}
    for secret in secrets:
        meta = secret.get("metadata") or {}
        tags = meta.get("labels") or {}
        if not tags.get(labels.BINDING_LABEL):
            continue  # the operator's own Secrets (the key ring), not projections
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        held = [k[len(labels.CREDENTIAL_LABEL_PREFIX) :] for k in tags if k.startswith(labels.CREDENTIAL_LABEL_PREFIX)]
        if tags.get(labels.POD_UID_LABEL) not in live_pod_uids:
            inventory.findings.append(Finding("orphan", namespace, name, "its pod is gone or has ended"))
            continue
        for credential in held:
            if (namespace, credential) not in known:
                inventory.findings.append(Finding("orphan", namespace, name, f"holds unknown credential {credential}"))
            else:
                active[(namespace, credential)] = active.get((namespace, credential), 0) + 1

    for body in sorted(credentials, key=lambda c: (c["metadata"]["namespace"], c["metadata"]["name"])):
        record = credential_record(body)
        spec, status = record.spec, record.status
        if spec is None:
            inventory.findings.append(
                Finding("not-ready", record.namespace, record.name, record.verdict(today).message)
            )
            continue
        verdict = record.verdict(today)
        entry = CredentialEntry(
            category=spec.category,
            namespace=record.namespace,
            name=record.name,
            owner=spec.owner,
            source=spec.source.kind,
            ttl=spec.ttl,
            # A csi value has no Secret to count: the operator's own count (its status) says.
            active=active.get(record.key, 0)
            if spec.projection.delivery != "csi"
            else int(status.get("activeProjections") or 0),
            last_issued=status.get("lastIssued"),
            ready=verdict.ready,
            delivery=spec.projection.delivery,
        )
        due = review_due(spec, record.created)
        entry.review_due = due.isoformat() if due else None
        if spec.exception is not None:
            entry.exception_approved_by = spec.exception.approved_by
            entry.exception_expires = spec.exception.expires.isoformat()
            if spec.exception.expires < today:
                inventory.findings.append(
                    Finding(
                        "expired-exception",
                        record.namespace,
                        record.name,
                        f"approved by {spec.exception.approved_by}, expired {entry.exception_expires}",
                    )
                )
            elif spec.exception.expires - today <= EXPIRING_WITHIN:
                inventory.findings.append(
                    Finding(
                        "exception-expiring",
                        record.namespace,
                        record.name,
                        f"approved by {spec.exception.approved_by}, expires {entry.exception_expires}",
                    )
                )
        if due is not None and due < today:
            escalation = spec.review.escalation if spec.review else None
            inventory.findings.append(
                Finding(
                    "overdue-review",
                    record.namespace,
                    record.name,
                    f"review was due {due.isoformat()}" + (f"; escalate to {escalation}" if escalation else ""),
                )
            )
        if not CONTACT.search(spec.owner):
            inventory.findings.append(
                Finding(
                    "no-owner-contact",
                    record.namespace,
                    record.name,
                    f"owner {spec.owner!r} is not an e-mail address or URL",
                )
            )
        if not verdict.ready and verdict.reason != "ExceptionExpired":
            inventory.findings.append(Finding("not-ready", record.namespace, record.name, verdict.message))
        compromised = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Compromised" and c.get("status") == "True"),
            None,
        )
        if compromised is not None:
            inventory.findings.append(Finding("compromised", record.namespace, record.name, compromised["message"]))
        inventory.credentials.append(entry)
    inventory.findings.sort(key=lambda f: (FINDING_KINDS.index(f.kind), f.namespace, f.name))
    return inventory


# -- reading the cluster ---------------------------------------------------------------


def _pages(fetch: Any) -> Iterator[dict[str, Any]]:
    token = None
    while True:
        page = fetch(token)
        yield from page.get("items") or []
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return


def metadata_list(list_call: Any, **selectors: str) -> Iterator[dict[str, Any]]:
    """Page through a list call asking the API server for metadata only."""

    def fetch(token: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"limit": PAGE, **selectors}
        if token:
            kwargs["_continue"] = token
        response = list_call(_headers={"Accept": METADATA_ONLY}, _preload_content=False, **kwargs)
        page: dict[str, Any] = json.loads(response.data)
        return page

    return _pages(fetch)


def read_cluster(
    api_client: client.ApiClient, now: dt.datetime | None = None, namespace: str | None = None
) -> Inventory:
    """The inventory of one namespace, or of every namespace (None)."""
    custom = client.CustomObjectsApi(api_client)

    def credentials_page(token: str | None) -> dict[str, Any]:
        kwargs = {"limit": PAGE, **({"_continue": token} if token else {})}
        page: dict[str, Any] = (
            custom.list_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, **kwargs)
            if namespace
            else custom.list_cluster_custom_object(model.GROUP, model.VERSION, model.PLURAL, **kwargs)
        )
        return page

    credentials = list(_pages(credentials_page))
    core = client.CoreV1Api(api_client)
    secrets_call, pods_call = (
        (
            functools.partial(core.list_namespaced_secret, namespace),
            functools.partial(core.list_namespaced_pod, namespace),
        )
        if namespace
        else (core.list_secret_for_all_namespaces, core.list_pod_for_all_namespaces)
    )
    secrets = list(metadata_list(secrets_call, label_selector=f"{labels.MANAGED_LABEL}=true"))
    live = {
        pod["metadata"]["uid"]
        for pod in metadata_list(
            pods_call,
            label_selector=f"{labels.INJECT_LABEL}=true",
            field_selector="status.phase!=Succeeded,status.phase!=Failed",
        )
        if not pod["metadata"].get("deletionTimestamp")
    }
    return build_inventory(credentials, secrets, live, now or dt.datetime.now(dt.timezone.utc))


# -- rendering -------------------------------------------------------------------------


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def render_table(inventory: Inventory) -> str:
    out = []
    for category, entries in inventory.by_category().items():
        out.append(f"== {category} ({len(entries)}) ==")
        if entries:
            rows = [
                [
                    "NAMESPACE",
                    "NAME",
                    "OWNER",
                    "SOURCE",
                    "DELIVERY",
                    "TTL",
                    "ACTIVE",
                    "LAST-ISSUED",
                    "READY",
                    "REVIEW-DUE",
                ]
            ]
            rows += [
                [
                    e.namespace,
                    e.name,
                    e.owner,
                    e.source,
                    "gateway-only" if e.delivery == "gateway" else e.delivery,
                    e.ttl,
                    str(e.active),
                    e.last_issued or "-",
                    str(e.ready),  # True or False, as kubectl and the CSV write it
                    e.review_due or "-",
                ]
                for e in entries
            ]
            out.append(_table(rows))
        out.append("")
    exceptions = [e for e in inventory.credentials if e.exception_expires]
    out.append(f"== static exceptions ({len(exceptions)}) ==")
    if exceptions:
        rows = [["NAMESPACE", "NAME", "CATEGORY", "APPROVED-BY", "EXPIRES"]]
        rows += [
            [e.namespace, e.name, e.category, e.exception_approved_by or "", e.exception_expires or ""]
            for e in exceptions
        ]
        out.append(_table(rows))
    out.append("")
    out.append(f"== findings ({len(inventory.findings)}) ==")
    if inventory.findings:
        rows = [["KIND", "NAMESPACE", "NAME", "DETAIL"]]
        rows += [[f.kind, f.namespace, f.name, f.detail] for f in inventory.findings]
        out.append(_table(rows))
    return "\n".join(out) + "\n"


def _camel(record: Any) -> dict[str, Any]:
    """A record's fields in Kubernetes' casing (lastIssued, not last_issued)."""
    return {to_camel(key): value for key, value in asdict(record).items()}


def document(inventory: Inventory) -> dict[str, Any]:
    return {
        "generatedAt": inventory.generated_at,
        "categories": {c: [_camel(e) for e in entries] for c, entries in inventory.by_category().items()},
        "exceptions": [_camel(e) for e in inventory.credentials if e.exception_expires],
        "findings": [_camel(f) for f in inventory.findings],
    }


def render_json(inventory: Inventory) -> str:
    return json.dumps(document(inventory), indent=2) + "\n"


def render_yaml(inventory: Inventory) -> str:
    return yaml.safe_dump(document(inventory), sort_keys=False)


def render_csv(inventory: Inventory) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = list(CredentialEntry.__dataclass_fields__)
    writer.writerow(["record", *map(to_camel, columns), "kind", "detail"])
    for entry in inventory.credentials:
        writer.writerow(["credential", *[getattr(entry, c) for c in columns], "", ""])
    for finding in inventory.findings:
        row = {c: "" for c in columns}
        row.update(namespace=finding.namespace, name=finding.name)
        writer.writerow(["finding", *row.values(), finding.kind, finding.detail])
    return buffer.getvalue()


RENDERERS = {"table": render_table, "json": render_json, "yaml": render_yaml, "csv": render_csv}
