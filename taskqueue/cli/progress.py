"""A one-line progress bar for long command-line runs: count, rate, ETA.

Drawn only on a terminal, and at most 10 times a second, so that a fast run
spends its time publishing rather than drawing; `render` is the pure part.
"""
import os
import sys
import time

#: Seconds between two redraws.
REDRAW_INTERVAL = 0.1


def render(done, total, elapsed, width=80):
    """The bar's text for `done` of `total` after `elapsed` seconds, at most `width` characters."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if done >= total:
        eta = "done"
    elif rate > 0:
        eta = f"ETA {format_duration((total - done) / rate + 0.5)}"   # the nearest second
    else:
        eta = "ETA ?"
    percent = 100 * done // total if total else 100
    figures = f" {done}/{total} {percent:3d}% {rate:,.0f}/s {eta}"
    bar_width = max(0, min(40, width - len(figures) - 3))
    filled = bar_width * done // total if total else bar_width
    bar = f"[{'#' * filled}{'.' * (bar_width - filled)}]" if bar_width >= 10 else ""
    return (bar + figures)[:width - 1]


def format_duration(seconds, tenths_below=0):
    """`0.4s` (below `tenths_below` seconds), `12s`, `5m03s`, `2h05m`, `3d04h`: short and
    exact enough for an ETA, an age or an uptime. The last unit shown is cut, not rounded
    up: 59.9 s is `59s`, never `1m00s`. The one format of a duration for people."""
    if seconds < tenths_below:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


class Progress:
    """The bar on `stream` (stderr by default), if it is a terminal; else nothing."""

    def __init__(self, total, stream=None, clock=time.monotonic):
        self.total = total
        self._stream = stream or sys.stderr
        self._clock = clock
        self._started = clock()
        self._drawn_at = None
        self.enabled = self._stream.isatty()

    def update(self, done):
        now = self._clock()
        if self.enabled and (self._drawn_at is None or now - self._drawn_at >= REDRAW_INTERVAL):
            self._draw(done, now)

    def finish(self, done):
        """Draw the final state and end the line, so that what follows starts afresh."""
        if self.enabled:
            self._draw(done, self._clock())
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self, done, now):
        self._drawn_at = now
        width = _terminal_width(self._stream)
        self._stream.write("\r" + render(done, self.total, now - self._started, width) + "\x1b[K")
        self._stream.flush()


def _terminal_width(stream):
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError):
        return 80
