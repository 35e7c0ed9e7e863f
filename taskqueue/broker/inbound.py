"""What taskqueue takes of a message as it comes in from a publisher (no I/O).

Whoever may publish to the vhost can send anything the broker takes, to
`taskqueue` or one hop to a `worker_<type>`: the dispatcher and every worker
ask `refusal` first, and dead-letter a refused message once, with the reason;
what they then read and pass on is `admitted`'s copy.

- Headers pika could not be given (fielddecode.UndecodedTable: too deep, too
  many fields, too big, a value pika cannot represent): refused.
- A body over [amqp] max_body_size: refused.
- `x-taskqueue-*` headers. Two are set by taskqueue on a task that comes back
  through it, and read back: `x-taskqueue-retries` (a retry, retries.py) and
  `x-taskqueue-delayed-until` (a delayed task, delays.py); one is set by
  the client: `x-taskqueue-expires` (expiry.py); a publisher may
  send them as taskqueue's client does, and a value that is not what taskqueue
  writes is refused. Every other one exists only on dead letters
  (deadletters.py, cli/dead.py), which no publisher makes: the dispatcher drops
  them, so that no dead letter, log or plugin takes a publisher's for
  taskqueue's own; a worker refuses a one-hop task that carries one
  (forged_dead_letter_header), since the broker's copy would keep it.
- `priority`: above MAX_PRIORITY, clamped to it.
"""
from taskqueue.broker import fielddecode, pikaparams
from taskqueue.host.config import AmqpSettings
from taskqueue.protocol import priorities
from taskqueue.protocol.delays import DELAYED_HEADER
from taskqueue.protocol.expiry import EXPIRES_HEADER, HIGHEST
from taskqueue.protocol.retries import RETRIES_HEADER

#: The highest priority a forwarded task keeps (priorities.py).
MAX_PRIORITY = priorities.HIGHEST
#: The default of [amqp] max_body_size: 16 MiB, RabbitMQ 4's own max_message_size.
DEFAULT_MAX_BODY_SIZE = AmqpSettings.max_body_size
#: The prefix of taskqueue's own headers.
OWN_PREFIX = "x-taskqueue-"
#: taskqueue's headers that a task coming in may carry, and what each must be.
CHECKED = {RETRIES_HEADER: (0, 2**31 - 1, "a retry count"),
           DELAYED_HEADER: (0, 2**63 - 1, "when the task is due, in epoch seconds"),
           EXPIRES_HEADER: (0, HIGHEST, "when the task expires, in epoch milliseconds")}


def refusal(props, body, max_body_size):
    """Why the message (`props`, `body`) is not taken (a sentence), or None."""
    problem = fielddecode.problem_of(props)
    if problem:
        return f"headers not decoded: {problem}"
    if len(body) > max_body_size:
        return (f"body is {len(body)} bytes, more than [amqp] max_body_size "
                f"({max_body_size} bytes)")
    headers = props.headers
    if headers:
        for name, (low, high, what) in CHECKED.items():
            if name in headers and not _integer_within(headers[name], low, high):
                return (f"header {name} is {_shown(headers[name])}: expected {what}, "
                        f"an integer from {low} to {high}")
    return None


def _integer_within(value, low, high):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _shown(value):
    # int(): pika decodes a 64-bit integer as its own int subclass, whose repr ends in L.
    text = repr(int(value) if isinstance(value, int) and not isinstance(value, bool) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def dead_letter_only(name):
    """True for an x-taskqueue-* header that only dead letters carry."""
    return isinstance(name, str) and name.startswith(OWN_PREFIX) and name not in CHECKED


def forged_dead_letter_header(props):
    """Why a task that came one hop is refused for a dead-letter header its publisher
    set (a sentence), or None. The dispatcher drops such headers from the copy it
    sends on; a worker cannot change the broker's copy, which the broker would
    dead-letter as it is (a plugin's reject, no retries left), the forged reason
    shown as taskqueue's. No copy taskqueue makes carries one: `dead requeue`
    drops them too."""
    # Sorted: RabbitMQ 4 delivers a table's fields in an order of its own.
    forged = sorted(name for name in props.headers or () if dead_letter_only(name))
    if not forged:
        return None
    names = ", ".join(_shown(name) for name in forged[:3])
    if len(forged) > 3:
        names += f" and {len(forged) - 3} more"
    if len(forged) == 1:
        return f"header {names} set by its publisher: only taskqueue's dead letters carry it"
    return f"headers {names} set by its publisher: only taskqueue's dead letters carry them"


def without_forged(headers):
    """`headers` (a dict) without the x-taskqueue-* headers only dead letters carry."""
    return {k: v for k, v in headers.items() if not dead_letter_only(k)}


def admitted(props):
    """`props` as taskqueue reads and passes it on: forged dead-letter headers dropped,
    the priority clamped. The same object when nothing changes (the common case)."""
    headers = props.headers
    forged = bool(headers) and any(dead_letter_only(k) for k in headers)
    high = props.priority is not None and props.priority > MAX_PRIORITY
    if not (forged or high):
        return props
    out = pikaparams.copy_properties(props)
    if forged:
        out.headers = without_forged(headers)
    if high:
        out.priority = MAX_PRIORITY
    return out
