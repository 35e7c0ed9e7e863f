"""One side connection, shared by what a process publishes besides its work: a
worker's task events (eventlog.py) and its cancels reader with its settled records
(cancelstream.py).

A side connection at all, because RabbitMQ stops reading from a connection that
publishes during a resource alarm, and with it that connection's acks: whatever
publishes stays off the connection where tasks are acked (eventlog.py). One for both,
because a connection costs the broker ~3.5 ms of CPU to open against ~0.6 ms for a
channel, and 200 worker types started with three each (bench/README.md, "200
types"). Sharing is safe: the events and the settled records publish nothing while
the broker says it blocks publishers; a side connection the broker stops reading
during an alarm (a batch sent just before its `connection.blocked` came) holds back
only the cancels reader's acks, so cancels come after the alarm, as the
`taskqueue cancel` publishing them waits for its end too. The cancels reader consumes
on a channel of its own: a refusal of its stream closes that channel, not the
events'.

The first to need the connection opens it, in its greenlet; whoever asks meanwhile
waits for that opening, and a lost connection is opened again by the next to ask.
Each of its `users` closes it when done: the last close closes the connection, so
that what one user sends at its close is not cut off by another's.
"""
import gevent.lock

from taskqueue.errors import SessionClosed

#: Seconds close() gives what is buffered and the connection's close.
CLOSE_TIMEOUT = 1.0


class SideLine:
    """The side connection of the process whose Session is `session`, named
    `<its name> <purpose>`, for `users` users."""

    def __init__(self, session, purpose, users=1):
        self._main = session
        self._purpose = purpose
        self._users = users
        self._side = None
        self._opening = gevent.lock.Semaphore()
        self._closed = False

    def session(self):
        """The open side Session, opened now if there is none (BrokerUnreachable as
        Session.open); SessionClosed once close() was called."""
        with self._opening:
            if self._closed:
                raise SessionClosed(f"{self._purpose}: the side connection is closed")
            if self._side is None or not self._side.is_open:
                self._side = None
                self._side = self._main.side_session(self._purpose)
            return self._side

    def close(self, timeout=CLOSE_TIMEOUT):
        """A user is done. The last one: send what is buffered and close the connection
        (`timeout` for each at most); no connection is opened afterwards."""
        self._users -= 1
        if self._users > 0:
            return
        self._closed = True
        side = self._side
        if side is not None and side.is_open:
            try:
                side.flush(timeout)
                side.close(timeout)
            except SessionClosed:
                pass
