"""Many publishes in flight on one Session, each confirmed by the broker.

`ConfirmWindow` is the client side of publisher confirms for the command-line
tools (`submit --file`, `dead requeue`) and the Client's submit_many: it keeps up
to `window` messages unconfirmed, as RabbitMQ's confirms guide advises, instead
of waiting one round trip per message, and tells its owner, message by message, whether the
broker took it. A message the broker nacks is published again, a bounded
number of times, before it counts as refused (nacks.py). Which publish a
confirm or a return is about is protocol/confirmledger.py's, shared with the
dispatcher, whose pipeline acks its inputs instead (and gives a nacked one back
to its queue: the input's redelivery is its retry).

Its session is anything with enable_confirms, publish, await_confirm, is_open,
close_reason and abort: a gevent amqp.Session, or a blocking.ConfirmingChannel
(no gevent: the Client's). This module imports neither.
"""
import logging
import time

from taskqueue.broker import pikaparams
from taskqueue.errors import SessionClosed
from taskqueue.protocol import nacks
from taskqueue.protocol.confirmledger import ConfirmLedger

log = logging.getLogger(__name__)

#: Publishes in flight before publish() waits. Quorum queues confirm in
#: batches after their log is written: a deep window keeps them busy.
WINDOW = 2000
#: Seconds without a single confirm, while some are due, before the broker is given up on.
STALL_TIMEOUT = pikaparams.REPLY_TIMEOUT
#: Seconds between calls of the owner's on_wait while publish() or flush() waits.
TICK = 0.1


class ConfirmWindow:
    """Publish with confirms, at most `window` unconfirmed at a time.

    on_settled(token, problem) runs in the session's I/O loop (the hub) for each
    message once the broker has answered: problem is None if it took the message, else a sentence
    (nacked nacks.TRIES times, or returned unroutable). It must not block or raise.
    on_wait() runs in the publishing greenlet about every TICK seconds while it waits.
    """

    def __init__(self, session, on_settled, window=WINDOW, on_wait=None, on_unroutable=None):
        self._session = session
        # routing key -> why a returned message was not taken, in words
        self._unroutable = on_unroutable or (
            lambda queue: f"the broker returned it: no queue {queue!r}")
        self._on_settled = on_settled
        self._window = window
        self._on_wait = on_wait or (lambda: None)
        # what awaits its confirm: (token, queue, body, props, tries, exchange) each
        self._ledger = ConfirmLedger()
        # nacked, to be published again: [(when, token, queue, body, props, tries, exchange)]
        self._retries = []
        self._confirmed_at = time.monotonic()
        session.enable_confirms(self._guarded(self._on_confirm), self._guarded(self._on_return))

    @property
    def unconfirmed(self):
        return len(self._ledger) + len(self._retries)

    def publish(self, queue, body, props, token, exchange=""):
        """Publish `body` to `queue` (mandatory) once the window has room; with `exchange`,
        to that exchange with `queue` as routing key.
        SessionClosed if the session is gone or the broker stopped confirming."""
        while self.unconfirmed >= self._window:
            self._wait()
        self._send(queue, body, props, token, 1, exchange)

    def _send(self, queue, body, props, token, tries, exchange):
        if not self._session.is_open:
            raise SessionClosed(f"connection lost: {self._session.close_reason!r}")
        if not self._ledger:
            self._confirmed_at = time.monotonic()  # the stall clock runs only while some are due
        self._session.publish(queue, body, props, exchange=exchange, mandatory=True)
        self._ledger.sent((token, queue, body, props, tries, exchange),
                          (queue, props.message_id, body))

    def flush(self, timeout=None):
        """Wait until every message published is confirmed (or refused), or `timeout`
        seconds passed (then return False); SessionClosed as for publish()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.unconfirmed:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._wait()
        return True

    def _wait(self):
        self._session.await_confirm(TICK)
        self._on_wait()
        if not self._session.is_open:
            raise SessionClosed(f"connection lost with {self.unconfirmed} messages "
                                     f"unconfirmed: {self._session.close_reason!r}")
        if time.monotonic() - self._confirmed_at > STALL_TIMEOUT:
            raise SessionClosed(f"no confirm from the broker in {STALL_TIMEOUT:g}s "
                                f"({len(self._ledger)} messages unconfirmed)")
        self._send_due_retries()

    def _send_due_retries(self):
        """Publish again the nacked messages whose wait is over (here, not in the hub:
        publishing may block on the socket)."""
        now = time.monotonic()
        due = [retry for retry in self._retries if retry[0] <= now]
        if due:
            self._retries = [retry for retry in self._retries if retry[0] > now]
            for _, token, queue, body, props, tries, exchange in due:
                self._send(queue, body, props, token, tries + 1, exchange)

    # Hub callbacks: they must not block, and must not raise (pika would abort the connection).
    def _on_confirm(self, frame):
        confirm = frame.method
        settled = self._ledger.confirmed(confirm.delivery_tag, confirm.multiple,
                                         confirm.NAME == "Basic.Ack")
        for (token, queue, body, props, tries, exchange), problem in settled:
            if problem == ("nacked", None):
                wait = nacks.delay_before_retry(tries)
                if wait is not None:
                    self._retries.append((time.monotonic() + wait, token, queue, body, props,
                                          tries, exchange))
                    continue
                self._on_settled(token, nacks.refused("it", tries))
            else:
                self._on_settled(token, problem and problem[1])
        self._confirmed_at = time.monotonic()

    def _on_return(self, queue, props, body):
        """The broker could not route this message; its confirm follows."""
        self._ledger.returned((queue, props.message_id, body), self._unroutable(queue))

    def _guarded(self, callback):
        def guarded(*args):
            try:
                callback(*args)
            except Exception:
                log.exception("%s failed; giving up on this connection", callback.__name__)
                self._session.abort()
        return guarded
