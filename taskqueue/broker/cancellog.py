"""The cancels stream (protocol/cancels.py) on a blocking connection: cancel records
published with confirms (Client.cancel), and the whole stream read (`taskqueue
status`'s cancels pending). The workers' side is cancelstream.py.

Reading is eventstream.EventReader's, from the stream's start to its end as it was
when reading began, each message decoded by cancels.decode (junk counted).
"""
import time

import pika

from taskqueue.broker import blocking, declarations
from taskqueue.broker.eventstream import EventReader
from taskqueue.errors import NoEventStream, TopologyError
from taskqueue.protocol import cancels, events, plans

#: Longest a reading of the whole stream takes (seconds): it holds ~80 000 records
#: at most (cancels.MAX_BYTES), read in about a second.
READ_DEADLINE = 10.0


def declare_stream(connection):
    """Declare the cancels stream on a BlockingConnection (channels of its own); one
    declared with other arguments is used as it is; TopologyError for another refusal."""
    try:
        declarations.run(plans.cancel_stream(), blocking.declaring_channels(connection))
    except TopologyError as exc:
        if not events.kept_as_found(exc):
            raise


def publish_cancel(channel, task_id, by):
    """Publish the cancel record of `task_id` on a blocking channel in confirm mode and
    return once the broker confirmed it (blocking_publish_confirmed: PublishRefused)."""
    blocking.blocking_publish_confirmed(
        channel, cancels.STREAM, cancels.record(cancels.CANCEL, task_id, by),
        pika.BasicProperties(content_type=cancels.CONTENT_TYPE, delivery_mode=2,
                             timestamp=int(time.time())))


class CancelReader(EventReader):
    """The cancels stream read from its start: events() yields decoded records
    (cancels.decode); `malformed_messages` counts the junk."""

    def __init__(self, settings, name="taskqueue cancels", timeout=None):
        kwargs = {} if timeout is None else {"timeout": timeout}
        super().__init__(settings, 0, stream=cancels.STREAM, name=name, **kwargs)

    def _taken(self, body):
        found = cancels.decode(body)
        if found is None:
            self.malformed_events += 1
            self.malformed_messages += 1
            return []
        return [found]


def read_records(settings, timeout=None, name="taskqueue cancels"):
    """(every record of the stream in its order, how many messages were junk); ([], 0)
    when the stream does not exist (nothing was ever cancelled on this vhost)."""
    try:
        with CancelReader(settings, name=name, timeout=timeout) as reader:
            found = list(reader.events(deadline=time.monotonic() + READ_DEADLINE))
    except NoEventStream:
        return [], 0
    return found, reader.malformed_messages
