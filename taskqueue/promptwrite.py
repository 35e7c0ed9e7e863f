"""Send what a connection writes at the end of the hub's current turn, without
waiting for a writable event.

pika's asynchronous transport buffers each frame and, when its buffer was
empty, starts watching the socket for writability (a new gevent io watcher,
epoll_ctl), sends on the next loop iteration, then stops watching (epoll_ctl
again). A worker writes one frame per task (its ack), so every task paid for
a watcher, two epoll_ctl and fcntl calls and one more loop iteration; and the
worker's loop, which must see that ack in the kernel before the next task
starts (Session.flush), waited for that iteration too (bench/README.md,
"Worker CPU per task").

With `install(connection)` a write into an empty buffer schedules one send
for the end of the hub's current turn (gevent's run_callback: before the hub
polls again), so frames written in the same turn still go out in one send()
(sendbatch.py joins them). Only what the socket does not take at once falls
back to pika's writable watcher, which also meets any socket error and
aborts the connection as pika does. TLS transports are left as pika ships
them (their writes depend on the TLS engine's state).

This uses private attributes of pika's transport (the same in pika 1.2.0
and 1.4); when they are missing, install() does nothing and pika works as
shipped.
"""
import logging

import gevent

log = logging.getLogger(__name__)


def install(connection):
    """Make `connection`'s (a pika GeventConnection, open) transport write promptly;
    returns True if it did."""
    try:
        from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport
    except ImportError:
        return False
    transport = getattr(connection, "_transport", None)
    if (not isinstance(transport, _AsyncPlaintextTransport)
            or not all(hasattr(transport, name) for name in (
                "_tx_buffers", "_buffer_tx_data", "_produce", "_on_socket_writable",
                "_nbio", "_sock", "_state", "_STATE_ACTIVE"))):
        log.debug("pika's transport is not the one promptwrite knows: writes wait for "
                  "the writable event")
        return False
    Prompt(transport, gevent.get_hub().loop)
    return True


class Prompt:
    """Replaces one transport's write() (an attribute of that instance only)."""

    def __init__(self, transport, loop):
        self._transport = transport
        self._loop = loop
        self._write = transport.write   # pika's own
        self._scheduled = False
        transport.write = self.write

    def write(self, data):
        t = self._transport
        if t._state != t._STATE_ACTIVE or t._tx_buffers:
            # Inactive (pika ignores it), or frames are waiting already: either a send
            # is scheduled or pika's writable watcher is on; both take this frame too.
            return self._write(data)
        t._buffer_tx_data(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self._send)

    def _send(self):
        self._scheduled = False
        t = self._transport
        if t._state != t._STATE_ACTIVE or not t._tx_buffers:
            return
        try:
            t._produce()
        except OSError:
            pass  # EAGAIN, or a real error: pika's writable handler retries and decides
        if t._tx_buffers and t._state == t._STATE_ACTIVE:
            t._nbio.set_writer(t._sock.fileno(), t._on_socket_writable)
