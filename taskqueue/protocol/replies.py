"""Where taskqueue sends a reply for a plugin (TaskChannel.reply): reply queues only (pure).

A task's reply_to is whatever its submitter wrote. Publishing there with the
worker's broker account would let anyone who may submit a task make a worker
write into any queue of the vhost: `taskqueue`, a `worker_<type>`,
`taskqueue_dead`. So a reply goes only to a queue made for replies:

- RabbitMQ's direct reply-to, `amq.rabbitmq.reply-to` (the broker hands the
  worker `amq.rabbitmq.reply-to.<token>`, which reaches only the channel that
  waits: Client.call and `taskqueue submit --wait` use it);
- a server-named queue, `amq.gen-...` (what a client gets when it declares a
  queue without a name: its own, usually exclusive);
- whatever the group's `reply_queues` option adds: names, or prefixes ending
  in `*`;

and never to one of taskqueue's own queues (any name beginning with `taskqueue`
or `worker_`), whatever the option says: the config refuses an entry that
could name one. A plugin's own basic_publish is not checked: what a plugin
publishes by itself is its business.

A task that has a reply_to and ends without the plugin's reply (it raised and is
dead-lettered, the plugin rejected it, its retries are spent, the worker refused
it, the dispatcher could not route it) gets a **failure reply** from the worker or
the dispatcher (broker/deadletters.failure_reply), to the same reply queues only: the
header FAILED_HEADER says why (`failure`), the body says it again as text, so that
the caller fails at once instead of at its timeout (Client.call raises TaskFailed).
docs/02-messages-and-wire-format.md, "Failure replies", is its wire form.
"""
from taskqueue import redact

#: What a reply may always go to: RabbitMQ's reply queues.
REPLY_QUEUES = ("amq.rabbitmq.reply-to*", "amq.gen-*")
#: The beginnings of taskqueue's own queue (and exchange) names: taskqueue,
#: taskqueue_dead, taskqueue.delay.N, worker_<type>.
OWN_PREFIXES = ("taskqueue", "worker_")
#: AMQP's longest queue name (a short string).
MAX_NAME = 255
#: The header marking a failure reply; its value is the reason (a string).
FAILED_HEADER = "x-taskqueue-failed"
#: A failure reply's content type: its body is the reason, as UTF-8.
FAILED_CONTENT_TYPE = "text/plain; charset=utf-8"
#: Longest reason sent, in characters (an exception's message can be any length).
MAX_REASON = 1000
#: What the option reads as, for error messages and the docs.
OPTION_RULE = ("queue names or prefixes ending in '*', separated by commas; none of "
               "taskqueue's own (taskqueue..., worker_...)")


def is_own(name):
    """Whether `name` is (or could be) one of taskqueue's own queues."""
    return name.startswith(OWN_PREFIXES)


def allowed(reply_to, extra=()):
    """Whether a reply may go to the queue `reply_to` (REPLY_QUEUES, or one of
    `extra`, the group's reply_queues), never to one of taskqueue's own."""
    if not isinstance(reply_to, str) or not reply_to or is_own(reply_to):
        return False
    return any(_matches(pattern, reply_to) for pattern in REPLY_QUEUES + tuple(extra))


def _matches(pattern, name):
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


def parse_reply_queues(value):
    """The `reply_queues` option: `results, replies_*` -> ("results", "replies_*").
    ValueError saying what is wrong with an entry."""
    entries = tuple(entry.strip() for entry in value.split(","))
    for entry in entries:
        if not entry:
            raise ValueError(f"expected {OPTION_RULE}; found an empty entry")
        if not entry.isprintable() or " " in entry or len(entry.encode()) > MAX_NAME:
            raise ValueError(f"{entry[:100]!r} is not a queue name (printable, no spaces, at "
                             f"most {MAX_NAME} bytes); expected {OPTION_RULE}")
        if "*" in entry[:-1]:
            raise ValueError(f"{entry!r}: '*' may only end an entry (a prefix); expected "
                             f"{OPTION_RULE}")
        prefix = entry[:-1] if entry.endswith("*") else None
        if is_own(entry) or (prefix is not None and any(own.startswith(prefix)
                                                        for own in OWN_PREFIXES)):
            raise ValueError(f"{entry!r} could name one of taskqueue's own queues (taskqueue, "
                             f"worker_<type>, taskqueue_dead...): a submitter could make a "
                             f"worker publish there; expected {OPTION_RULE}")
    return entries


def describe(extra=()):
    """For check-config: `reply queues` or `reply queues, results, replies_*`."""
    return ", ".join(("reply queues",) + tuple(extra))


def failure(reason):
    """A failure reply's (body, headers) saying `reason`, cut at MAX_REASON characters,
    broker credentials hidden (an exception's message may quote a URL), as in the dead
    letter's reason."""
    reason = redact.redact(str(reason))
    if len(reason) > MAX_REASON:
        reason = reason[:MAX_REASON - 3] + "..."
    return reason.encode("utf-8", "backslashreplace"), {FAILED_HEADER: reason}


def failure_reason(headers):
    """The reason of a failure reply, read from its headers; None for any other reply.
    A reason that came as bytes (a longstr pika did not decode) is read as UTF-8."""
    if not isinstance(headers, dict) or FAILED_HEADER not in headers:
        return None
    reason = headers[FAILED_HEADER]
    if isinstance(reason, (bytes, bytearray)):
        reason = bytes(reason).decode("utf-8", "backslashreplace")
    return reason if isinstance(reason, str) and reason else "no reason given"
