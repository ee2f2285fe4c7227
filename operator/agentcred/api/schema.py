"""The building blocks of agentcred's resource schemas: the base model, the field types
and patterns the API server enforces, and CEL rules. Every constraint here reaches the CRDs
(generated from the models), so the API server refuses invalid objects itself."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from .durations import DURATION_PATTERN, GRAMMAR_TEXT, cel_seconds, parse_duration

Category = Literal["model", "tool", "retrieval", "deployment"]
CATEGORIES: tuple[str, ...] = Category.__args__  # type: ignore[attr-defined]
SourceKind = Literal["jwt", "secretRef", "webhook"]
JwtAlgorithm = Literal["EdDSA", "ES256", "RS256"]
OnLeak = Literal["reissue", "quarantine"]
DPoPMode = Literal["optional", "required"]

# A DNS-1123 label (a namespace's or a ServiceAccount's name, say): the one spelling of the rule.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_LABEL_RE = re.compile(DNS_LABEL)
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
# Absolute, no "." or ".." segments, no hidden names, nothing the kubelet would reject.
MOUNT_PATH = r"^(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+$"
ENV_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# https, a host name or IPv4 address, an optional port and path: no userinfo, query or fragment.
HTTPS_URL = r"^https://[A-Za-z0-9]([-.A-Za-z0-9]*[A-Za-z0-9])?(:[0-9]{1,5})?(/[^\s?#@]*)?$"

NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Pattern = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, Any]:
    """One `x-kubernetes-validations` entry; fieldPath makes the error name the field."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


# A scope pattern is matched against every intent of every token request: its cost is a
# tenant's to choose and everyone's to pay (the token service is one event loop). Patterns with
# many wildcards, matched 64 intents a request against 384 patterns, cost up to a second each.
MAX_WILDCARDS = 8
_FEW_WILDCARDS = f"^[^*?[]*([*?[][^*?[]*){{0,{MAX_WILDCARDS}}}$"
WILDCARDS_MESSAGE = f"a scope pattern has at most {MAX_WILDCARDS} wildcards (*, ? and [...] each count)"


def _few_wildcards(value: str) -> str:
    if sum(value.count(c) for c in "*?[") > MAX_WILDCARDS:
        raise ValueError(WILDCARDS_MESSAGE)
    return value


GlobPattern = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256),
    AfterValidator(_few_wildcards),
    Field(
        json_schema_extra={"x-kubernetes-validations": [cel(f"self.matches('{_FEW_WILDCARDS}')", WILDCARDS_MESSAGE)]}
    ),
]


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def api_version_field() -> Any:
    return Field(
        default=None,
        description="APIVersion defines the versioned schema of this representation of an object "
        "(here agentcred.dev/v1alpha1).",
    )


def kind_field() -> Any:
    return Field(
        default=None, description="Kind is a string value representing the REST resource this object represents."
    )


def _duration(value: str) -> str:
    parse_duration(value)
    return value


def _https_url(value: str) -> str:
    if not re.fullmatch(HTTPS_URL, value):
        raise ValueError(HTTPS_URL_HINT)
    return value


HTTPS_URL_HINT = (
    "must be https://host[:port][/path], with no userinfo, query or fragment, e.g. "
    "https://minter.team-a.svc:8443/mint: plain http is refused (values would travel in the clear)"
)
# A minting service's URL: checked by a CEL rule rather than a `pattern`, so that the API server
# answers with the hint, not with a regular expression.
HttpsUrl = Annotated[
    str,
    StringConstraints(max_length=2048),
    AfterValidator(_https_url),
    Field(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(f"self.matches('{HTTPS_URL.replace(chr(92), chr(92) * 2)}')", HTTPS_URL_HINT)
            ]
        }
    ),
]


# Every duration field, one grammar (see `durations`). A CEL rule rather than a `pattern`:
# the API server then answers with this message, not with a regular expression.
Duration = Annotated[
    str,
    StringConstraints(max_length=32),
    AfterValidator(_duration),
    Field(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.matches('{DURATION_PATTERN}') && {cel_seconds('self')} > 0",
                    f"must be a duration longer than zero: {GRAMMAR_TEXT}",
                )
            ]
        }
    ),
]


def _this_millennium(value: dt.date) -> dt.date:
    if not 2000 <= value.year <= 2999:
        raise ValueError(f"{value.isoformat()} is not a date between 2000-01-01 and 2999-12-31")
    return value


# A calendar date agentcred computes with (exception expiries, reviews): one this millennium,
# so no date arithmetic overflows; the API server refuses others (the pattern).
Date = Annotated[
    dt.date, AfterValidator(_this_millennium), Field(json_schema_extra={"pattern": r"^2[0-9]{3}-[0-9]{2}-[0-9]{2}$"})
]
