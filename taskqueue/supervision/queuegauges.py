"""The queue gauges of the metrics: what the broker says of the pool's queues, asked
when a scraper asks (metrics.py writes them).

The supervisor holds no AMQP connection and starts no threads, so that a fork
inherits nothing dangerous (supervisor.py); a gevent connection in it would be
inherited, half-read, by every child forked while it is open. So a *probe*
asks: a process forked for one reading, which closes every descriptor but its
socket, never returns to the gevent hub, asks with pika's blocking connection
(blocking.queue_counts: a passive queue.declare per queue gives messages ready
and consumers exactly; a queue that does not exist closes that channel only)
and, with [metrics] management_url, the management API for the unacked counts
(management.py), writes a JSON line for each and exits. The supervisor reads the
lines cooperatively and kills the probe after PROBE_TIMEOUT seconds: the hub never
waits, a scrape at most that long. Each reading costs a fork (pika is imported
already), one connection and a declare per queue: a reading younger than
FRESH_SECONDS is served again, and scrapes that arrive while a probe runs share its
answer, so two scrapes in quick succession ask once.
"""
import dataclasses
import json
import logging
import math
import os
import signal
import time
from typing import Optional

import gevent
import gevent.os
import gevent.socket
from gevent.event import AsyncResult, Event

from taskqueue import redact
from taskqueue.broker import blocking, management
from taskqueue.errors import TaskqueueError
from taskqueue.protocol import delays, priorities, topology
from taskqueue.supervision import child

log = logging.getLogger(__name__)

#: Seconds a probe may take, all of it; then it is killed and the scrape answered without.
PROBE_TIMEOUT = 3.0
#: Seconds each of the probe's waits may take (connecting, the declares, each HTTP exchange).
ASK_TIMEOUT = 2.0
#: A reading this young is served again rather than asked anew.
FRESH_SECONDS = 5.0
#: Most worker queues asked about (the first by name); a pool serves a handful.
MAX_WORKER_QUEUES = 64
#: Longest answer read from a probe: a line per question, a few kilobytes.
MAX_ANSWER = 1 << 20


@dataclasses.dataclass(frozen=True)
class Reading:
    """What one probe learnt. `counts`: {queue: (ready, consumers)} of the queues that
    exist; `delayed`: tasks in the delay queues (None: not asked); `unacked`: {queue: n}
    from the management API, None when it was not asked or did not answer."""
    queues: tuple
    broker_error: Optional[str] = None
    counts: dict = dataclasses.field(default_factory=dict)
    delayed: Optional[int] = None
    management_asked: bool = False
    management_error: Optional[str] = None
    unacked: Optional[dict] = None

    @property
    def broker_up(self):
        return self.broker_error is None


def wanted_queues(specs):
    """The queues a supervisor of `specs` reports: `taskqueue`, the worker queues its
    groups consume (of at most MAX_WORKER_QUEUES types), each followed by its type's high
    queue (priorities.py), `taskqueue_dead`."""
    workers = sorted({spec.queue for spec in specs if spec.kind == "worker" and spec.queue})
    both = [queue for worker_queue in workers[:MAX_WORKER_QUEUES]
            for queue in (worker_queue, *_high_queue_of(worker_queue))]
    return (topology.TASK_QUEUE, *both, topology.DEAD_QUEUE)


def _high_queue_of(queue):
    worker_type = topology.worker_type_of(queue)
    return (priorities.high_queue(worker_type),) if worker_type else ()


class QueueGauges:
    """The latest Reading, refreshed when read and older than FRESH_SECONDS."""

    def __init__(self, amqp, management_url=None, ask=None):
        """`ask(queues)` -> Reading; by default a probe (ask_in_probe) with `amqp`."""
        self._ask = ask or (lambda queues: ask_in_probe(amqp, management_url, queues))
        self._reading = None
        self._read_at = -math.inf
        self._pending = None        # AsyncResult of the probe under way
        self._probe = None          # its greenlet

    def read(self, specs):
        """The Reading for the supervisor's current `specs`; waits (cooperatively) for a
        probe when the last reading is stale, at most about PROBE_TIMEOUT seconds."""
        queues = wanted_queues(specs)
        reading = self._reading
        if (reading is not None and reading.queues == queues
                and time.monotonic() - self._read_at < FRESH_SECONDS):
            return reading
        if self._pending is None:
            self._pending = AsyncResult()
            self._probe = gevent.spawn(self._refresh, queues, self._pending)
        return self._pending.get()

    def stop(self, block=True):
        """Stop a probe under way: the supervisor's at its end (the probe is killed), a
        fresh child's right after the fork (the probe is the supervisor's: left alone)."""
        if self._probe is not None:
            self._probe.kill(block=block, timeout=1 if block else None)
        self._probe = self._pending = None

    def _refresh(self, queues, pending):
        try:
            reading = self._ask(queues)
        except Exception as exc:   # a fork that failed (EAGAIN...): this scrape goes without
            log.exception("queue gauges: asking failed")
            reading = Reading(queues, broker_error=f"asking failed: {exc}")
        self._log_changes(self._reading, reading)
        self._reading, self._read_at = reading, time.monotonic()
        self._pending = self._probe = None
        pending.set(reading)

    @staticmethod
    def _log_changes(before, now):
        """One line when the broker or the API stops answering, one when it is back."""
        was_up = before is None or before.broker_up
        if was_up and not now.broker_up:
            log.warning("queue gauges: the broker did not answer: %s", now.broker_error)
        elif not was_up and now.broker_up:
            log.info("queue gauges: the broker answers again")
        was_up = before is None or before.management_error is None
        if was_up and now.management_error is not None:
            log.warning("queue gauges: the management API did not answer: %s",
                        now.management_error)
        elif not was_up and now.management_error is None and now.management_asked:
            log.info("queue gauges: the management API answers again")


# -- the probe ----------------------------------------------------------------------------

def ask_in_probe(amqp, management_url, queues, timeout=PROBE_TIMEOUT,
                 fork=gevent.os.fork_and_watch):
    """Fork a probe that asks about `queues`; its Reading, within `timeout` seconds."""
    ours, theirs = gevent.socket.socketpair()
    exited = Event()
    parent = os.getpid()
    # Blocked across the fork, as for every child: the probe must not run our handlers.
    signal.pthread_sigmask(signal.SIG_BLOCK, child.SUPERVISOR_SIGNALS)
    try:
        pid = fork(callback=lambda watcher: exited.set())
        if pid == 0:
            _probe(theirs.fileno(), parent, amqp, management_url, queues)   # never returns
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, child.SUPERVISOR_SIGNALS)
        theirs.close()
    data = b""
    try:
        with gevent.Timeout(timeout, False):
            while len(data) <= MAX_ANSWER:
                gevent.socket.wait_read(ours.fileno())
                if os.getpid() != parent:   # a fresh child's copy: the answer is not ours
                    raise gevent.GreenletExit
                chunk = ours.recv(65536)
                if not chunk:
                    break
                data += chunk
    finally:
        ours.close()
        # Killed whether late or done (it exits right after writing); not from a
        # child of ours that inherited this greenlet: the probe is the supervisor's.
        if os.getpid() == parent and not exited.is_set():
            os.kill(pid, signal.SIGKILL)
    return parse_answer(data, queues, bool(management_url), timeout)


def _probe(fd, parent, amqp, management_url, queues):
    """The probe process: ask, write the answers to `fd`, exit. Never returns."""
    try:
        for sig in child.SUPERVISOR_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, child.SUPERVISOR_SIGNALS)
        # Its log handlers write where the supervisor's do; the supervisor logs what matters.
        logging.disable(logging.CRITICAL)
        child.die_with_parent(parent)
        # Nothing of the supervisor's stays open here: its listening sockets, its
        # children's pipes, its lock (only 0-2 and our socket).
        os.closerange(3, fd)
        os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
        os.set_blocking(fd, True)
        for answer in ask(amqp, management_url, queues):
            data = memoryview((json.dumps(answer) + "\n").encode())
            while data:
                data = data[os.write(fd, data):]
    finally:
        os._exit(0)


def ask(amqp, management_url, queues, timeout=ASK_TIMEOUT):
    """Ask the broker (then the management API, if any) about `queues` and the delay
    queues; yields one JSON-ready answer for each, in that order."""
    settings = dataclasses.replace(amqp, connect_timeout=min(amqp.connect_timeout, timeout))
    try:
        counts = blocking.queue_counts(settings, [*queues, *delays.LEVEL_QUEUES], timeout)
        yield {"counts": {queue: count and list(count) for queue, count in counts.items()}}
    except TaskqueueError as exc:
        yield {"broker_error": str(exc)}
    if management_url:
        try:
            yield {"unacked": management.unacked_counts(management_url, settings, queues, timeout)}
        except TaskqueueError as exc:
            yield {"management_error": str(exc)}


def parse_answer(data, queues, management=False, timeout=PROBE_TIMEOUT):
    """The Reading of a probe's lines `data` about `queues`; `management`: whether it
    asked the management API too. (The probe is our own code, yet each count is checked
    before it is written out: a number, never text.)"""
    answers = []
    for line in data.split(b"\n")[:-1]:   # a last line without its newline was cut off
        try:
            answer = json.loads(line)
        except ValueError:
            break
        answers.append(answer if isinstance(answer, dict) else {})
    broker, unacked = (answers + [{}, {}])[:2]
    if "counts" not in broker:
        # The management API is asked all the same: its answer (a refused login, say)
        # is worth its own gauge and log line.
        reading = Reading(queues, broker_error=_error(broker.get("broker_error"), timeout),
                          management_asked=management)
    else:
        found = _counts(broker["counts"], (*queues, *delays.LEVEL_QUEUES), pairs=True)
        reading = Reading(queues,
                          counts={queue: found[queue] for queue in queues if queue in found},
                          delayed=sum(found[queue][0] for queue in delays.LEVEL_QUEUES
                                      if queue in found),
                          management_asked=management)
    if not management:
        return reading
    if "unacked" not in unacked:
        return dataclasses.replace(
            reading, management_error=_error(unacked.get("management_error"), timeout))
    return dataclasses.replace(reading, unacked=_counts(unacked["unacked"], queues, pairs=False))


def _counts(document, names, pairs):
    """{name: (ready, consumers)} (`pairs`) or {name: n} of the names asked about whose
    figures are counts; a queue that does not exist (null) or a bad figure is left out."""
    if not isinstance(document, dict):
        return {}
    found = {}
    for name in names:
        value = document.get(name)
        if pairs and isinstance(value, list) and len(value) == 2 and all(map(_is_count, value)):
            found[name] = tuple(value)
        elif not pairs and _is_count(value):
            found[name] = value
    return found


def _is_count(value):
    return type(value) is int and value >= 0   # not a bool, a float or a string


def _error(text, timeout):
    if isinstance(text, str) and text:
        return redact.redact(text)
    return f"no answer within {timeout:g}s"
