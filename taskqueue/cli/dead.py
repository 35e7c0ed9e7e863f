"""The operator's tools for `taskqueue_dead`: list, requeue, purge.

Dead letters are consumed and not acked, so they stay in the queue;
whatever a command does not remove is handed back (basic.nack with requeue)
when it ends, in the order it was taken. A requeued dead letter is
acked away only once its copy in `taskqueue` is confirmed by the broker.
`describe` and `requeue_copy` are the pure decisions; the rest drives a Session.

Known limit: handing a message back counts as a delivery on a quorum queue.
RabbitMQ 3 sets no delivery limit on `taskqueue_dead` (taskqueue declares
none there); RabbitMQ 4.0 to 4.2 give every quorum queue a default limit of
20 and then drop the message (the dead-letter queue has nowhere to send it),
so each `list` or `requeue` costs every dead letter it reads one of those 20.
RabbitMQ 4.3 no longer counts a basic.nack, which is why we nack rather than
just close the channel (a close still counts).
"""
import base64
import calendar
import copy
import datetime
import decimal
import json
import time
from dataclasses import dataclass, field
from typing import Optional

import gevent
from gevent.queue import Empty, Queue

from taskqueue.broker import amqp, fielddecode, inbound, pikaparams
from taskqueue.broker.confirms import ConfirmWindow
from taskqueue.broker.deadletters import RAW_HEADERS, REASON_HEADER, SOURCE_HEADER, task_key
from taskqueue.cli.progress import format_duration
from taskqueue.errors import NotRequeueable, SessionClosed
from taskqueue.printable import printable
from taskqueue.protocol import priorities, topology
from taskqueue.protocol.routing import Rejection, route
from taskqueue.runtime import formats

#: Headers that record a message's past as a dead letter; a requeued copy starts afresh without them.
PAST_HEADERS = ("x-death", "x-delivery-count", "x-acquired-count")
PAST_HEADER_PREFIXES = ("x-taskqueue-", "x-first-death-", "x-last-death-")
TYPE_HEADER = "x-taskqueue-worker-type"
DEAD_AT_HEADER = "x-taskqueue-dead-at"


@dataclass(frozen=True)
class DeadLetter:
    """What an operator wants to know about one dead letter."""
    id: str                         # the message id, else a digest of the body (deadletter.task_key)
    message_id: Optional[str]
    worker_type: Optional[str]
    reason: str
    queue: Optional[str]            # the queue it was dead-lettered from
    dead_at: Optional[float]        # seconds since the epoch
    exit: Optional[str] = None      # how the last process that ran it ended (poison tasks)
    delivery_count: Optional[int] = None   # the broker's x-delivery-count, as we got it
    body: Optional[bytes] = field(default=None, repr=False)   # None: not kept

    def age(self, now):
        return None if self.dead_at is None else max(0.0, now - self.dead_at)


def describe(props, body, keep_body=True):
    """A DeadLetter for one message of taskqueue_dead (pure).

    The reason and source are taskqueue's own headers when taskqueue
    dead-lettered it, else the broker's latest x-death entry (a task whose
    handle_task raised or rejected it, one that expired, ...). The id and the
    type come from the real body, always, so that every command names a dead
    letter alike; `keep_body` only says whether the DeadLetter holds it too.
    """
    headers = props.headers or {}
    death = _latest_death(headers)
    problem = fielddecode.problem_of(props)
    if problem:     # not one of ours: put here by the broker, or a publisher
        reason, queue, dead_at = f"headers not decoded: {problem}", None, None
    elif REASON_HEADER in headers:
        reason, queue = _text(headers[REASON_HEADER]), _text(headers.get(SOURCE_HEADER))
        dead_at = _epoch(headers.get(DEAD_AT_HEADER)) or _epoch(death.get("time"))
    elif death:
        reason, queue, dead_at = _text(death.get("reason")), _text(death.get("queue")), \
            _epoch(death.get("time"))
    else:
        reason, queue, dead_at = "unknown: no x-taskqueue-reason or x-death header", None, None
    count = headers.get("x-delivery-count")
    return DeadLetter(
        id=task_key(props, body), message_id=props.message_id,
        worker_type=_worker_type(headers, queue, body), reason=reason or "unknown", queue=queue,
        dead_at=dead_at, exit=_text(headers.get("x-taskqueue-exit")),
        delivery_count=int(count) if isinstance(count, int) else None,
        body=body if keep_body else None)


def _latest_death(headers):
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]    # the broker puts the latest first
    return {}


def _worker_type(headers, queue, body):
    """The type from taskqueue's header, else the worker queue it died in, else the
    envelope in its body, else a worker_type header (a binary workitem)."""
    if headers.get(TYPE_HEADER):
        return _text(headers[TYPE_HEADER])
    worker_type = priorities.worker_type_of(queue)
    if worker_type:
        return worker_type
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):
        envelope = None
    if isinstance(envelope, dict) and isinstance(envelope.get("worker_type"), str):
        return envelope["worker_type"]
    return _text(headers.get("worker_type"))


def _text(value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _epoch(value):
    if isinstance(value, datetime.datetime):
        # pika 1.2 decodes AMQP timestamps as naive UTC, later versions as aware UTC.
        return float(calendar.timegm(value.utctimetuple()))
    if isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool):
        return float(value)
    return None


def fresh_headers(headers):
    """`headers` without what the broker and taskqueue added when the message died."""
    return {k: v for k, v in (headers or {}).items()
            if k not in PAST_HEADERS
            and not (isinstance(k, str) and k.startswith(PAST_HEADER_PREFIXES))}


#: Why a dead letter whose headers were not decoded is not requeued.
UNDECODED = ("its headers could not be decoded, and a copy would lose them (their bytes are "
             f"in its header {RAW_HEADERS}); `taskqueue dead list` shows why")


def requeue_copy(props, body, readers=None, max_body_size=inbound.DEFAULT_MAX_BODY_SIZE):
    """What to publish to `taskqueue` so that the dispatcher routes this dead letter
    to its worker again: (body, properties). Raise NotRequeueable if it would not.

    A dead letter from a worker queue holds the workitem as the worker got it:
    it goes back with a `worker_type` header, which the dispatcher forwards
    unchanged. One from `taskqueue` holds the envelope, which goes as it is.
    Properties are kept (message_id, correlation_id, reply_to...), the
    headers of its death are not. `readers`: the installed format plugins
    (formats.load_installed()), as the dispatcher would use them. One whose headers
    were not decoded (fielddecode.py, its own or the one it was made from) is not
    requeued: a copy would lose them.
    """
    if fielddecode.problem_of(props) or RAW_HEADERS in (props.headers or {}):
        raise NotRequeueable(UNDECODED)
    letter = describe(props, body)
    headers = fresh_headers(props.headers)
    if priorities.worker_type_of(letter.queue) and letter.worker_type:
        headers["worker_type"] = letter.worker_type
    out = copy.copy(props)
    out.delivery_mode = pikaparams.PERSISTENT
    out.headers = pikaparams.amqp_safe(headers) or None
    refusal = inbound.refusal(out, body, max_body_size)
    decision = Rejection(refusal) if refusal else route(body, out.content_type, out.headers,
                                                        readers)
    if isinstance(decision, Rejection):
        raise NotRequeueable(f"the dispatcher would dead-letter it again: {decision.reason}")
    return body, out


# -- presenting them -----------------------------------------------------------

TABLE_HEADER = ("ID", "TYPE", "AGE", "QUEUE", "REASON")


def table(letters, now, width=None):
    """The lines of a table of `letters`; cut to `width` characters when given (a terminal).
    Every field a publisher may have chosen is shown escaped (printable.py)."""
    rows = [TABLE_HEADER] + [
        tuple(printable(cell) for cell in (
            letter.id, letter.worker_type or "-", _age_text(letter, now), letter.queue or "-",
            " ".join(letter.reason.split())))
        for letter in letters]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER) - 1)]
    lines = []
    for row in rows:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]
        if width and len(line) > width:
            line = line[:max(width - 3, 0)] + "..."
        lines.append(line.rstrip())
    return lines


def listing(letters, count, now, worker_type=None, width=None):
    """What `dead list` prints: the table, then how many dead letters there are."""
    lines = table(letters, now, width) if letters else []
    footer = f"{count_text(count)} in {topology.DEAD_QUEUE}"
    if len(letters) != count:
        footer += f", {len(letters)} shown" + (f" (type {worker_type})" if worker_type else "")
    return lines + [footer]


def count_text(count):
    return f"{count} dead letter{'' if count == 1 else 's'}"


def _age_text(letter, now):
    age = letter.age(now)
    return "-" if age is None else format_duration(age)


def as_json(letter, now):
    """One dead letter as a JSON object for scripts (`taskqueue dead list --json`,
    docs/06-operating.md)."""
    age = letter.age(now)
    out = {"id": letter.id, "message_id": letter.message_id, "type": letter.worker_type,
           "reason": letter.reason, "queue": letter.queue, "dead_at": letter.dead_at,
           "age": None if age is None else round(age, 3), "exit": letter.exit,
           "delivery_count": letter.delivery_count}
    if letter.body is None:     # listed without bodies
        out["body"] = None
        return out
    try:
        out["body"] = letter.body.decode("utf-8")
    except UnicodeDecodeError:
        out["body"] = None
        out["body_base64"] = base64.b64encode(letter.body).decode()
    return out


# -- the commands --------------------------------------------------------------

#: Seconds without a delivery, before every dead letter counted at the start
#: came, after which the rest is taken to be held by another consumer.
IDLE_SECONDS = 2.0
#: Once they came, reading goes on until no delivery for SETTLE_SECONDS (at
#: most SETTLE_LIMIT in all), for dead letters still on their way back into the
#: queue from another command.
SETTLE_SECONDS = 0.3
SETTLE_LIMIT = 10.0
#: Seconds a command waits, at its end, for the queue to count again the dead
#: letters it handed back: a quorum queue takes 70 000 back in about 3 s, and
#: the next command would see only those already back.
RETURN_WAIT = 10.0
#: Deliveries one consumer may hold unacked: AMQP's prefetch count is 16 bits,
#: and a quorum queue takes 0, "unlimited", for 2000. Hence one more consumer
#: each time that many are held.
PREFETCH = 65535


def list_dead(settings, worker_type=None, limit=None, bodies=True):
    """(the dead letters, in queue order, of `worker_type` if given, at most `limit`;
    how many there are). Nothing is removed; `bodies`: keep each message's body
    (the ids and types are read from the bodies either way).

    Every dead letter is read even past `limit`: RabbitMQ 3 puts a nacked message
    of a quorum queue behind those still there, so handing back only the first
    few would move them to the end.
    """
    reader = _Reader(settings, "list")
    letters = []
    try:
        for method, props, body in reader:
            if limit and len(letters) >= limit:
                continue
            letter = describe(props, body, keep_body=bodies)
            if worker_type is None or letter.worker_type == worker_type:
                letters.append(letter)
    finally:
        reader.hand_back()
    return letters, reader.taken


@dataclass
class RequeueReport:
    requeued: list = field(default_factory=list)     # ids, in queue order
    failed: list = field(default_factory=list)       # (id, why): they stay dead
    unconfirmed: list = field(default_factory=list)  # ids published but never confirmed
    missing: list = field(default_factory=list)      # ids asked for that are not there
    error: Optional[str] = None                      # the broker problem that ended the run

    def done(self):
        """What was requeued: a count, then one id a line (escaped, as every line here)."""
        return [f"requeued {count_text(len(self.requeued))} to {topology.TASK_QUEUE}"
                + (":" if self.requeued else "")] + [f"  {printable(i)}" for i in self.requeued]

    def problems(self):
        """One sentence for each thing that went wrong; none when all went well."""
        return [printable(line) for line in self._problems()]

    def _problems(self):
        out = [f"{i} not requeued, it stays in {topology.DEAD_QUEUE}: {why}" for i, why in self.failed]
        if self.missing:
            out.append(f"no dead letter with id {', '.join(self.missing)} in {topology.DEAD_QUEUE}")
        if self.error:
            out.append(self.error)
        if self.unconfirmed:
            out.append(f"{count_text(len(self.unconfirmed))} sent without a confirm stay in "
                       f"{topology.DEAD_QUEUE} and may also have been requeued: "
                       f"{' '.join(self.unconfirmed)}")
        return out


def requeue_dead(settings, ids=(), worker_type=None):
    """Republish the dead letters with one of these `ids` (or message ids) and of
    `worker_type`, where given (neither: all), to `taskqueue`; ack each one away
    once its copy is confirmed. Return a RequeueReport."""
    ids = set(ids)

    def selected(letter):
        return ((not ids or letter.id in ids or letter.message_id in ids)
                and (worker_type is None or letter.worker_type == worker_type))
    readers = formats.load_installed()
    reader = _Reader(settings, "requeue")
    session = reader.session
    report = RequeueReport()
    confirmed = {}      # index in the queue -> id
    sent = {}           # index -> id, until settled
    taken = set()       # the ids this run sent
    acked = set()       # the delivery tags of the dead letters removed
    matched = set()     # the `ids` some dead letter answered to

    def on_settled(token, problem):     # in the hub
        tag, index = token
        letter_id = sent.pop(index)
        if problem is None:
            session.ack(tag)
            acked.add(tag)
            confirmed[index] = letter_id
        else:
            report.failed.append((letter_id, problem))
    nack = True
    try:
        session.declare_queue(topology.TASK_QUEUE)
        window = ConfirmWindow(session, on_settled)
        for index, (method, props, body) in enumerate(reader):
            letter = describe(props, body)
            if not selected(letter):
                continue
            matched |= ids & {letter.id, letter.message_id}
            if letter.id in taken:
                # Never twice in one run: a task that died again at once must not loop.
                report.failed.append((letter.id, "this run requeued a dead letter with this id "
                                                 "already (a duplicate, or it died again)"))
                continue
            try:
                out = requeue_copy(props, body, readers, settings.max_body_size)
            except NotRequeueable as exc:
                report.failed.append((letter.id, str(exc)))
                continue
            sent[index] = letter.id
            taken.add(letter.id)
            window.publish(topology.TASK_QUEUE, *out, token=(method.delivery_tag, index))
        window.flush()
    except SessionClosed as exc:
        report.error = str(exc)
        report.unconfirmed = [sent[i] for i in sorted(sent)]
        nack = False    # some may still be confirmed and acked: the close hands back the rest
    finally:
        reader.hand_back(nack, removed=acked)
    report.requeued = [confirmed[i] for i in sorted(confirmed)]
    if not report.error:
        report.missing = sorted(ids - matched)
    return report


def count_dead(settings):
    session, count = _open(settings, "purge")
    session.close()
    return count


def purge_dead(settings):
    """Remove every dead letter; return how many went."""
    session, _ = _open(settings, "purge")
    try:
        return session.purge(topology.DEAD_QUEUE)
    finally:
        session.close()


def _open(settings, command):
    """A session for `taskqueue dead <command>`, and how many dead letters are ready."""
    session = amqp.Session(settings, f"taskqueue dead {command}").open()
    try:
        return session, session.declare_queue(topology.DEAD_QUEUE)
    except BaseException:
        session.close()
        raise


class _Reader:
    """The dead letters, in queue order, consumed without acking them.

    Consuming streams them; basic.get costs a round trip each, about 3 ms on a
    quorum queue. Reading stops soon after the number ready at the start came
    (SETTLE_SECONDS), so that new dead letters cannot keep it going.
    """

    def __init__(self, settings, command):
        self.session, self._count = _open(settings, command)
        self.taken = 0
        self._inbox = Queue()
        self._tags = []             # consumer tags
        self._last_delivery = 0     # the highest delivery tag received
        try:
            self.session.qos(PREFETCH)
            self._consume()
        except BaseException:
            self.session.close()
            raise
        self.session.closed.rawlink(lambda _: self._inbox.put(None))

    def _consume(self):
        self._tags.append(self.session.consume(topology.DEAD_QUEUE, self._on_delivery))

    def _on_delivery(self, method, props, body):     # in the hub
        self._last_delivery = max(self._last_delivery, method.delivery_tag)
        self._inbox.put((method, props, body))

    def __iter__(self):
        while self.taken < self._count:
            delivery = self._next(IDLE_SECONDS)
            if delivery is None:
                return
            yield delivery
        deadline = time.monotonic() + SETTLE_LIMIT
        while True:
            # Past the limit, only what has already arrived: a steady stream of new
            # dead letters must not keep the command reading for ever.
            delivery = self._next(max(0.0, min(SETTLE_SECONDS, deadline - time.monotonic())))
            if delivery is None:
                return
            yield delivery

    def _next(self, timeout):
        try:
            delivery = self._inbox.get(timeout=timeout) if timeout else self._inbox.get_nowait()
        except Empty:
            return None
        if delivery is None:
            raise SessionClosed(f"connection lost: {self.session.close_reason!r}")
        self.taken += 1
        if self.taken % PREFETCH == 0 and self.taken < self._count:
            self._consume()     # the consumers so far hold all they may: the next takes over
        return delivery

    def hand_back(self, nack=True, removed=frozenset()):
        """Stop consuming, return every dead letter still held (all but the delivery
        tags `removed`), in order, wait until the queue counts them again, and close.
        A nack rather than a close with them unacked: RabbitMQ 4.3+ counts a close,
        not a nack, as a failed delivery."""
        try:
            if self.session.is_open:
                for tag in self._tags:
                    self.session.cancel(tag)
                if nack and len(self._tags) == 1:
                    self.session.nack(0, multiple=True, requeue=True)
                elif nack:
                    # The broker returns a multiple nack consumer by consumer, which
                    # would reorder them: one nack each, in the order received.
                    for tag in range(1, self._last_delivery + 1):
                        if tag not in removed:
                            self.session.nack(tag, requeue=True)
                if nack:
                    self._wait_returned(self.taken - len(removed))
        except SessionClosed:
            pass    # the broker hands them back itself
        self.session.close()

    def _wait_returned(self, expected):
        deadline = time.monotonic() + RETURN_WAIT
        while self.session.declare_queue(topology.DEAD_QUEUE) < expected:
            if time.monotonic() > deadline:
                return  # taken by another consumer meanwhile, perhaps: they come back anyway
            gevent.sleep(0.05)
