"""Many one-hop tasks in flight with confirms, on a blocking connection of their own: the
one bulk publisher, under Client.submit_many and `taskqueue submit --file`.

`onehop_window` opens the connection, declares what a one-hop publisher needs (the
queue `taskqueue`, the exchanges and the alternate exchange's binding, with whichever
queue type the vhost has) and hands its caller a confirms.ConfirmWindow to publish
on; the caller's loop decides when to stop (a refusal, Ctrl-C) and what to report.
No gevent: the Client runs in applications.
"""
import contextlib
import time

from taskqueue.broker import blocking, pikaparams
from taskqueue.broker.clientevents import SubmittedEvents
from taskqueue.broker.confirms import ConfirmWindow
from taskqueue.errors import SessionClosed
from taskqueue.protocol import onehop, priorities, topology, tracecontext

#: Seconds the connection may take to close once the work is done.
CLOSE_TIMEOUT = 5


class OneHopWindow:
    """A ConfirmWindow whose publishes go to the one-hop exchange."""

    def __init__(self, window, events):
        self._window = window
        self._events = events       # clientevents.SubmittedEvents: one for each task confirmed
        self._pending = {}          # token -> (message id, worker type) until settled

    @property
    def unconfirmed(self):
        return self._window.unconfirmed

    def publish(self, worker_type, body, props, token):
        """Publish one task for `worker_type` once the window has room; `token` comes back
        in on_settled(token, problem)."""
        if self._events.enabled:
            self._pending[token] = (props.message_id, worker_type, None,
                                    tracecontext.trace_id(props.headers), time.time())
            if self._events.full:
                self._events.flush()
        self._window.publish(priorities.routing_key(worker_type, props.priority), body, props,
                             token, exchange=onehop.EXCHANGE)

    def flush(self, timeout=None):
        try:
            return self._window.flush(timeout)
        finally:
            self._events.flush()

    def settled(self, token, problem):
        """Before the caller's on_settled: a confirmed task's `submitted` event."""
        task = self._pending.pop(token, None)
        if task is not None and problem is None:
            self._events.add(*task)


@contextlib.contextmanager
def onehop_window(settings, name, on_settled, on_wait=None,
                  timeout=pikaparams.REPLY_TIMEOUT):
    """A OneHopWindow on a connection named `name`, closed on leaving.

    on_settled(token, problem) and on_wait() as confirms.ConfirmWindow calls them.
    BrokerUnreachable when no broker can be reached: nothing was sent. A connection
    lost inside becomes SessionClosed naming the broker; TopologyError when the
    broker refuses a declaration; `timeout` bounds the connect and the declarations.
    """
    connection = blocking.blocking_connect(settings, name, timeout)
    try:
        with blocking.answered_within(connection, timeout, "declaring taskqueue", settings):
            channel = connection.channel()
            blocking.declare_onehop_blocking(
                channel, blocking.settings_as_found(connection, settings))
            channel.close()
        events = SubmittedEvents(connection, settings, name)
        window = None

        def settled(token, problem):
            window.settled(token, problem)
            on_settled(token, problem)
        window = OneHopWindow(ConfirmWindow(blocking.ConfirmingChannel(connection), settled,
                                            on_wait=on_wait,
                                            on_unroutable=topology.unroutable_onehop), events)
        yield window
    except blocking.CONNECTION_LOST as exc:
        raise SessionClosed(f"connection to {pikaparams.describe(settings)} lost: "
                            f"{exc!r}") from None
    finally:
        blocking.close_within(connection, CLOSE_TIMEOUT)
