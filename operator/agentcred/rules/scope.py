"""Does an intent (tool, action, resource) fall inside a credential's scope?

Patterns are shell-style globs (`*`, `?`, `[...]`), matched case-sensitively. Each
dimension must be allowed by one of its patterns -- an empty list allows nothing, `*`
allows everything -- and any matching `deny` pattern refuses the intent: deny wins.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from pydantic import ValidationError

from ..api.model import Scope

DIMENSIONS = ("tool", "action", "resource")
# An exchanged token never lives longer than this (nor past its credential's own limits).
EXCHANGE_MAX_TTL = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Intent:
    tool: str
    action: str
    resource: str

    def as_dict(self) -> dict[str, str]:
        return {"tool": self.tool, "action": self.action, "resource": self.resource}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # a short machine-readable reason
    message: str


def _patterns(scope: Any, dimension: str) -> list[str]:
    return list(getattr(scope, f"{dimension}s", None) or [])


GLOB_CHARACTERS = frozenset("*?[]")
# Spellings a tool may read as the same name as a denied one: deny patterns match literally,
# so intents must come in one plain spelling. Refused rather than canonicalised: agentcred
# cannot know how each tool decodes and normalises a name (percent-decoding, trimming, a
# trailing separator, `;` path parameters, a `#` fragment), and a canonical form chosen here
# that differs from the tool's is a way around a deny; refused, every name means itself.
AMBIGUOUS = ("..", "//", "/./", "\\")
DECODED = frozenset("%;#")  # percent-encoding, path parameters, fragments
TRAILING = ("/", ".")


def intent_problem(value: str) -> str | None:
    """Why a tool, action or resource cannot be an intent, or None."""
    if GLOB_CHARACTERS & set(value):
        # "repo:acme/*" as an intent would slip past a deny on "repo:acme/secrets-*" and then cover it.
        return "has a glob character (* ? [ ]): an intent names one thing, literally"
    if not value.isascii() or not value.isprintable():
        return "has characters outside printable ASCII (look-alikes and controls are refused)"
    if " " in value:
        return "has a space (a tool may trim or collapse it into another name)"
    if DECODED & set(value):
        return "has % ; or # (a tool may decode or cut it into another name)"
    if any(part in value for part in AMBIGUOUS) or value.startswith("./") or value.endswith(TRAILING):
        return "has a path spelling (.. // /./ \\ ./, a trailing / or .) that could name a denied resource another way"
    return None


def evaluate(scope: Scope | None, intent: Intent) -> Decision:
    for dimension in DIMENSIONS:
        value = getattr(intent, dimension)
        problem = intent_problem(value)
        if problem is not None:
            return Decision(False, "invalid-intent", f"{dimension} {value!r} {problem}")
    if scope is None:
        return Decision(False, "no-scope", "the credential has no scope, so no intent can be allowed")
    for dimension in DIMENSIONS:
        value = getattr(intent, dimension)
        if scope.deny is not None:
            denied_by = next((p for p in _patterns(scope.deny, dimension) if fnmatchcase(value, p)), None)
            if denied_by is not None:
                return Decision(
                    False, f"{dimension}-denied", f"{dimension} {value!r} is denied by pattern {denied_by!r}"
                )
    for dimension in DIMENSIONS:
        value = getattr(intent, dimension)
        if not any(fnmatchcase(value, p) for p in _patterns(scope, dimension)):
            return Decision(
                False, f"{dimension}-not-allowed", f"{dimension} {value!r} is not in the credential's scope"
            )
    return Decision(True, "allowed", "the intent is within the credential's scope")


def scope_covers(token_scope: dict[str, Any], intent: Intent) -> Decision:
    """The same rules against a token's `scope` claim (as a verifier sees it); a claim that is
    no valid scope (a pattern with more wildcards than a credential may have now) allows nothing."""
    try:
        scope = Scope.model_validate(token_scope)
    except ValidationError:
        return Decision(False, "invalid-scope", "the token's scope claim is not a valid scope")
    return evaluate(scope, intent)
