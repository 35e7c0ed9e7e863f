"""W3C Trace Context (https://www.w3.org/TR/trace-context/) on a task: the pure reading.

An application may set the headers `traceparent` and `tracestate` on a task, as
HTTP carries them. taskqueue carries both, as any header, through the dispatcher,
retries and delays. It reads `traceparent` only to name the trace in its log lines
(`trace=<id>`) and to continue it in a span (host/tracing.py); a value that is not
a valid traceparent is left alone there: telemetry never refuses a task. A
publisher chooses these values, so what is read from them is 32 lowercase hex
digits at most, never their text.

    traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
                 version-trace id (32 hex)-parent id (16 hex)-flags
"""
import re
from dataclasses import dataclass

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: The version this module writes and reads field by field.
VERSION = "00"
#: A traceparent longer than this is not read (version 00 has exactly 55 characters;
#: a later version may add fields after them, within reason).
MAX_TRACEPARENT = 256
#: The longest tracestate passed on to OpenTelemetry: the recommendation's 512 characters.
MAX_TRACESTATE = 512

_FIELDS = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_PARENT = "0" * 32, "0" * 16


@dataclass(frozen=True)
class TraceParent:
    version: str
    trace_id: str       # 32 lowercase hex digits, not all zero
    parent_id: str      # 16 lowercase hex digits, not all zero
    flags: str          # 2 lowercase hex digits; bit 0: sampled

    @property
    def header(self):
        """As version 00 writes it: what OpenTelemetry's propagator reads."""
        return f"{VERSION}-{self.trace_id}-{self.parent_id}-{self.flags}"


def parse(value):
    """The TraceParent a `traceparent` header value holds, or None for any value that
    is not one (not a str, too long, a field of the wrong length or not lowercase hex,
    an all-zero id, version ff, version 00 with more after it), as the
    recommendation says a receiver treats it: as absent."""
    if not isinstance(value, str) or len(value) > MAX_TRACEPARENT:
        return None
    match = _FIELDS.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    rest = value[match.end():]
    # Version 00 ends there; a later version may go on, after a dash (read as 00).
    if rest and (version == VERSION or not rest.startswith("-")):
        return None
    return TraceParent(version, trace_id, parent_id, flags)


def trace_id(headers):
    """The trace id of the task's valid traceparent header, or None; `headers` as a
    message has them (None, a dict, anything a publisher sent)."""
    if not isinstance(headers, dict):
        return None
    parent = parse(headers.get(TRACEPARENT))
    return parent.trace_id if parent else None


def usable_state(value):
    """A `tracestate` value as it may be passed on to OpenTelemetry, or None: a str of
    printable ASCII, at most MAX_TRACESTATE characters (OpenTelemetry reads the list)."""
    if (isinstance(value, str) and len(value) <= MAX_TRACESTATE and value.isascii()
            and value.isprintable()):
        return value
    return None


def checked(traceparent, tracestate=None):
    """The headers an application asks a task to carry (Client's traceparent= and
    tracestate=, `submit --traceparent`): a dict, or ValueError saying what is wrong.
    A traceparent must be valid; a tracestate needs one."""
    if traceparent is None:
        raise ValueError("a tracestate needs a traceparent")
    if parse(traceparent) is None:
        shown = repr(traceparent)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ValueError(f"traceparent {shown} is not a W3C traceparent: expected "
                         f"00-<32 hex digits>-<16 hex digits>-<2 hex digits>, lowercase, "
                         f"ids not all zero")
    headers = {TRACEPARENT: traceparent}
    if tracestate is not None:
        if usable_state(tracestate) is None:
            shown = repr(tracestate)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise ValueError(f"tracestate {shown} is not a W3C tracestate: expected printable "
                             f"ASCII, at most {MAX_TRACESTATE} characters")
        headers[TRACESTATE] = tracestate
    return headers
