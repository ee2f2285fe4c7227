"""Durations as written in agentcred's resources: "45s", "15m", "8h", "1h30m", "1d".

One grammar for every duration field (ttl, renewBefore, maxLifetime, timeout, review cadence,
a policy's maxTTL and maxLifetime): one or more whole numbers, each followed by a unit, s
(seconds), m (minutes), h (hours) or d (days of 24 hours); longer than zero. The CRDs enforce
the same grammar with CEL (`cel_seconds`), so the API server refuses a bad value itself, with
a message that names the units.
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
UNITS_TEXT = "s (seconds), m (minutes), h (hours), d (days)"
EXAMPLES_TEXT = "45s, 15m, 8h, 1h30m, 1d"
GRAMMAR_TEXT = f"whole numbers each followed by a unit, {UNITS_TEXT}, e.g. {EXAMPLES_TEXT}"

DURATION_PATTERN = r"^([0-9]{1,6}[smhd])+$"
_DURATION_RE = re.compile(DURATION_PATTERN)
_PART_RE = re.compile(r"([0-9]+)([smhd])")


def parse_duration(text: str) -> timedelta:
    """Parse a duration such as "1h30m"; raise ValueError naming the bad text."""
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}: use {GRAMMAR_TEXT}")
    return _parse(text)


@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> timedelta:
    """Kept: specs are read on every plan, and their few durations repeat."""
    if not _DURATION_RE.fullmatch(text):
        raise ValueError(f"invalid duration {text!r}: use {GRAMMAR_TEXT}")
    seconds = sum(int(amount) * UNIT_SECONDS[unit] for amount, unit in _PART_RE.findall(text))
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: it must be longer than zero")
    return timedelta(seconds=seconds)


def cel_seconds(expression: str) -> str:
    """A CEL expression for the seconds in the duration `expression` (a string).

    CEL's own `duration()` knows no days, and fails with a conversion error on any text it
    cannot read; this sums the parts, so a malformed value costs one clear message (from the
    field's own rule) and nothing else."""
    return (
        f"{expression}.findAll('[0-9]+[smhd]').map(p, int(p.substring(0, p.size() - 1)) * "
        "(p.endsWith('d') ? 86400 : p.endsWith('h') ? 3600 : p.endsWith('m') ? 60 : 1)).sum()"
    )
