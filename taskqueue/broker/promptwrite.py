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
aborts the connection as pika does.

TLS transports (PromptTLS) get the same, within the rules of pika's TLS state
machine: an SSL operation that wanted the other direction (a read that needs
a write, a write that needs a read: SSL_ERROR_WANT_WRITE / WANT_READ) must be
retried by pika, alone, before anything else goes through the TLS engine. So
the prompt send happens only while that machine is at rest (reading for
frames, no writable watcher, nothing half done), checked again when the send
runs; otherwise the frame is left to pika as shipped. A prompt send that
meets WANT_READ, WANT_WRITE or an error leaves the rest exactly where pika's
own write() would have: its writable watcher on, with pika's _produce as the
action, which retries the same SSL write and handles what it says.

This uses private attributes of pika's transports (the same in pika 1.2.0,
1.3.2 and 1.4); when they are missing, install() does nothing and pika works
as shipped.
"""
import logging

import gevent

log = logging.getLogger(__name__)

_COMMON = ("_tx_buffers", "_buffer_tx_data", "_produce", "_on_socket_writable",
           "_nbio", "_sock", "_state", "_STATE_ACTIVE")
_TLS = _COMMON + ("_ssl_readable_action", "_ssl_writable_action", "_consume",
                  "_on_socket_readable")


def install(connection):
    """Make `connection`'s (a pika GeventConnection, open) transport write promptly;
    returns True if it did."""
    try:
        from pika.adapters.utils.io_services_utils import (
            _AsyncPlaintextTransport, _AsyncSSLTransport, _AsyncTransportBase)
    except ImportError:
        return False
    transport = getattr(connection, "_transport", None)
    if isinstance(transport, _AsyncSSLTransport):
        kind, names = PromptTLS, _TLS
    elif isinstance(transport, _AsyncPlaintextTransport):
        kind, names = Prompt, _COMMON
    else:
        kind = None
    if (kind is None or not all(hasattr(transport, name) for name in names)
            or not hasattr(_AsyncTransportBase, "_produce")):
        log.debug("pika's transport is not one promptwrite knows: writes wait for "
                  "the writable event")
        return False
    kind(transport, gevent.get_hub().loop)
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
        if t._tx_buffers or not self._at_rest(t):
            # Frames are waiting already (a send is scheduled or pika's writable watcher
            # is on; both take this frame too), or pika must handle it (inactive: it
            # ignores it; TLS busy: see PromptTLS).
            return self._write(data)
        t._buffer_tx_data(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self._send)

    def _send(self):
        self._scheduled = False
        t = self._transport
        if not t._tx_buffers or not self._at_rest(t):
            return   # closed, or pika took these frames over (it sends what it buffers)
        try:
            self._emit(t)
        except OSError:
            pass  # EAGAIN, or a real error: pika's writable handler retries and decides
        if t._tx_buffers and t._state == t._STATE_ACTIVE:
            self._watch(t)

    def _at_rest(self, t):
        return t._state == t._STATE_ACTIVE

    def _emit(self, t):
        t._produce()

    def _watch(self, t):
        t._nbio.set_writer(t._sock.fileno(), t._on_socket_writable)


class PromptTLS(Prompt):
    """Prompt for pika's _AsyncSSLTransport, which routes readable and writable events
    to an action (`_ssl_readable_action`, `_ssl_writable_action`) that depends on what
    the TLS engine last asked for."""

    def __init__(self, transport, loop):
        super().__init__(transport, loop)
        from pika.adapters.utils.io_services_utils import _AsyncTransportBase
        self._base = _AsyncTransportBase

    def _at_rest(self, t):
        # At rest: readable events read frames, no writable watcher, so no SSL operation
        # waits to be retried. (== : bound methods are new objects at each access.)
        return (t._state == t._STATE_ACTIVE and t._ssl_writable_action is None
                and t._ssl_readable_action == t._consume)

    def _emit(self, t):
        # The sending loop of pika's transports (joined by sendbatch.py), not the TLS
        # _produce, whose bookkeeping assumes its writable watcher was on. SSLError is an
        # OSError: WANT_READ/WANT_WRITE leave the unsent frame first in the buffer.
        self._base._produce(t)
        if t._sock.pending():
            # As pika's TLS _produce does: decrypted input may wait in the TLS engine.
            t._nbio.add_callback_threadsafe(t._on_socket_readable)

    def _watch(self, t):
        # What pika's own write() does with a buffer it starts: its _produce retries on
        # the writable event and reacts to WANT_READ, WANT_WRITE or an error its way.
        t._ssl_writable_action = t._produce
        super()._watch(t)
