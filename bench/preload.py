"""Fill a queue fast: a bare pika publisher with confirms, WINDOW of them in flight.

What bench/m_backlog.py preloads before any worker starts (not measured, but
bounded in time): persistent messages to the default exchange, routing key =
the queue, each body and properties made by `message(n)`. Returns once the
broker confirmed every one of them; BenchError if it nacked any (the queue
refused them) or the time ran out.
"""
import pika

from common import BenchError, HOST, PORT

#: Unconfirmed publishes at most: enough to keep the broker busy, small enough that
#: its flow control does not block us for long.
WINDOW = 2000


def preload(vhost, queue, count, message, timeout):
    """Publish `count` messages message(n) -> (body, pika.BasicProperties) to `queue`."""
    state = {"next": 0, "confirmed": 0, "watermark": 0, "nacked": 0, "error": None}
    singles = set()
    connection = None
    channel = None

    def fill():
        while state["next"] < count and state["next"] - state["confirmed"] < WINDOW:
            body, props = message(state["next"])
            channel.basic_publish("", queue, body, props)
            state["next"] += 1

    def on_confirm(frame):
        # A multiple confirm settles every tag up to its own; the broker may confirm
        # single tags out of order, so those above the watermark are kept apart.
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        if multiple:
            before = state["confirmed"]
            singles.difference_update([t for t in singles if t <= tag])
            state["watermark"] = max(state["watermark"], tag)
        elif tag > state["watermark"]:
            before = state["confirmed"]
            singles.add(tag)
        else:
            return
        state["confirmed"] = state["watermark"] + len(singles)
        if isinstance(frame.method, pika.spec.Basic.Nack):
            state["nacked"] += state["confirmed"] - before
        if state["nacked"] or state["confirmed"] >= count:
            connection.close()
        else:
            fill()

    def on_channel(ch):
        nonlocal channel
        channel = ch
        channel.confirm_delivery(on_confirm)
        fill()

    def on_closed(conn, reason):
        if state["confirmed"] < count and not state["nacked"]:
            state["error"] = reason
        conn.ioloop.stop()

    params = pika.ConnectionParameters(HOST, PORT, virtual_host=vhost,
                                       credentials=pika.PlainCredentials("guest", "guest"))
    connection = pika.SelectConnection(
        params, on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
        on_open_error_callback=lambda conn, exc: on_closed(conn, exc),
        on_close_callback=on_closed)
    connection.ioloop.call_later(   # bounded in time as well as in count
        timeout, lambda: connection.is_open and connection.close())
    connection.ioloop.start()
    if state["nacked"]:
        raise BenchError(f"preloading {queue}: the broker nacked {state['nacked']} messages")
    if state["confirmed"] < count:
        raise BenchError(f"preloading {queue}: {state['confirmed']} of {count} confirmed "
                         f"within {timeout}s ({state['error']!r})")
