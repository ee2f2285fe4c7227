"""Durations as written in AgentCredential specs: "15m", "8h", "90d", "1h30m"."""

from __future__ import annotations

import functools
import re
from datetime import timedelta

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# The same grammar is enforced by the CRD schema, so the API server refuses bad values
# before the operator ever sees them.
DURATION_PATTERN = r"^([0-9]{1,6}[smhd])+$"
_DURATION_RE = re.compile(DURATION_PATTERN)
_PART_RE = re.compile(r"([0-9]+)([smhd])")


def parse_duration(text: str) -> timedelta:
    """Parse a duration such as "1h30m"; raise ValueError naming the bad text."""
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}: use a number and a unit (s, m, h, d), e.g. 15m, 8h, 1h30m")
    return _parse(text)


@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> timedelta:
    """Kept: specs are read on every plan, and their few durations repeat."""
    if not _DURATION_RE.fullmatch(text):
        raise ValueError(f"invalid duration {text!r}: use a number and a unit (s, m, h, d), e.g. 15m, 8h, 1h30m")
    seconds = sum(int(amount) * UNIT_SECONDS[unit] for amount, unit in _PART_RE.findall(text))
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: it must be longer than zero")
    return timedelta(seconds=seconds)
