"""Durations as the config and the command line write them: `90`, `90s`, `15m`, `12h`,
`7d` (pure). Here, not in host/config.py, because schedules (protocol) read them too."""
import math
import re

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value, low=0.0, high=math.inf):
    """`90`, `90s`, `15m`, `12h`, `7d`: seconds (a float) from low to high."""
    match = _DURATION.fullmatch(value.strip())
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()] if match else -1
    if not low <= seconds <= high or not match:
        raise ValueError(f"expected a duration from {format_span(low)} to {format_span(high)}: "
                         "a number with an optional unit s, m, h or d (7d, 12h, 90)")
    return seconds


def format_span(seconds):
    """Seconds as the largest whole unit parse_duration reads: 604800 -> `7d`, 90 -> `90s`."""
    for unit in ("d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
