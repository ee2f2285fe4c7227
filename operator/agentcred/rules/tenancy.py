"""Which AgentCredentialPolicy lets a credential exist in its namespace, or why none does.

Cluster admins own the policies (cluster-scoped); tenants own their namespaces. A credential
is allowed when at least one policy that selects its namespace allows every part of it:
category, source kind, each audience, the minting service's URL, ttl, maxLifetime and each
scope pattern. With no policy for the namespace, nothing is allowed.

Pure: the spec, the namespace's labels and the policies in; a verdict out.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..api.durations import parse_duration
from ..api.model import AgentCredentialSpec
from ..api.policy_model import AgentCredentialPolicySpec, LabelSelector
from ..api.reasons import PolicyReason

MAX_REASONS = 4
NAMESPACE_PLACEHOLDER = "${namespace}"


@dataclass(frozen=True)
class PolicyVerdict:
    allowed: bool
    policy: str | None  # the policy that allows it
    reason: PolicyReason
    message: str


def selects(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector semantics."""
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    for requirement in selector.match_expressions:
        present = requirement.key in labels
        value = labels.get(requirement.key)
        if requirement.operator == "In" and (not present or value not in requirement.values):
            return False
        if requirement.operator == "NotIn" and present and value in requirement.values:
            return False
        if requirement.operator == "Exists" and not present:
            return False
        if requirement.operator == "DoesNotExist" and present:
            return False
    return True


@functools.lru_cache(maxsize=4096)
def _allow_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def allows_value(patterns: Iterable[str], value: str) -> bool:
    """A literal value (an audience) against allow patterns where `*` is the only wildcard."""
    return any(_allow_regex(pattern).fullmatch(value) for pattern in patterns)


URL_PATTERN = re.compile(r"^https://(?P<host>[^/:]+)(?::(?P<port>[0-9]+|\*))?(?P<path>/.*)?$")


def allows_url(patterns: Iterable[str], url: str) -> bool:
    """A minting service's URL against allow patterns (`https://host[:port][/path]`), part by
    part: the host label by label (`*` stands for one label, never a dot; a host of just `*`
    for any host), the port exactly (443 when absent; `*` for any), the path with `*` for any
    run (absent: `/` only). A URL with userinfo, a query or a fragment is never allowed."""
    try:
        target = urlsplit(url)
        port = target.port or 443
    except ValueError:
        return False
    if target.scheme != "https" or not target.hostname or "@" in target.netloc or target.query or target.fragment:
        return False
    wanted = target.hostname.split(".")
    for pattern in patterns:
        allowed = URL_PATTERN.match(pattern)
        if allowed is None:
            continue
        host, allowed_port, path = allowed.group("host").lower(), allowed.group("port"), allowed.group("path")
        if allowed_port not in ("*", str(port)) and not (allowed_port is None and port == 443):
            continue
        labels_ = host.split(".")
        if host != "*" and (
            len(labels_) != len(wanted) or not all(a in ("*", w) for a, w in zip(labels_, wanted, strict=True))
        ):
            continue
        if _allow_regex(path or "/").fullmatch(target.path or "/"):
            return True
    return False


def for_namespace(patterns: Iterable[str], namespace: str) -> list[str]:
    """Patterns with `${namespace}` standing for the credential's own namespace."""
    return [pattern.replace(NAMESPACE_PLACEHOLDER, namespace) for pattern in patterns]


WILDCARD = "\x00"  # marks a wildcard atom, which no literal character equals


def _glob_atoms(pattern: str) -> list[str]:
    """A credential's glob pattern (fnmatch syntax) as atoms: literal characters, and each
    wildcard (`*`, `?`, `[...]`) as one atom that equals no literal."""
    atoms, i, n = [], 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char in "*?":
            atoms.append(WILDCARD + char)
        elif char == "[":
            j = i  # find the class's end exactly as fnmatch does
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                atoms.append("[")  # no closing bracket: a literal
            else:
                atoms.append(WILDCARD + pattern[i - 1 : j + 1])
                i = j + 1
        else:
            atoms.append(char)
    return atoms


def covers(bound: str, pattern: str) -> bool:
    """Does every string the glob `pattern` matches also match `bound` (where only `*` is a
    wildcard)? A literal of `bound` matches only the same literal; its `*` absorbs anything,
    wildcards included. Sound: it never says yes to a pattern reaching outside the bound."""
    atoms = _glob_atoms(pattern)
    parts = [list(part) for part in bound.split("*")]
    first, last = parts[0], parts[-1]
    if len(parts) == 1:
        return atoms == first
    if atoms[: len(first)] != first:
        return False
    # Only `*` in the bound: matching each literal part at its leftmost place is enough.
    position = len(first)
    for needle in parts[1:-1]:
        if not needle:
            continue
        found = next(
            (i for i in range(position, len(atoms) - len(needle) + 1) if atoms[i : i + len(needle)] == needle), None
        )
        if found is None:
            return False
        position = found + len(needle)
    return len(atoms) - position >= len(last) and atoms[len(atoms) - len(last) :] == last


def _refusals(policy: AgentCredentialPolicySpec, spec: AgentCredentialSpec, namespace: str) -> list[str]:
    """Everything in `spec` this policy does not allow (empty: allowed)."""
    refused = []
    audiences = for_namespace(policy.audiences, namespace)
    services = for_namespace(policy.minting_services, namespace)
    if policy.categories is not None and spec.category not in policy.categories:
        refused.append(f"category {spec.category} is not allowed (allowed: {', '.join(policy.categories)})")
    kind = spec.source.kind
    if kind not in policy.sources:
        refused.append(f"source {kind} is not allowed (allowed: {', '.join(policy.sources)})")
    if spec.source.jwt is not None:
        for audience in spec.source.jwt.audiences:
            if not allows_value(audiences, audience):
                refused.append(f"audience {audience!r} is not allowed (allowed: {', '.join(audiences) or 'none'})")
        if policy.require_dpop and not spec.source.jwt.dpop_required:
            refused.append("tokens must be sender-constrained: set source.jwt.dpop to required")
    if spec.source.webhook is not None and not allows_url(services, spec.source.webhook.url):
        refused.append(
            f"minting service {spec.source.webhook.url!r} is not allowed (allowed: {', '.join(services) or 'none'})"
        )
    if spec.ttl_delta > parse_duration(policy.max_ttl):
        refused.append(f"ttl {spec.ttl} is over the maximum {policy.max_ttl}")
    if spec.max_lifetime_delta > parse_duration(policy.max_lifetime):
        refused.append(f"maxLifetime {spec.max_lifetime} is over the maximum {policy.max_lifetime}")
    if policy.scope is not None and spec.scope is not None:
        for dimension in ("tools", "resources", "actions"):
            bounds = getattr(policy.scope, dimension)
            if bounds is None:
                continue
            for pattern in getattr(spec.scope, dimension):
                if not any(covers(bound, pattern) for bound in bounds):
                    refused.append(
                        f"scope {dimension} pattern {pattern!r} is wider than allowed "
                        f"(allowed: {', '.join(bounds) or 'none'})"
                    )
    return refused


def describe_selector(selector: LabelSelector) -> str:
    """A label selector as kubectl's `-l` writes it."""
    parts = [f"{key}={value}" for key, value in sorted(selector.match_labels.items())]
    for requirement in selector.match_expressions:
        values = ",".join(requirement.values)
        parts.append(
            {
                "In": f"{requirement.key} in ({values})",
                "NotIn": f"{requirement.key} notin ({values})",
                "Exists": requirement.key,
                "DoesNotExist": f"!{requirement.key}",
            }[requirement.operator]
        )
    return ",".join(parts) or "every namespace"


def _no_policy(
    namespace: str, namespace_labels: Mapping[str, str], policies: Mapping[str, AgentCredentialPolicySpec]
) -> str:
    """Why no policy applies, and what each would take: a namespace usually lacks a label."""
    own = ",".join(f"{k}={v}" for k, v in sorted(namespace_labels.items()) if k != "kubernetes.io/metadata.name")
    message = f"no AgentCredentialPolicy applies to namespace {namespace} (its labels: {own or 'none'})"
    if not policies:
        return f"{message}: there is no AgentCredentialPolicy; a cluster admin must create one that selects it"
    shown = [
        f"{name} selects {describe_selector(policy.namespace_selector)}" for name, policy in sorted(policies.items())
    ]
    more = f"; and {len(shown) - MAX_REASONS} more" if len(shown) > MAX_REASONS else ""
    return (
        f"{message}: {'; '.join(shown[:MAX_REASONS])}{more}. A cluster admin labels the namespace to match one "
        "(tenants cannot), or creates a policy that selects it"
    )


def judge(
    spec: AgentCredentialSpec,
    namespace: str,
    namespace_labels: Mapping[str, str],
    policies: Mapping[str, AgentCredentialPolicySpec],
) -> PolicyVerdict:
    applicable = {
        name: policy
        for name, policy in sorted(policies.items())
        if selects(policy.namespace_selector, namespace_labels)
    }
    if not applicable:
        return PolicyVerdict(False, None, "NoPolicy", _no_policy(namespace, namespace_labels, policies))
    reasons = []
    for name, policy in applicable.items():
        refused = _refusals(policy, spec, namespace)
        if not refused:
            return PolicyVerdict(True, name, "Allowed", f"allowed by AgentCredentialPolicy {name}")
        reasons.append(f"policy {name}: {'; '.join(refused)}")
    shown = reasons[:MAX_REASONS] + ([f"and {len(reasons) - MAX_REASONS} more"] if len(reasons) > MAX_REASONS else [])
    return PolicyVerdict(False, None, "PolicyDenied", " | ".join(shown))
