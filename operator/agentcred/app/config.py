"""Operator configuration: explicit settings, from flags or AGENTCRED_* environment variables."""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from typing import TypeVar

import kopf

from ..api import labels, model
from ..api.durations import parse_duration
from ..api.schema import DNS_LABEL_RE
from ..api.webhook_configuration import (
    CERTIFICATE_MODES,
    WEBHOOK_MODES,
    CertificateMode,
    WebhookMode,
    skipped_namespaces,
)
from ..rules.delivery import DEFAULT_VOLUME_REFRESH_DELAY

Mode = TypeVar("Mode", bound=str)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"AGENTCRED_{name}", default)


def _one_of(name: str, choices: tuple[Mode, ...], default: Mode) -> Mode:
    value = _env(name, default)
    for choice in choices:
        if value == choice:
            return choice
    raise ValueError(f"AGENTCRED_{name}={value!r}: use one of {', '.join(choices)}")


@dataclass(frozen=True)
class OperatorConfig:
    namespace: str = "agentcred"  # where the signing keys, webhook cert and revocation list live
    instance: str = "agentcred"  # names those objects (the Helm release's full name)
    service: str = "agentcred"  # the Service in front of the webhook and the HTTPS endpoints
    issuer: str = ""  # `iss` of minted tokens; defaults to the Service's URL
    webhook_address: str = "0.0.0.0"
    webhook_port: int = 9443
    # The MutatingWebhookConfiguration: managed (reached at webhook_url if set, else through
    # the Service), its caBundle injected, or left alone (api.webhook_configuration.WebhookMode).
    webhook_url: str | None = None
    webhook_config: WebhookMode = "manage"
    serving_certificate: CertificateMode = "managed"
    webhook_configuration: str = "agentcred.dev"  # the MutatingWebhookConfiguration's name
    api_address: str = "0.0.0.0"
    api_port: int = 8443  # the token service, JWKS, revocation list
    health_address: str = "0.0.0.0"
    health_port: int = 8080  # /healthz, /readyz, /metrics
    token_rate: float = 5.0  # token requests per second per pod, sustained
    token_burst: int = 20
    # ServiceAccounts allowed to introspect tokens ("namespace/name"), e.g. gateways and MCP servers.
    introspectors: tuple[str, ...] = ()
    # DPoP (RFC 9449) at the token endpoint: ask proofs for a server nonce (§8), so a proof made
    # ahead of time is refused; clients retry once with the nonce they are given.
    dpop_nonce: bool = False
    source_rate: float = 10.0  # refused tokens per second per client address before it gets 429
    source_burst: int = 40
    revocation_shards: int = 8  # ConfigMaps holding the revocation list (~12,000 entries each)
    revocation_budget: int = 20_000  # entries (and live pods) one namespace may have on it
    key_rotation_days: int = 30  # 0: rotate only on `agentcred rotate-key`
    audit_log: str = "-"
    leader_election: bool = True  # several replicas: one leader writes; off for a lone replica
    lease_duration: int = 15  # seconds without renewal before a follower takes over
    lease_renew: float = 5.0
    status_interval: float = 1.0
    # ServiceAccounts (namespace/name, comma-separated) that may report and trace leaked values
    # in their own namespace; and those that may do so in every namespace.
    leak_reporters: str = ""
    cluster_leak_reporters: str = ""
    health_check_interval: float = 30.0  # seconds between minting-service health checks
    max_connections: int = 1024  # connections each HTTPS server (webhook, token service) holds at once
    # Scope matching per namespace at the token service: milliseconds of the event loop a second,
    # and the burst (see TokenService._grant).
    scope_ms_per_second: float = 250.0
    scope_ms_burst: int = 2000
    # Namespace-scoped mode: watch pods, Secrets and AgentCredentials only in these namespaces
    # (and admit pods only there); empty: every namespace (the default).
    watch_namespaces: tuple[str, ...] = ()
    # Gateways' external authorization: the ServiceAccounts ("namespace/name") of gateways that
    # may ask (they are handed upstream credentials), the gRPC ext_authz port (0: off; HTTP
    # forward-auth is on the API port), and each pod's budget of calls.
    gateways: tuple[str, ...] = ()
    gateway_grpc_address: str = "0.0.0.0"
    gateway_grpc_port: int = 9191
    gateway_rate: float = 100.0  # calls per second per pod, sustained
    gateway_burst: int = 200
    # How late the cluster's kubelets may put a renewed value into a container (rules.delivery):
    # 1.5 x their syncFrequency, plus a margin; 0 where no kubelet delivers (the stand-in).
    volume_refresh_delay: dt.timedelta = DEFAULT_VOLUME_REFRESH_DELAY
    # agentcred's CSI node plugins (`spec.projection.delivery: csi`): the ServiceAccount
    # ("namespace/name") they run as; empty: `<namespace>/agentcred-csi-node`.
    csi_node_account: str = ""
    # False: no Secret delivery (the chart's `secretDelivery: false`, RBAC without Secret writes):
    # pods asking for a credential delivered as a Secret are refused at admission.
    secret_delivery: bool = True

    @property
    def csi_plugin_account(self) -> str:
        return self.csi_node_account or f"{self.namespace}/{labels.CSI_NODE_SERVICE_ACCOUNT}"

    @property
    def scoped(self) -> bool:
        return bool(self.watch_namespaces)

    def watches(self, namespace: str) -> bool:
        """Whether objects in `namespace` are this operator's to see."""
        return not self.watch_namespaces or namespace in self.watch_namespaces

    def unwatched(self, namespace: str) -> str | None:
        """Why a pod in `namespace` cannot be admitted here, if it is outside the watch or
        where the webhook is never called. The webhook configuration selects neither, so this
        answers only a configuration widened by hand (admitted and gated, such a pod would wait
        forever) or a review sent to the webhook's port by someone other than the API server:
        sealed, a pod created in a skipped namespace with that answer was given its values."""
        if namespace in skipped_namespaces(self.namespace):
            return (
                f"the agentcred webhook admits no pods in namespace {namespace} (it skips kube-system and "
                "its own namespace)"
            )
        if self.watches(namespace):
            return None
        return (
            f"this agentcred operator is namespace-scoped to {', '.join(self.watch_namespaces)}; namespace "
            f"{namespace} is not one of them, so nothing would issue the pod's credentials"
        )

    @property
    def names(self) -> labels.StateNames:
        return labels.StateNames(self.instance)

    @property
    def effective_issuer(self) -> str:
        return self.issuer or f"https://{self.service}.{self.namespace}.svc:{self.api_port}"

    @classmethod
    def from_env(cls) -> OperatorConfig:
        return cls(
            namespace=_env("NAMESPACE", cls.namespace),
            instance=_env("INSTANCE", cls.instance),
            service=_env("SERVICE", cls.service),
            issuer=_env("ISSUER", cls.issuer),
            webhook_address=_env("WEBHOOK_ADDRESS", cls.webhook_address),
            webhook_port=int(_env("WEBHOOK_PORT", str(cls.webhook_port))),
            webhook_url=_env("WEBHOOK_URL", "") or None,
            webhook_config=_one_of("WEBHOOK_CONFIG", WEBHOOK_MODES, cls.webhook_config),
            serving_certificate=_one_of("SERVING_CERTIFICATE", CERTIFICATE_MODES, cls.serving_certificate),
            webhook_configuration=_env("WEBHOOK_CONFIGURATION", cls.webhook_configuration),
            api_address=_env("API_ADDRESS", cls.api_address),
            api_port=int(_env("API_PORT", str(cls.api_port))),
            health_address=_env("HEALTH_ADDRESS", cls.health_address),
            health_port=int(_env("HEALTH_PORT", str(cls.health_port))),
            token_rate=float(_env("TOKEN_RATE", str(cls.token_rate))),
            token_burst=int(_env("TOKEN_BURST", str(cls.token_burst))),
            introspectors=tuple(item.strip() for item in _env("INTROSPECTORS", "").split(",") if item.strip()),
            source_rate=float(_env("SOURCE_RATE", str(cls.source_rate))),
            source_burst=int(_env("SOURCE_BURST", str(cls.source_burst))),
            revocation_shards=int(_env("REVOCATION_SHARDS", str(cls.revocation_shards))),
            revocation_budget=int(_env("REVOCATION_BUDGET", str(cls.revocation_budget))),
            key_rotation_days=int(_env("KEY_ROTATION_DAYS", str(cls.key_rotation_days))),
            audit_log=_env("AUDIT_LOG", cls.audit_log),
            leader_election=_env("LEADER_ELECTION", "true").lower() == "true",
            dpop_nonce=_env("DPOP_NONCE", "false").lower() == "true",
            lease_duration=int(_env("LEASE_DURATION", str(cls.lease_duration))),
            lease_renew=float(_env("LEASE_RENEW", str(cls.lease_renew))),
            status_interval=float(_env("STATUS_INTERVAL", str(cls.status_interval))),
            leak_reporters=_env("LEAK_REPORTERS", cls.leak_reporters),
            cluster_leak_reporters=_env("CLUSTER_LEAK_REPORTERS", cls.cluster_leak_reporters),
            health_check_interval=float(_env("HEALTH_CHECK_INTERVAL", str(cls.health_check_interval))),
            max_connections=int(_env("MAX_CONNECTIONS", str(cls.max_connections))),
            scope_ms_per_second=float(_env("SCOPE_MS_PER_SECOND", str(cls.scope_ms_per_second))),
            scope_ms_burst=int(_env("SCOPE_MS_BURST", str(cls.scope_ms_burst))),
            watch_namespaces=parse_namespaces(_env("WATCH_NAMESPACES", "").split(",")),
            gateways=tuple(item.strip() for item in _env("GATEWAYS", "").split(",") if item.strip()),
            gateway_grpc_address=_env("GATEWAY_GRPC_ADDRESS", cls.gateway_grpc_address),
            gateway_grpc_port=int(_env("GATEWAY_GRPC_PORT", str(cls.gateway_grpc_port))),
            gateway_rate=float(_env("GATEWAY_RATE", str(cls.gateway_rate))),
            gateway_burst=int(_env("GATEWAY_BURST", str(cls.gateway_burst))),
            volume_refresh_delay=parse_delay(_env("VOLUME_REFRESH_DELAY", "")) or DEFAULT_VOLUME_REFRESH_DELAY,
            csi_node_account=_env("CSI_NODE_ACCOUNT", cls.csi_node_account),
            secret_delivery=_env("SECRET_DELIVERY", "true").lower() == "true",
        )


def parse_delay(text: str) -> dt.timedelta | None:
    """A volume refresh delay: a duration ("95s", "1m40s"), or 0 for none; blank: not set."""
    text = text.strip()
    if not text:
        return None
    if text in ("0", "0s"):
        return dt.timedelta(0)
    try:
        return parse_duration(text)
    except ValueError as error:
        raise ValueError(f"volume refresh delay: {error}, or 0") from None


def parse_namespaces(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Namespace names, in order, each once (blank entries dropped); a name that is not a valid
    namespace name is refused here rather than watched in vain."""
    found: list[str] = []
    for name in (n.strip() for n in names):
        if not name:
            continue
        if not DNS_LABEL_RE.fullmatch(name):
            raise ValueError(f"not a namespace name: {name!r} (lowercase letters, digits and '-', at most 63)")
        if name not in found:
            found.append(name)
    return tuple(found)


def configure_kopf(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    # Watches go quiet without explicit timeouts (a known Kopf/aiohttp behaviour).
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    # Watch only what is ours, filtered by the API server: the one CRD (whose first event says
    # every index has listed) and, of Secrets, only those their owners share for static sources;
    # the operator's own it lists at start and on election. Opted-in pods are not Kopf's to
    # watch: the operator follows them itself (runtime.pod_watch).
    settings.watching.label_selectors["v1", "secrets"] = f"{labels.SHARED_LABEL}=true"  # shared upstream values
    settings.watching.field_selectors["apiextensions.k8s.io", "customresourcedefinitions"] = (
        f"metadata.name={model.PLURAL}.{model.GROUP}"
    )
    # Every handler is an event handler: Kopf keeps no progress or diff base on any object (the
    # credentials' finalizer is the operator's own, see runtime.credential_events), so nothing
    # a tenant writes into an object's annotations can steer it.
    # Process an object's event as soon as it arrives (the default waits 0.1 s for more).
    settings.batching.batch_window = 0.01
    # Events are posted deliberately; log lines do not become Events.
    settings.posting.level = logging.WARNING
    settings.posting.enabled = False
    # The admission webhook is the operator's own endpoint (runtime.admission_webhook), not Kopf's.
    settings.admission.server = None
