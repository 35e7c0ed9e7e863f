"""The schedules stream (protocol/firings.py) on the broker: declared and written by the
scheduler's gevent Session, read whole on a blocking connection (by a new leader, in a
thread, and by `taskqueue schedules`); and a lead queue looked at from outside.

A record is published confirmed, stamped with its time (the reader's "reached" test,
eventstream.py), before the scheduler counts what it says as done: a slot is counted
fired only once its task and then its `fired` record were taken by the broker.
"""
import time

import pika

from taskqueue.broker.eventstream import EventReader
from taskqueue.errors import NoEventStream, TopologyError
from taskqueue.protocol import events, firings, plans

#: Longest a reading of the whole stream takes (seconds): MAX_BYTES of records.
READ_DEADLINE = 15.0


def declare_stream(session):
    """Declare the stream on a gevent Session; one declared with other arguments (another
    version's, a policy's) is used as it is; TopologyError for another refusal."""
    try:
        session.declare_plan(plans.schedule_stream())
    except TopologyError as exc:
        if not events.kept_as_found(exc):
            raise


def publish_record(session, body):
    """Publish one record (firings.record) and wait for the broker's confirm
    (Session.publish_confirmed: PublishNacked, SessionClosed)."""
    session.publish_confirmed(firings.STREAM, body, pika.BasicProperties(
        content_type=firings.CONTENT_TYPE, delivery_mode=2, timestamp=int(time.time())))


class HistoryReader(EventReader):
    """The schedules stream from its start, each message into a firings.History."""

    def __init__(self, settings, history, name="taskqueue schedules", timeout=None):
        kwargs = {} if timeout is None else {"timeout": timeout}
        super().__init__(settings, 0, stream=firings.STREAM, name=name, **kwargs)
        self.history = history

    def _taken(self, body):
        self.history.add(body)
        return ()


def read_history(settings, name="taskqueue schedules", timeout=None, not_after=None):
    """What the whole stream says (firings.History); an empty one when there is no stream
    yet (no schedule ever had a leader on this vhost); `not_after`: see History. Blocking: a gevent process runs it
    in a thread (the hub's threadpool)."""
    history = firings.History(not_after)
    try:
        with HistoryReader(settings, history, name=name, timeout=timeout) as reader:
            for _ in reader.events(deadline=time.monotonic() + READ_DEADLINE):
                pass
    except NoEventStream:
        pass
    return history


def lead_is_held(channel, name):
    """Whether some connection holds schedule `name`'s lead queue, asked on a blocking
    `channel` that this call may close (a passive declare: 405 when another connection
    holds it, 404 when none does). Returns (held, channel still usable)."""
    try:
        channel.queue_declare(firings.lead_queue(name), passive=True)
        return True, True      # ours? a reader holds none: someone's, not exclusive
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code == 405, False

