"""Send what pika has queued for a socket in one system call, not one per frame.

pika's asynchronous transport keeps a deque of byte strings (one per AMQP
frame: a publish is three, an ack one) and, when the socket is writable,
calls send() once for each. The dispatcher routing a burst of deliveries
queues hundreds of frames between two writable events, and those send()
calls were its largest cost (a third of its CPU, bench/profile.py). Joining
the queued frames first keeps the bytes and their order; pika's own loop
still handles partial sends and errors.

This wraps a private method of pika (the same in 1.2.0 and 1.4); if a pika
release no longer has it, `install()` does nothing and pika works as shipped.
"""
import logging

log = logging.getLogger(__name__)

#: Bytes joined into one send() at most; what is left goes in the next one.
JOIN_LIMIT = 256 * 1024


def install():
    try:
        from pika.adapters.utils.io_services_utils import _AsyncTransportBase
        original = _AsyncTransportBase._produce
    except (ImportError, AttributeError):
        log.debug("pika has no _AsyncTransportBase._produce: frames are sent one by one")
        return
    if getattr(original, "joins_frames", False):
        return

    def _produce(self):
        buffers = getattr(self, "_tx_buffers", None)
        if buffers is not None and len(buffers) > 1:
            _join_front(buffers)
        return original(self)
    _produce.joins_frames = True
    _AsyncTransportBase._produce = _produce


def _join_front(buffers):
    """Replace the first buffers of the deque, up to JOIN_LIMIT bytes, by their concatenation."""
    parts, size = [], 0
    while buffers and size < JOIN_LIMIT:
        part = buffers.popleft()
        parts.append(part)
        size += len(part)
    buffers.appendleft(b"".join(parts))
