"""Labels, annotations and names that users, the chart and the tests rely on."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .model import GROUP

# On pods (set by the user).
INJECT_LABEL = f"{GROUP}/inject"
CREDENTIALS_ANNOTATION = f"{GROUP}/credentials"
# On pods (set by the admission webhook).
BINDING_ANNOTATION = f"{GROUP}/binding"
ADMITTED_ANNOTATION = f"{GROUP}/admitted-at"  # when; maxLifetime counts from here
SEAL_ANNOTATION = f"{GROUP}/admission-seal"  # the webhook's MAC over what it admitted
SCHEDULING_GATE = f"{GROUP}/credentials"
# On pods (set by the operator): a value leaked and `spec.onLeak: quarantine` -- for a
# NetworkPolicy to select. Once set it cannot be removed (the pod guard).
QUARANTINED_LABEL = f"{GROUP}/quarantined"

# On the per-pod Secrets the operator manages.
MANAGED_LABEL = f"{GROUP}/managed"
BINDING_LABEL = f"{GROUP}/binding"
POD_UID_LABEL = f"{GROUP}/pod-uid"
JOB_LABEL = f"{GROUP}/job"
CREDENTIAL_LABEL_PREFIX = f"credential.{GROUP}/"  # + credential name, value: category
ROLE_LABEL = f"{GROUP}/role"  # on the operator's own Secrets (the key ring)
POD_ANNOTATION = f"{GROUP}/pod"
STATE_ANNOTATION = f"{GROUP}/state"
STATE_SEAL_ANNOTATION = f"{GROUP}/state-seal"  # the operator's MAC over the bookkeeping

# On upstream Secrets of static (secretRef) sources, set by whoever owns the Secret.
SHARED_LABEL = f"{GROUP}/shared"  # "true": the operator may look at it
SHARED_WITH_ANNOTATION = f"{GROUP}/shared-with"  # AgentCredential names (comma-separated), or "*"

# On the key ring Secret: a request from `agentcred rotate-key`, and the last one carried out.
ROTATE_ANNOTATION = f"{GROUP}/rotate"
ROTATED_ANNOTATION = f"{GROUP}/rotated"

# On AgentCredentials: the operator's finalizer (it revokes every value before letting go),
# and requests from `agentcred revoke` and `agentcred renew`.
FINALIZER = f"{GROUP}/revoke-projections"
REVOKE_ANNOTATION = f"{GROUP}/revoke"
RENEW_ANNOTATION = f"{GROUP}/renew"

SECRET_PREFIX = "agentcred-"
VOLUME_PREFIX = "agentcred-"
VALUE_FILE = "token"
# The private key (a JWK) a DPoP-bound value is bound to, next to it, rotated with it.
DPOP_KEY_FILE = "dpop.jwk"
EXPIRY_FILE = "expires-at"
# A gateway-only credential a pod was admitted for: an item of the identity volume naming a
# key the operator never writes (so no file appears), recorded in the pod's immutable spec.
GATEWAY_SUFFIX = "gateway"
GATEWAY_DIRECTORY = "gateway-only"
SERVICE_ACCOUNT_AUDIENCE = "agentcred"

# CSI delivery: agentcred's CSI node plugin publishes one inline volume per credential of a pod
# (`spec.projection.delivery: csi`); the volume's attributes name the pod's binding and the
# credential, which the operator checks against the pod the kubelet names and authenticates.
CSI_DRIVER = f"csi.{GROUP}"
CSI_BINDING_ATTRIBUTE = "binding"
CSI_CREDENTIAL_ATTRIBUTE = "credential"
# ServiceAccount the node plugin runs as, in the operator's namespace (the chart's `<fullname>-csi-node`).
CSI_NODE_SERVICE_ACCOUNT = "agentcred-csi-node"

# What a pod that asks for a minted credential gets to reach the token service with: its
# ServiceAccount token for audience `agentcred` (kubelet-rotated) and the operator's CA, in
# one read-only volume, and environment variables naming them and the token endpoint.
IDENTITY_VOLUME = f"{VOLUME_PREFIX}identity"
IDENTITY_MOUNT_PATH = "/var/run/secrets/agentcred"
IDENTITY_TOKEN_FILE = "token"
# The pod's identity addressed to the token endpoint itself: a workload identity federation
# assertion (MCP's jwt-bearer profile), single-use, rotated by the kubelet like the other.
ASSERTION_FILE = "assertion"
IDENTITY_TOKEN_SECONDS = 600  # the shortest the API server allows; the kubelet renews at 80%
CA_KEY = "ca.crt"  # in each pod's Secret, and in the operator's `<instance>-ca-bundle` ConfigMap
IDENTITY_ENV = {
    "AGENTCRED_IDENTITY_TOKEN_FILE": f"{IDENTITY_MOUNT_PATH}/{IDENTITY_TOKEN_FILE}",
    "AGENTCRED_CA_FILE": f"{IDENTITY_MOUNT_PATH}/{CA_KEY}",
}


# A binding id is what the webhook generates (8 random bytes, hex): anything else found in a
# pod or a Secret was not made by us and is never used to name an object.
BINDING_PATTERN = re.compile(r"^[0-9a-f]{16}$")


def is_binding(text: object) -> bool:
    return isinstance(text, str) and BINDING_PATTERN.fullmatch(text) is not None


def binding_of_secret_name(name: object) -> str | None:
    """The binding id in a Secret name we would have made, or None."""
    if not isinstance(name, str) or not name.startswith(SECRET_PREFIX):
        return None
    binding = name[len(SECRET_PREFIX) :]
    return binding if is_binding(binding) else None


def secret_name(binding: str) -> str:
    return f"{SECRET_PREFIX}{binding}"


def volume_name(credential: str) -> str:
    """Volume names are DNS labels (<= 63), so long credential names are hashed."""
    return f"{VOLUME_PREFIX}{hashlib.sha256(credential.encode()).hexdigest()[:12]}"


def value_key(credential: str) -> str:
    return f"{credential}.{VALUE_FILE}"


def dpop_key_key(credential: str) -> str:
    return f"{credential}.{DPOP_KEY_FILE}"


def gateway_key(credential: str) -> str:
    return f"{credential}.{GATEWAY_SUFFIX}"


def expiry_key(credential: str) -> str:
    return f"{credential}.{EXPIRY_FILE}"


def credential_label(credential: str) -> str:
    return f"{CREDENTIAL_LABEL_PREFIX}{credential}"


@dataclass(frozen=True)
class StateNames:
    """The operator's own objects in its namespace, named after its instance (the Helm
    release's full name), so that two installations side by side never share one."""

    instance: str = "agentcred"

    @property
    def keyring(self) -> str:
        return f"{self.instance}-signing-keys"

    @property
    def serving_certificate(self) -> str:
        return f"{self.instance}-webhook-tls"

    @property
    def ca_bundle(self) -> str:
        return f"{self.instance}-ca-bundle"

    @property
    def lease(self) -> str:
        return f"{self.instance}-leader"

    def revocation_shard(self, shard: int) -> str:
        return f"{self.instance}-revocations-{shard}"

    def shard_number(self, name: str) -> int | None:
        prefix = f"{self.instance}-revocations-"
        suffix = name[len(prefix) :] if name.startswith(prefix) else ""
        return int(suffix) if suffix.isdigit() else None
