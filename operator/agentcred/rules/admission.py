"""The admission decision for an opted-in pod: refuse with a reason, or the pod to admit.

Pure: the webhook hands in the pod and a lookup into the in-memory credential index; no
API call happens while a pod waits for admission.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..api import labels
from ..api.pods import pod_task
from ..api.schema import DNS_LABEL_RE
from . import seal
from .credentials import CredentialRecord

MAX_CREDENTIALS_PER_POD = 16
MAX_ANNOTATION_LENGTH = 2048
DEFAULT_FILE_MODE = 0o444

Lookup = Callable[[str], CredentialRecord | None]
Names = Callable[[], Iterable[str]]  # the AgentCredentials of the pod's namespace, for "did you mean"


class Refusal(Exception):
    """The pod cannot be admitted; the message says why and names what is wrong."""

    def __init__(self, message: str, category: str | None = None) -> None:
        super().__init__(message)
        self.category = category  # of the credentials refused, when they share one (for metrics)


def new_binding_id() -> str:
    return secrets.token_hex(8)


def parse_credentials_annotation(text: str | None) -> list[str]:
    if text is None or not text.strip():
        raise Refusal(
            f"the pod has label {labels.INJECT_LABEL}=true but no {labels.CREDENTIALS_ANNOTATION} "
            "annotation naming the AgentCredentials it needs"
        )
    if len(text) > MAX_ANNOTATION_LENGTH:
        raise Refusal(f"annotation {labels.CREDENTIALS_ANNOTATION} is longer than {MAX_ANNOTATION_LENGTH} characters")
    names: list[str] = []
    for part in text.split(","):
        name = part.strip()
        if not DNS_LABEL_RE.fullmatch(name):
            shown = name if len(name) <= 80 else name[:80] + "..."
            raise Refusal(
                f"annotation {labels.CREDENTIALS_ANNOTATION} has an invalid credential name {shown!r}: "
                "use a comma-separated list of AgentCredential names"
            )
        if name not in names:
            names.append(name)
    if len(names) > MAX_CREDENTIALS_PER_POD:
        raise Refusal(f"a pod may ask for at most {MAX_CREDENTIALS_PER_POD} credentials, not {len(names)}")
    return names


def _check(
    names: list[str], namespace: str, service_account: str, lookup: Lookup, known: Names = tuple
) -> list[CredentialRecord]:
    records, problems = [], []
    categories: set[str | None] = set()  # of the credentials refused (None: not known)
    for name in names:
        record = lookup(name)
        if record is None:
            categories.add(None)
            close = difflib.get_close_matches(name, list(known()), n=1, cutoff=0.75)
            guess = f" (did you mean {close[0]}?)" if close else ""
            problems.append(
                f"AgentCredential {name} does not exist in namespace {namespace}{guess}, so ServiceAccount "
                f"{service_account} cannot receive it"
            )
        elif not record.ready or record.spec is None:
            verdict = record.verdict()
            categories.add(record.spec.category if record.spec else None)
            problems.append(
                f"AgentCredential {name} in namespace {namespace} is not Ready ({verdict.reason}), so "
                f"ServiceAccount {service_account} cannot receive it: {verdict.message}"
            )
        elif not record.allows(service_account):
            allowed = ", ".join(record.spec.subjects.service_accounts)
            categories.add(record.spec.category)
            problems.append(
                f"ServiceAccount {service_account} in namespace {namespace} is not a subject of "
                f"AgentCredential {name} (its subjects: {allowed})"
            )
        else:
            records.append(record)
    if problems:
        # Known when every credential refused exists and all share one category.
        raise Refusal("; ".join(problems), category=categories.pop() if len(categories) == 1 else None)
    deliveries = {record.name: record.spec.projection.delivery for record in mounted(records) if record.spec}
    if len(set(deliveries.values())) > 1:
        by = ", ".join(f"{name} ({delivery})" for name, delivery in deliveries.items())
        raise Refusal(
            f"the pod asks for credentials delivered in different ways: {by}; a pod's credentials are written "
            "into it one way, secret or csi: ask for them in separate pods"
        )
    mount_paths: dict[str, str] = {}
    for record in mounted(records):
        assert record.spec is not None
        path = record.spec.projection.mount_path
        assert path is not None
        if path in mount_paths:
            raise Refusal(f"AgentCredentials {mount_paths[path]} and {record.name} both mount at {path}")
        mount_paths[path] = record.name
    return records


OWN_ANNOTATIONS = (labels.BINDING_ANNOTATION, labels.ADMITTED_ANNOTATION, labels.SEAL_ANNOTATION)


def _already_admitted(pod: dict[str, Any], namespace: str, keys: seal.SealKeys, now: dt.datetime) -> bool:
    """This webhook's own work, seen again when the API server reinvokes it (another webhook
    changed the pod after us): sealed by us moments ago, and still held by our gate (a pod the
    CSI plugin serves has none). (A copy of another pod's admission that passes this is held by
    the gate too, or its volume is refused by the operator: it gets nothing, the binding
    belongs to the pod that claimed it first.)"""
    task = pod_task({**pod, "metadata": {**(pod.get("metadata") or {}), "namespace": namespace}})
    if task is None or not (task.gated or task.by_csi) or task.admitted_at is None:
        return False
    if not now - seal.REINVOCATION_WINDOW <= task.admitted_at <= now:
        return False
    return seal.holds(
        keys.mac_keys("admission"),
        task.seal,
        namespace,
        task.binding,
        task.service_account,
        task.credentials,
        task.admitted_text,
    )


def _arrives_clean(pod: dict[str, Any]) -> None:
    """What the webhook adds is the webhook's alone: a pod that brings a binding, an
    agentcred volume (a volume of agentcred's CSI driver, whatever its name) or the gate of its
    own is refused, so no pod can name another's Secret or CSI volume."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    brought = [f"annotation {name}" for name in OWN_ANNOTATIONS if name in (meta.get("annotations") or {})]
    brought += [
        f"volume {v.get('name')}"
        for v in spec.get("volumes") or []
        if str(v.get("name", "")).startswith(labels.VOLUME_PREFIX)
        or (isinstance(v.get("csi"), dict) and v["csi"].get("driver") == labels.CSI_DRIVER)
    ]
    if any(g.get("name") == labels.SCHEDULING_GATE for g in spec.get("schedulingGates") or []):
        brought.append(f"scheduling gate {labels.SCHEDULING_GATE}")
    if brought:
        raise Refusal(f"the pod arrives with {', '.join(brought)}: only the agentcred admission webhook sets these")


def mounted(records: list[CredentialRecord]) -> list[CredentialRecord]:
    """The credentials written into the pod (not gateway-only ones)."""
    return [r for r in records if r.spec is not None and not r.spec.projection.gateway_only]


def gateway_only(records: list[CredentialRecord]) -> list[CredentialRecord]:
    return [r for r in records if r.spec is not None and r.spec.projection.gateway_only]


def without_secret_delivery(records: list[CredentialRecord]) -> None:
    """Refused where the operator writes no Secrets (the chart's `secretDelivery: false`)."""
    secret = [r.name for r in mounted(records) if r.spec is not None and r.spec.projection.delivery == "secret"]
    if secret:
        raise Refusal(
            f"AgentCredential {', '.join(secret)} is delivered as a Secret, and this agentcred installation delivers "
            "no Secrets (secretDelivery: false): set spec.projection.delivery to csi"
        )


def by_csi(records: list[CredentialRecord]) -> bool:
    """Written into the pod by agentcred's CSI node plugin (`admit` refuses a mix with secret delivery)."""
    return any(r.spec is not None and r.spec.projection.by_csi for r in records)


def _volume(record: CredentialRecord, binding: str) -> dict[str, Any]:
    assert record.spec is not None
    if record.spec.projection.by_csi:
        # An inline volume of agentcred's CSI driver: the kubelet asks the node plugin to publish
        # it for this pod (naming the pod and passing its token); the attributes say which
        # binding and credential it is for, and the operator believes them only for the pod it
        # authenticates and finds admitted for them. The file mode comes from the credential.
        return {
            "name": labels.volume_name(record.name),
            "csi": {
                "driver": labels.CSI_DRIVER,
                "readOnly": True,
                "volumeAttributes": {
                    labels.CSI_BINDING_ATTRIBUTE: binding,
                    labels.CSI_CREDENTIAL_ATTRIBUTE: record.name,
                },
            },
        }
    secret_name = labels.secret_name(binding)
    mode = record.spec.projection.file_mode or DEFAULT_FILE_MODE
    return {
        "name": labels.volume_name(record.name),
        "projected": {
            "defaultMode": mode,
            "sources": [
                {
                    "secret": {
                        "name": secret_name,
                        # optional: when a value is revoked the kubelet removes the file
                        # instead of keeping the last value around.
                        "optional": True,
                        "items": [
                            {"key": labels.value_key(record.name), "path": labels.VALUE_FILE},
                            {"key": labels.expiry_key(record.name), "path": labels.EXPIRY_FILE},
                            *_dpop_key(record),
                        ],
                    }
                }
            ],
        },
    }


def _dpop_key(record: CredentialRecord) -> list[dict[str, str]]:
    """A value bound to a key (DPoP required) has its private key next to it."""
    jwt = record.spec.source.jwt if record.spec is not None else None
    if jwt is None or not jwt.dpop_required:
        return []
    return [{"key": labels.dpop_key_key(record.name), "path": labels.DPOP_KEY_FILE}]


def needs_identity(records: list[CredentialRecord]) -> bool:
    """A pod with a minted credential can trade it at the token service, and one with a
    gateway-only credential shows it to gateways: either gets the identity volume and the
    token endpoint's address."""
    return any(
        record.spec is not None and (record.spec.source.jwt is not None or record.spec.projection.gateway_only)
        for record in records
    )


def _identity_volume(secret_name: str, gateway: list[CredentialRecord], issuer: str, csi: bool) -> dict[str, Any]:
    """The pod's identity (for audience `agentcred`, and -- with an issuer to reach -- a second
    token addressed to its token endpoint, for clients of MCP's workload identity federation);
    and, as items of keys the operator never writes (so no file ever appears), the
    gateway-only credentials it was admitted for: recorded in the pod's immutable spec, where
    the operator reads what a pod may have. A pod served by the CSI plugin has no Secret: its
    CA comes with its values (`ca.crt` beside each), never from a Secret someone else could
    create under that name."""
    marks = [{"key": labels.gateway_key(r.name), "path": f"{labels.GATEWAY_DIRECTORY}/{r.name}"} for r in gateway]
    items = marks if csi else [{"key": labels.CA_KEY, "path": labels.CA_KEY}, *marks]
    sources: list[dict[str, Any]] = [
        {
            "serviceAccountToken": {
                "audience": labels.SERVICE_ACCOUNT_AUDIENCE,
                "expirationSeconds": labels.IDENTITY_TOKEN_SECONDS,
                "path": labels.IDENTITY_TOKEN_FILE,
            }
        }
    ]
    if issuer:
        assertion = {
            "audience": token_endpoint(issuer),
            "expirationSeconds": labels.IDENTITY_TOKEN_SECONDS,
            "path": labels.ASSERTION_FILE,
        }
        sources.append({"serviceAccountToken": assertion})
    if items:
        sources.append({"secret": {"name": secret_name, "optional": True, "items": items}})
    return {"name": labels.IDENTITY_VOLUME, "projected": {"defaultMode": DEFAULT_FILE_MODE, "sources": sources}}


def token_endpoint(issuer: str) -> str:
    return f"{issuer}/oauth2/token"


def identity_env(issuer: str, records: Sequence[CredentialRecord] = ()) -> dict[str, str]:
    env = {
        "AGENTCRED_ISSUER": issuer,
        "AGENTCRED_TOKEN_ENDPOINT": token_endpoint(issuer),
        **labels.IDENTITY_ENV,
        "AGENTCRED_ASSERTION_FILE": f"{labels.IDENTITY_MOUNT_PATH}/{labels.ASSERTION_FILE}",
    }
    csi = [r.spec.projection.mount_path for r in mounted(list(records)) if r.spec and r.spec.projection.by_csi]
    if csi:  # the CA comes with the values the CSI plugin writes
        env["AGENTCRED_CA_FILE"] = f"{csi[0]}/{labels.CA_KEY}"
    return env


def _mount_clashes(pod: dict[str, Any], records: list[CredentialRecord]) -> None:
    spec = pod.get("spec") or {}
    wanted = [
        (str(r.spec.projection.mount_path), labels.volume_name(r.name), f"AgentCredential {r.name}")
        for r in mounted(records)
        if r.spec
    ]
    if needs_identity(records):
        for path, _, what in wanted:
            if path == labels.IDENTITY_MOUNT_PATH:
                raise Refusal(f"{what} mounts at {path}, where the pod's identity for the token service goes")
        wanted.append((labels.IDENTITY_MOUNT_PATH, labels.IDENTITY_VOLUME, "the pod's identity for the token service"))
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for path, volume, what in wanted:
            clash = next(
                (
                    m
                    for m in container.get("volumeMounts") or []
                    if m.get("mountPath") == path and m.get("name") != volume
                ),
                None,
            )
            if clash is not None:
                raise Refusal(
                    f"container {container.get('name')} already mounts volume {clash.get('name')} at "
                    f"{path}, where {what} is projected"
                )


def _add_to_container(container: dict[str, Any], records: list[CredentialRecord], identity: dict[str, str]) -> None:
    mounts = container.setdefault("volumeMounts", [])
    env = container.setdefault("env", [])

    def mount(volume: str, path: str) -> None:
        if not any(m.get("name") == volume for m in mounts):
            mounts.append({"name": volume, "mountPath": path, "readOnly": True})

    def set_env(name: str, value: str) -> None:
        if not any(e.get("name") == name for e in env):
            env.append({"name": name, "value": value})

    for record in mounted(records):
        assert record.spec is not None
        projection = record.spec.projection
        assert projection.mount_path is not None
        mount(labels.volume_name(record.name), projection.mount_path)
        if projection.env_var:
            set_env(projection.env_var, f"{projection.mount_path}/{labels.VALUE_FILE}")
    if identity or gateway_only(records):
        mount(labels.IDENTITY_VOLUME, labels.IDENTITY_MOUNT_PATH)
        for name, value in identity.items():
            set_env(name, value)
    if not env:
        container.pop("env")


def _well_formed(pod: Any) -> None:
    """The API server sends well-formed pods; anything else is refused, not crashed on."""

    def mapping(value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise Refusal(f"malformed pod: {where} is not an object")
        return value

    def objects(value: Any, where: str) -> list[dict[str, Any]]:
        items = value or []
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise Refusal(f"malformed pod: {where} is not a list of objects")
        return items

    body = mapping(pod, "the pod")
    meta, spec = mapping(body.get("metadata"), "metadata"), mapping(body.get("spec"), "spec")
    mapping(meta.get("labels"), "metadata.labels")
    for field in ("name", "generateName"):  # written into audit lines
        if not isinstance(meta.get(field) or "", str):
            raise Refusal(f"malformed pod: metadata.{field} is not a string")
    objects(meta.get("ownerReferences"), "metadata.ownerReferences")
    annotations = mapping(meta.get("annotations"), "metadata.annotations")
    if not isinstance(annotations.get(labels.CREDENTIALS_ANNOTATION, ""), str):
        raise Refusal(f"malformed pod: annotation {labels.CREDENTIALS_ANNOTATION} is not a string")
    if not isinstance(spec.get("serviceAccountName") or "", str):
        raise Refusal("malformed pod: spec.serviceAccountName is not a string")
    for field in ("containers", "initContainers", "volumes", "schedulingGates"):
        objects(spec.get(field), f"spec.{field}")
    for field in ("containers", "initContainers"):
        for container in spec.get(field) or []:
            for nested in ("volumeMounts", "env"):
                objects(container.get(nested), f"spec.{field}[].{nested}")
    # What the seal check (api.pods.pod_task) reads of the status and of a volume.
    mapping(body.get("status"), "status")
    for volume in spec.get("volumes") or []:
        projected = mapping(volume.get("projected"), "spec.volumes[].projected")
        for source in objects(projected.get("sources"), "spec.volumes[].projected.sources"):
            secret = mapping(source.get("secret"), "spec.volumes[].projected.sources[].secret")
            objects(secret.get("items"), "spec.volumes[].projected.sources[].secret.items")


def admit(
    pod: dict[str, Any],
    namespace: str,
    lookup: Lookup,
    keys: seal.SealKeys,
    now: dt.datetime | None = None,
    known: Names = tuple,
) -> list[CredentialRecord] | None:
    """The credentials the pod may receive, None if this webhook already admitted it (a
    reinvocation: nothing more to do), or Refusal saying why not. Reads only."""
    _well_formed(pod)
    if _already_admitted(pod, namespace, keys, now or dt.datetime.now(dt.timezone.utc)):
        return None
    _arrives_clean(pod)
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    names = parse_credentials_annotation(annotations.get(labels.CREDENTIALS_ANNOTATION))
    service_account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    records = _check(names, namespace, service_account, lookup, known)
    _mount_clashes(pod, records)
    return records


def apply(
    pod: dict[str, Any],
    namespace: str,
    records: list[CredentialRecord],
    keys: seal.SealKeys,
    now: dt.datetime | None = None,
    issuer: str = "",
) -> None:
    """Add a new binding, volumes, mounts, env, gate and the admission seal to `pod` in place;
    and, for a pod with a minted credential and an `issuer` to reach, its identity volume."""
    binding = new_binding_id()
    secret_name = labels.secret_name(binding)
    meta = pod.setdefault("metadata", {})
    annotations = meta.setdefault("annotations", {})
    moment = now or dt.datetime.now(dt.timezone.utc)
    admitted_at = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    service_account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    annotations[labels.BINDING_ANNOTATION] = binding
    annotations[labels.ADMITTED_ANNOTATION] = admitted_at
    annotations[labels.SEAL_ANNOTATION] = seal.seal(
        keys.mac_key("admission"), namespace, binding, service_account, [record.name for record in records], admitted_at
    )
    spec = pod.setdefault("spec", {})
    volumes = spec.setdefault("volumes", [])
    for record in mounted(records):
        volumes.append(_volume(record, binding))
    identity = identity_env(issuer, records) if issuer and needs_identity(records) else {}
    if identity or gateway_only(records):
        # A gateway-only credential is recorded in the identity volume: the pod needs it anyway.
        volumes.append(
            _identity_volume(secret_name, gateway_only(records), issuer if identity else "", by_csi(records))
        )
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        _add_to_container(container, records, identity)
    if not by_csi(records):
        # Held until its Secret exists. A pod served by the CSI plugin needs no gate: the
        # kubelet starts no container before the plugin has published its volumes, and the
        # plugin waits for the operator to issue (see rules.csi).
        spec.setdefault("schedulingGates", []).append({"name": labels.SCHEDULING_GATE})


def admission_patch(
    pod: dict[str, Any],
    namespace: str,
    records: list[CredentialRecord],
    keys: seal.SealKeys,
    now: dt.datetime | None = None,
    issuer: str = "",
) -> list[dict[str, Any]]:
    """`apply` as the JSON patch (RFC 6902) the webhook answers with; `pod` is left as it is.

    `apply` runs on a copy of only the parts it changes (annotations, volumes, containers'
    mounts and env, scheduling gates), and each changed part is replaced whole: no copy of the
    whole pod, no diff."""
    meta = pod.get("metadata")
    spec = pod.get("spec")
    meta_copy = dict(meta or {})
    meta_copy["annotations"] = dict(meta_copy.get("annotations") or {})
    spec_copy = dict(spec or {})
    for field in ("volumes", "schedulingGates"):
        spec_copy[field] = list(spec_copy.get(field) or [])
    containers = [field for field in ("initContainers", "containers") if spec_copy.get(field)]
    for field in containers:
        spec_copy[field] = [_container_copy(container) for container in spec_copy[field]]
    apply({**pod, "metadata": meta_copy, "spec": spec_copy}, namespace, records, keys, now, issuer)
    operations: list[dict[str, Any]] = []
    for top, original, changed, parts in (
        ("metadata", meta, meta_copy, ("annotations",)),
        ("spec", spec, spec_copy, ("volumes", *containers, "schedulingGates")),
    ):
        if not isinstance(original, dict):
            operations.append({"op": "add", "path": f"/{top}", "value": changed})
            continue
        # "add" of a member that exists replaces it (RFC 6902, 4.1).
        operations += [{"op": "add", "path": f"/{top}/{part}", "value": changed[part]} for part in parts]
    return operations


def _container_copy(container: dict[str, Any]) -> dict[str, Any]:
    copied = dict(container)
    for field in ("volumeMounts", "env"):
        if field in copied:
            copied[field] = list(copied[field] or [])
    return copied


def inject(
    pod: dict[str, Any],
    namespace: str,
    lookup: Lookup,
    keys: seal.SealKeys,
    now: dt.datetime | None = None,
    issuer: str = "",
) -> dict[str, Any]:
    """The pod as it should be admitted, or Refusal. Running it again on the result changes nothing."""
    records = admit(pod, namespace, lookup, keys, now)
    admitted = copy.deepcopy(pod)
    if records is not None:
        apply(admitted, namespace, records, keys, now, issuer)
    return admitted
