"""Labels, annotations and names that users, the chart and the tests rely on."""

from __future__ import annotations

import hashlib

from .model import GROUP

# On pods (set by the user).
INJECT_LABEL = f"{GROUP}/inject"
CREDENTIALS_ANNOTATION = f"{GROUP}/credentials"
# On pods (set by the admission webhook).
BINDING_ANNOTATION = f"{GROUP}/binding"
ADMITTED_ANNOTATION = f"{GROUP}/admitted-at"  # for the projection latency metric
SCHEDULING_GATE = f"{GROUP}/credentials"

# On the per-pod Secrets the operator manages.
MANAGED_LABEL = f"{GROUP}/managed"
BINDING_LABEL = f"{GROUP}/binding"
POD_UID_LABEL = f"{GROUP}/pod-uid"
JOB_LABEL = f"{GROUP}/job"
CREDENTIAL_LABEL_PREFIX = f"credential.{GROUP}/"  # + credential name, value: category
ROLE_LABEL = f"{GROUP}/role"  # on the operator's own Secrets (the key ring)
POD_ANNOTATION = f"{GROUP}/pod"
STATE_ANNOTATION = f"{GROUP}/state"

# On AgentCredentials: requests from `agentcred revoke` and `agentcred renew`.
REVOKE_ANNOTATION = f"{GROUP}/revoke"
RENEW_ANNOTATION = f"{GROUP}/renew"

SECRET_PREFIX = "agentcred-"
VOLUME_PREFIX = "agentcred-"
VALUE_FILE = "token"
EXPIRY_FILE = "expires-at"
SERVICE_ACCOUNT_AUDIENCE = "agentcred"


def secret_name(binding: str) -> str:
    return f"{SECRET_PREFIX}{binding}"


def volume_name(credential: str) -> str:
    """Volume names are DNS labels (<= 63), so long credential names are hashed."""
    return f"{VOLUME_PREFIX}{hashlib.sha256(credential.encode()).hexdigest()[:12]}"


def value_key(credential: str) -> str:
    return f"{credential}.{VALUE_FILE}"


def expiry_key(credential: str) -> str:
    return f"{credential}.{EXPIRY_FILE}"


def credential_label(credential: str) -> str:
    return f"{CREDENTIAL_LABEL_PREFIX}{credential}"
