"""The vocabularies agentcred writes where programs read them, one spelling each.

Revocation reasons are audit `reason` fields and metric labels (bounded on purpose); audit
actions name each line of the audit trail; Event reasons are what `kubectl get events` and
alerting match on. mypy checks every use against these lists.
"""

from __future__ import annotations

from typing import Literal

from .pods import EndReason

# Why a value was revoked: a task's end (`EndReason`), or one of the operator's own triggers.
RevocationReason = (
    EndReason
    | Literal[
        "orphaned",  # a managed Secret whose pod is gone
        "emergency",  # `agentcred revoke`
        "leaked",  # a leak report (`spec.onLeak: reissue`)
        "leaked-quarantine",  # a leak report (`spec.onLeak: quarantine`)
        "unreadable-state",  # the Secret's bookkeeping did not verify
        "credential-deleted",
        "credential-not-ready",  # no longer allowed (policy, upstream, validity)
        "exception-expired",  # a static value's exception passed
        "max-lifetime",
        "barred",  # revoked for this pod earlier: never again
        "subject-removed",  # the pod's ServiceAccount is no longer a subject
        "not-requested",  # the pod no longer names the credential
        "gateway-only",  # the credential is now delivered to gateways only: out of the pod
    ]
)

# One line of the audit trail.
AuditAction = Literal[
    "issue", "renew", "revoke", "deny", "exchange", "revoke-token", "void", "leak", "trace", "gateway"
]

# A policy's answer for a credential (`rules.tenancy`).
PolicyReason = Literal["NoPolicy", "PolicyDenied", "Allowed"]

# Why a source cannot produce a value now (a static upstream, a minting service).
SourceReason = Literal[
    "UpstreamNotShared",
    "UpstreamKeyMissing",
    "Compromised",
    "MintingServiceRefused",
    "MintingServiceMalformedReply",
    "MintingServiceError",
    "MintingServiceTimeout",
    "MintingServiceUnreachable",
    "MintingServiceUnhealthy",
    "UnfitForHeader",  # a static value that cannot travel in an HTTP header (gateway delivery)
]

# The reason of a credential's Ready condition.
ReadyReason = Literal["Valid", "InvalidSpec", "ExceptionExpired", "TTLTooShort"] | PolicyReason | SourceReason

# Why a pod stays gated (each also the Warning Event posted on it).
ProblemReason = (
    Literal[
        "CredentialNotFound", "CredentialNotReady", "NotASubject", "Revoked", "MaxLifetimeReached", "RevocationBudget"
    ]
    | SourceReason
)

# Kubernetes Event reasons the operator posts on pods and AgentCredentials (besides each
# `ProblemReason`, and a credential's Ready condition reason when Ready changes).
EventReason = (
    ProblemReason
    | Literal[
        "CredentialsIssued",
        "Renewed",
        "CredentialRevoked",
        "EmergencyRevoke",
        "NotAdmitted",
        "BindingInUse",
        "ServiceRevokeFailed",
        "LeakReported",
        "CredentialLeaked",
        "Quarantined",
        "RequestRefused",
    ]
)
