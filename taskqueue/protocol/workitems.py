"""What a valid workitem is, in JSON: the one owner of the rules for every way in.

`taskqueue submit`, `submit --file` and the dispatcher read JSON with these
rules, so that what one of them takes the others take too. Stricter than
Python's json where JSON is: no NaN, Infinity or -Infinity (json.loads reads
them, but they are not JSON, and a worker in another language would choke),
and no number so large that it becomes a float infinity (1e400 would go out
as the token Infinity). Nesting deeper than Python can decode is refused
with a sentence, not a RecursionError.
"""
import json
import math


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text):
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"number {text[:50]} is too large")
    return number


# Made once: json.loads and json.dumps with options build a new one per call,
# a tenth of the dispatcher's time per message (bench/profile.py).
#: The decoder of every way in: raises ValueError (RecursionError when nested too deeply).
DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
#: Compact, and never NaN or Infinity (a ValueError instead: nothing non-JSON goes out).
ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def loads(body):
    """The JSON value in `body` (bytes in any JSON Unicode encoding, or str).
    Raises ValueError (UnicodeDecodeError and JSONDecodeError included), or
    RecursionError when nested too deeply: the caller words the reason. The
    dispatcher's hot path, hence no wrapping."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode(json.detect_encoding(body), "surrogatepass")
    return DECODER.decode(body)


def dumps(value):
    """`value` as compact JSON bytes."""
    return ENCODER.encode(value).encode()


def parse(text):
    """The workitem in `text` (str or bytes); ValueError with a sentence saying what
    is wrong: `not valid JSON (...)` or `not usable JSON: nested too deeply`."""
    try:
        return loads(text)
    except RecursionError:
        raise ValueError("not usable JSON: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None


def envelope(worker_type, workitem):
    """The body a client submits to `taskqueue`: {"worker_type": ..., "workitem": ...}
    as compact JSON bytes; ValueError if the workitem is nested too deeply to encode
    (the envelope is one level deeper than what `parse` read)."""
    try:
        return dumps({"worker_type": worker_type, "workitem": workitem})
    except RecursionError:
        raise ValueError("not usable JSON: nested too deeply") from None
