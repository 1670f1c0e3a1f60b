"""Parsing of human sizes ("8M", "10G") and durations ("5s", "12h", "7d").

Sizes are binary (K = 1024). Errors name the offending text and show valid examples, so a
config error can be fixed from the message alone.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_DURATION_UNITS = {"us": 1e-6, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w)", re.IGNORECASE)


def parse_size(value: str | int) -> int:
    """Bytes from an int or a string like "512", "8M", "1.5G", "10GiB"."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: use a number of bytes or a string like '8M' or '10G'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value}: must not be negative")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"invalid size {value!r}: use a number of bytes or a string like '8M' or '10G'")
    number, unit = m.groups()
    return int(float(number) * _SIZE_UNITS[unit.upper()])


def parse_duration(value: str | int | float) -> float:
    """Seconds from a number or a string like "5s", "12h", "7d", "1h30m", "250ms"."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: use seconds or a string like '5s', '12h', '7d'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration {value}: must not be negative")
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos and text[pos : m.start()].strip():
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
        pos = m.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"invalid duration {value!r}: use seconds or a string like '5s', '12h', '7d'")
    return total


def format_size(n: int) -> str:
    """A short human form of a byte count, for status output."""
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n}"
