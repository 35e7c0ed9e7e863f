"""Where one message from `taskqueue` goes: the pure decision, no I/O.

Four ways in, tried in this order (docs/02-messages-and-wire-format.md, "What wins"):
1. a `worker_type` header: the body is forwarded unchanged;
2. content type `text/plain`: the specification's own `<worker_type> <workitem>`;
3. content type `application/json` (or `text/json`): the envelope
   {"worker_type": ..., "workitem": ...};
4. content type of an installed format plugin (taskqueue/runtime/formats.py): its reader decides.
Without a content type, a body whose first non-blank character is `{` is an
envelope, anything else plain text. Any other content type is refused. The
built-in content types are never given to a plugin, so 2-4 never compete.
"""
import json
import re
from dataclasses import dataclass
from typing import Optional

from taskqueue.protocol import workitems

#: What a worker type may be named (it becomes part of a queue name).
TYPE_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,200}\Z")
TYPE_RULE = "1-200 characters of letters, digits, '_', '.', '-'"
#: Content types read as the specification's plain text, `<worker_type> <workitem>`.
PLAIN_TYPES = ("text/plain",)
#: Content types read as the JSON envelope.
JSON_TYPES = ("application/json", "text/json")
#: Content types a format plugin cannot take over: every host reads them alike.
BUILTIN_TYPES = PLAIN_TYPES + JSON_TYPES
#: The shape of a plain-text message, as dead-letter reasons show it.
PLAIN_SHAPE = 'expected "<worker_type> <workitem>", e.g. "worker1 some work"'
#: How many characters of a body or a plugin's message a reason quotes at most.
EXCERPT = 40


@dataclass(frozen=True)
class Route:
    worker_type: str
    body: bytes
    content_type: Optional[str] = None   # of the forwarded copy; None: the input's, kept


@dataclass(frozen=True)
class Rejection:
    reason: str


def route(body, content_type=None, headers=None, readers=None):
    """Decide where one message from `taskqueue` goes: a Route, or a Rejection saying why.

    `readers` maps a media type (lowercase, no parameters) to an installed
    format plugin (a formats.Format); the dispatcher passes those it loaded.
    """
    header_type = (headers or {}).get("worker_type")
    if header_type is not None:
        if isinstance(header_type, bytes):
            header_type = header_type.decode("utf-8", "replace")
        problem = _type_problem(header_type)
        if problem:
            return Rejection(f"header worker_type {problem}")
        return Route(header_type, body)
    media = media_type(content_type)
    if media in PLAIN_TYPES:
        return read_plain(body)
    if media in JSON_TYPES:
        return read_envelope(body)
    if media and readers and media in readers:
        return read_format(readers[media], body)
    if not media:
        return read_envelope(body) if _starts_an_object(body) else read_plain(body)
    usable = sorted(name for name, fmt in (readers or {}).items() if fmt.read)
    understood = ", ".join(BUILTIN_TYPES + tuple(usable))
    return Rejection(f"content type {content_type[:100]!r} is not understood "
                     f"({_cut(understood, 200)}) and there is no worker_type header")


def media_type(content_type):
    """`Text/Plain; charset=utf-8` -> `text/plain`; None or blank -> ''."""
    return (content_type or "").split(";")[0].strip().lower()


def _starts_an_object(body):
    """True when the body's first non-blank character is `{`, in any JSON encoding."""
    encoding = json.detect_encoding(body)
    if encoding == "utf-8":   # the common case: look at the bytes, copy nothing
        return body.lstrip(b" \t\r\n").startswith(b"{")
    # A byte order mark (utf-8-sig, utf-16, utf-32) or a UTF-16/32 body.
    return body.decode(encoding, "replace").lstrip("\ufeff \t\r\n").startswith("{")


# -- the specification's plain text ---------------------------------------------------

def read_plain(body):
    """`<worker_type> <workitem>`: split at the first space; the workitem is the rest,
    byte for byte (it may be empty), forwarded as text/plain."""
    if not body:
        return Rejection(f"plain-text body is empty: {PLAIN_SHAPE}")
    space = body.find(b" ")
    if space < 0:
        return Rejection(f"plain-text body {_excerpt(body)} has no space: {PLAIN_SHAPE}")
    if space == 0:
        return Rejection(f"plain-text body {_excerpt(body)} starts with a space, "
                         f"so its worker type is empty: {PLAIN_SHAPE}")
    worker_type = body[:space].decode("utf-8", "replace")
    if not TYPE_PATTERN.match(worker_type):
        return Rejection(f"plain-text worker type {_excerpt(body[:space])} is not {TYPE_RULE}: "
                         f"{PLAIN_SHAPE}")
    return Route(worker_type, body[space + 1:], PLAIN_TYPES[0])


def _excerpt(data):
    """The start of `data` as a quoted string: U+FFFD for bytes that are not UTF-8,
    escapes for control characters (repr), so a reason stays one short line."""
    text = data[:EXCERPT].decode("utf-8", "replace")
    return repr(text) + ("..." if len(data) > EXCERPT else "")


def _cut(text, limit=200):
    return text if len(text) <= limit else text[:limit] + "..."


# -- the JSON envelope ------------------------------------------------------------

def read_envelope(body):
    """{"worker_type": ..., "workitem": ...}: the workitem goes on re-encoded, as application/json."""
    try:
        envelope = workitems.loads(body)
    except RecursionError:
        return Rejection("body is not usable JSON: nested too deeply")
    except ValueError as exc:  # includes UnicodeDecodeError and JSONDecodeError
        return Rejection(f"body is not JSON: {str(exc)[:200]}")
    if not isinstance(envelope, dict):
        return Rejection(f"envelope is a JSON {_kind(envelope)}, expected an object "
                         f'{{"worker_type": ..., "workitem": ...}}')
    if "worker_type" not in envelope:
        return Rejection("envelope has no worker_type")
    problem = _type_problem(envelope["worker_type"])
    if problem:
        return Rejection(f"worker_type {problem}")
    if "workitem" not in envelope:
        return Rejection("envelope has no workitem")
    workitem = workitems.dumps(envelope["workitem"])
    return Route(envelope["worker_type"], workitem, JSON_TYPES[0])


def _type_problem(value):
    if not isinstance(value, str):
        return f"is a JSON {_kind(value)}, expected a string"
    if not TYPE_PATTERN.match(value):
        shown = value if len(value) <= 60 else value[:60] + "..."
        return f"{shown!r} is not {TYPE_RULE}"
    return None


def _kind(value):
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


# -- format plugins --------------------------------------------------------------

def read_format(fmt, body):
    """Ask an installed format plugin; whatever goes wrong is a Rejection naming it.
    The body it returns goes on with the input's properties (content type included)."""
    if fmt.problem:
        return Rejection(fmt.problem)
    named = f"format {fmt.content_type} ({fmt.origin})"
    try:
        answer = fmt.read(body)
    except (Exception, SystemExit) as exc:   # a plugin must not stop the dispatcher
        return Rejection(f"{named} refused the body: {type(exc).__name__}: {_cut(str(exc))}")
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        return Rejection(f"{named} returned {_cut(type(answer).__name__, 60)}, "
                         f"expected (worker_type, workitem bytes)")
    worker_type, workitem = answer
    if not isinstance(worker_type, str) or not TYPE_PATTERN.match(worker_type):
        shown = repr(worker_type)[:60] if isinstance(worker_type, str) else \
            f"a {type(worker_type).__name__}"
        return Rejection(f"{named} returned worker type {shown}, expected {TYPE_RULE}")
    if not isinstance(workitem, (bytes, bytearray, memoryview)):
        return Rejection(f"{named} returned a {type(workitem).__name__} workitem, expected bytes")
    return Route(worker_type, bytes(workitem))
